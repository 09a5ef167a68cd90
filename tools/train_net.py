#!/usr/bin/env python
"""Train or evaluate LWTGPF (and the baselines) with fast-reid.

    python tools/train_net.py --config-file configs/LWTGPF/market.yml
    python tools/train_net.py --config-file configs/LWTGPF/market.yml --eval-only MODEL.WEIGHTS logs/market/model_final.pth
    python tools/train_net.py --config-file configs/LWTGPF/market.yml --resume
    python tools/train_net.py --config-file configs/LWTGPF/market.yml --num-gpus 4
    torchrun --nproc-per-node 4 tools/train_net.py --config-file configs/LWTGPF/market.yml
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 4 --master-addr HOST --master-port 29500 tools/train_net.py ...
"""
import sys

import lwtgpf  # noqa: F401  (fixes fastreid's imports, registers our modules)
from fastreid.engine import default_setup
from fastreid.utils import comm
from fastreid.utils.env import seed_all_rng
from fastreid.utils.logger import setup_logger

from lwtgpf.data.checks import DataCheckError
from lwtgpf.data.datasets.market_layout import DatasetLayoutError
from lwtgpf.data.io import UnreadableImageError
from lwtgpf.engine import Trainer, launch
from lwtgpf.engine.checkpoint import AtomicCheckpointer, CheckpointError
from lwtgpf.cli import ConfigError, load_config, parse_args
from lwtgpf.engine.hooks import EvaluationError

# Errors whose message says what to fix: shown as one line (the traceback, if any, is in log.txt).
USER_ERRORS = (ConfigError, CheckpointError, DataCheckError, DatasetLayoutError, UnreadableImageError,
               FileNotFoundError, EvaluationError)


def main(args):
    cfg = load_config(args.config_file, args.opts)
    default_setup(cfg, args)
    # modules logging as `lwtgpf.*` (datasets, synthetic data, evaluator) reach the console and log.txt too
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="lwtgpf", abbrev_name="lwtgpf")
    if cfg.SEED >= 0:
        seed_all_rng(cfg.SEED + comm.get_rank())  # ranks differ in augmentation, not in sampling
    if args.eval_only:
        if not cfg.MODEL.WEIGHTS:
            raise ConfigError("--eval-only needs a checkpoint: add MODEL.WEIGHTS path/to/model_final.pth")
        cfg.defrost()
        cfg.MODEL.BACKBONE.PRETRAIN = False  # the checkpoint holds every weight
        cfg.freeze()
        model = Trainer.build_model(cfg)
        AtomicCheckpointer(model, partial=cfg.MODEL.WEIGHTS_PARTIAL).load(cfg.MODEL.WEIGHTS)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def cli(argv=None) -> None:
    """The command line: parse, launch one process per device, report bad input in one line."""
    args = parse_args(argv)
    print("Command Line Args:", args)
    try:
        use_cuda = load_config(args.config_file, args.opts).MODEL.DEVICE.startswith("cuda")
        launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, use_cuda=use_cuda, args=(args,))
    except USER_ERRORS as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    cli()
