#!/usr/bin/env python
"""Train or evaluate LWTGPF (and the baselines) with fast-reid.

    python tools/train_net.py --config-file configs/LWTGPF/market.yml
    python tools/train_net.py --config-file configs/LWTGPF/market.yml --eval-only MODEL.WEIGHTS logs/market/model_final.pth
    python tools/train_net.py --config-file configs/LWTGPF/market.yml --resume
    python tools/train_net.py --config-file configs/LWTGPF/market.yml --num-gpus 4
    torchrun --nproc-per-node 4 tools/train_net.py --config-file configs/LWTGPF/market.yml
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 4 --master-addr HOST --master-port 29500 tools/train_net.py ...
"""
import lwtgpf  # noqa: F401  (fixes fastreid's imports, registers our modules)
from fastreid.config import get_cfg
from fastreid.engine import default_argument_parser, default_setup
from fastreid.utils import comm
from fastreid.utils.env import seed_all_rng
from fastreid.utils.logger import setup_logger

from lwtgpf.config import add_lwtgpf_config
from lwtgpf.engine import Trainer, launch
from lwtgpf.engine.checkpoint import AtomicCheckpointer


def load_config(args):
    cfg = get_cfg()
    add_lwtgpf_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    return cfg


def main(args):
    cfg = load_config(args)
    default_setup(cfg, args)
    # modules logging as `lwtgpf.*` (datasets, synthetic data, evaluator) reach the console and log.txt too
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="lwtgpf", abbrev_name="lwtgpf")
    if cfg.SEED >= 0:
        seed_all_rng(cfg.SEED + comm.get_rank())  # ranks differ in augmentation, not in sampling
    if args.eval_only:
        if not cfg.MODEL.WEIGHTS:
            raise ValueError("--eval-only needs a checkpoint: add MODEL.WEIGHTS path/to/model_final.pth")
        cfg.defrost()
        cfg.MODEL.BACKBONE.PRETRAIN = False  # the checkpoint holds every weight
        cfg.freeze()
        model = Trainer.build_model(cfg)
        AtomicCheckpointer(model).load(cfg.MODEL.WEIGHTS)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, use_cuda=load_config(args).MODEL.DEVICE.startswith("cuda"), args=(args,))
