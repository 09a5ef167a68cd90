"""The trainer: fast-reid's DefaultTrainer, for CPU and GPU, supervised or with pseudo labels."""
import logging
import os
from collections import OrderedDict
from typing import Callable, Optional, Tuple

import torch
from fastreid.config import CfgNode
from fastreid.engine import DefaultTrainer, hooks
from fastreid.engine.train_loop import AMPTrainer, SimpleTrainer, TrainerBase
from fastreid.evaluation import inference_on_dataset, print_csv_format
from fastreid.modeling.meta_arch import build_model
from fastreid.solver import build_optimizer
from fastreid.utils import comm
from fastreid.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter
from fastreid.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..data.build import build_supervised_train_loader, build_test_loader, load_train_items
from ..analysis.tensorboard import put_eval_pictures
from ..evaluation import ReidEvaluator
from .checkpoint import AtomicCheckpointer
from .hooks import (ClusterHook, EpochCheckpointHook, EpochLRHook, EpochLRScheduler, MemoryUpdateHook,
                    MetricsWriter, unwrap)

logger = logging.getLogger("fastreid." + __name__)

UNSUPERVISED_ARCHS = ("GPO2CAP",)


class Trainer(DefaultTrainer):
    """DefaultTrainer that runs LWTGPF (`MODEL.META_ARCHITECTURE: GPO2CAP`) and the supervised reference.

    What differs from fast-reid's: loaders are plain `DataLoader`s (no CUDA stream), the evaluator
    is ours (no Cython build), an epoch has `SOLVER.ITERS_PER_EPOCH` iterations, the learning rate
    follows the epoch (warm-up, steps), checkpoints are atomic and saved every epoch, and for the
    unsupervised architecture a `ClusterHook` builds each epoch's pseudo-labelled loader.
    """

    def __init__(self, cfg: CfgNode):
        TrainerBase.__init__(self)
        if not logging.getLogger("fastreid").isEnabledFor(logging.INFO):
            setup_logger()
        if comm.is_main_process() and cfg.OUTPUT_DIR:
            os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)

        self.unsupervised = cfg.MODEL.META_ARCHITECTURE in UNSUPERVISED_ARCHS
        self.train_items = load_train_items(cfg)
        if self.unsupervised:
            data_loader = []  # the ClusterHook hands over a loader before the first step
            iters_per_epoch = cfg.SOLVER.ITERS_PER_EPOCH
            if iters_per_epoch <= 0:
                raise ValueError("SOLVER.ITERS_PER_EPOCH must be > 0 for unsupervised training")
        else:
            data_loader = build_supervised_train_loader(cfg, self.train_items)
            cfg = self.auto_scale_hyperparams(cfg, data_loader.dataset.num_classes)
            iters_per_epoch = cfg.SOLVER.ITERS_PER_EPOCH or len(self.train_items) // cfg.SOLVER.IMS_PER_BATCH

        model = self.build_model(cfg)
        optimizer, param_wrapper = build_optimizer(cfg, model, contiguous=False)
        if comm.get_world_size() > 1:
            device_ids = [comm.get_local_rank()] if cfg.MODEL.DEVICE.startswith("cuda") else None
            model = DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)

        if cfg.SOLVER.AMP.ENABLED:
            if not cfg.MODEL.DEVICE.startswith("cuda"):
                raise ValueError("SOLVER.AMP.ENABLED needs MODEL.DEVICE cuda; set SOLVER.AMP.ENABLED False on CPU")
            self._trainer = AMPTrainer(model, data_loader, optimizer, param_wrapper)
        else:
            self._trainer = SimpleTrainer(model, data_loader, optimizer, param_wrapper)

        self.iters_per_epoch = iters_per_epoch
        self.scheduler = EpochLRScheduler(optimizer, cfg.SOLVER.STEPS, cfg.SOLVER.GAMMA,
                                          cfg.SOLVER.WARMUP_FACTOR, cfg.SOLVER.WARMUP_EPOCHS)
        self.checkpointer = AtomicCheckpointer(model, cfg.OUTPUT_DIR, save_to_disk=comm.is_main_process(),
                                               optimizer=optimizer)
        self.start_epoch = 0
        self.max_epoch = cfg.SOLVER.MAX_EPOCH
        self.max_iter = self.max_epoch * iters_per_epoch
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def set_train_loader(self, loader: DataLoader) -> None:
        """Replace the loader the next steps draw from (called by the ClusterHook each epoch)."""
        self._trainer.data_loader = loader
        self._trainer._data_loader_iter = iter(loader)

    def before_epoch(self):
        self.storage.iter = self.iter  # epoch-level scalars go under the epoch's first iteration
        super().before_epoch()

    def after_epoch(self):
        self.storage.iter = self.iter  # the next epoch's first iteration (see MetricsWriter)
        super().after_epoch()

    def build_hooks(self):
        cfg = self.cfg
        ret = [hooks.IterationTimer(), EpochLRHook(self.scheduler)]
        if self.unsupervised:
            ret += [ClusterHook(cfg, self.train_items), MemoryUpdateHook()]

        def test_and_save_results():
            self._last_eval_results = self.test(self.cfg, self.model, self._put_eval_pictures)
            return self._last_eval_results

        ret.append(hooks.EvalHook(cfg.TEST.EVAL_PERIOD, test_and_save_results))
        if comm.is_main_process():
            ret.append(EpochCheckpointHook(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD, self.max_epoch))
            ret.append(MetricsWriter(self.build_writers(), cfg.SOLVER.LOG_PERIOD))
        return ret

    def _put_eval_pictures(self, dataset_name: str, evaluator: ReidEvaluator) -> None:
        if self.cfg.ANALYSIS.TB_RANKLISTS > 0 or self.cfg.ANALYSIS.TB_HEATMAPS > 0:
            put_eval_pictures(self.cfg, unwrap(self.model), dataset_name, evaluator.ranking, self.storage)

    def build_writers(self):
        return [
            CommonMetricPrinter(self.max_iter),
            JSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json")),
            TensorboardXWriter(self.cfg.OUTPUT_DIR),
        ]

    @classmethod
    def build_model(cls, cfg: CfgNode) -> torch.nn.Module:
        model = build_model(cfg)
        logger.info(f"Model: {type(model).__name__}, "
                    f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
        return model

    @classmethod
    def test(cls, cfg: CfgNode, model: torch.nn.Module,
             evaluated: Optional[Callable[[str, ReidEvaluator], None]] = None):
        """fast-reid's `test`; `evaluated(dataset_name, evaluator)` runs on the main process after
        each test set's evaluation, while the evaluator still holds its `ranking`."""
        results = OrderedDict()
        for dataset_name in cfg.DATASETS.TESTS:
            data_loader, evaluator = cls.build_evaluator(cfg, dataset_name)
            results[dataset_name] = inference_on_dataset(model, data_loader, evaluator,
                                                         flip_test=cfg.TEST.FLIP.ENABLED)
            if comm.is_main_process():
                logger.info(f"Evaluation results for {dataset_name} in csv format:")
                print_csv_format(OrderedDict(results[dataset_name], dataset=dataset_name))
                if evaluated is not None:
                    evaluated(dataset_name, evaluator)
        return next(iter(results.values())) if len(results) == 1 else results

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str) -> Tuple[DataLoader, int]:
        return build_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_dir=None):
        data_loader, num_query = cls.build_test_loader(cfg, dataset_name)
        return data_loader, ReidEvaluator(cfg, num_query, output_dir)
