"""The trainer: fast-reid's DefaultTrainer, for CPU and GPU, supervised or with pseudo labels."""
import logging
import os
from collections import OrderedDict
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
from fastreid.config import CfgNode
from fastreid.engine import DefaultTrainer, hooks
from fastreid.engine.train_loop import AMPTrainer, SimpleTrainer, TrainerBase
from fastreid.evaluation import inference_on_dataset, print_csv_format
from fastreid.modeling.meta_arch import build_model
from fastreid.solver import build_optimizer
from fastreid.utils import comm
from fastreid.utils.events import CommonMetricPrinter, EventStorage, JSONWriter, TensorboardXWriter
from fastreid.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..analysis.tensorboard import put_eval_pictures
from ..data.build import (build_pseudo_label_loader, build_supervised_train_loader, build_test_loader,
                          load_test_items, load_train_items)
from ..data.checks import DataCheckError, check_camera_ids, check_cross_camera, usable_splits
from ..data.seeding import derive_seed
from ..evaluation import ReidEvaluator
from .checkpoint import AtomicCheckpointer
from .hooks import (CheckpointHook, ClusterHook, EpochEvalHook, EpochLRHook, EpochLRScheduler, MemoryUpdateHook,
                    MetricsWriter, unwrap)
from .state import (ResumeState, checkpoint_state, persistent_buffers, restore_processes, restore_storage,
                    resume_state, truncate_metrics)

logger = logging.getLogger("fastreid." + __name__)

UNSUPERVISED_ARCHS = ("GPO2CAP",)


class Trainer(DefaultTrainer):
    """DefaultTrainer that runs LWTGPF (`MODEL.META_ARCHITECTURE: GPO2CAP`) and the supervised reference.

    What differs from fast-reid's: loaders are plain `DataLoader`s (no CUDA stream), the evaluator
    is ours (no Cython build), an epoch has `SOLVER.ITERS_PER_EPOCH` iterations, the learning rate
    follows the epoch (warm-up, steps), and for the unsupervised architecture a `ClusterHook`
    builds each epoch's pseudo-labelled loader. Before anything trains, every image of every split
    is checked and every test set must be evaluable. Checkpoints are atomic, saved every epoch
    (and every SOLVER.CHECKPOINT_ITERS iterations) before any evaluation, and hold the whole state
    of the run (`engine.state`): `--resume` continues exactly where the checkpoint was taken.
    """

    def __init__(self, cfg: CfgNode):
        TrainerBase.__init__(self)
        if not logging.getLogger("fastreid").isEnabledFor(logging.INFO):
            setup_logger()
        if comm.is_main_process() and cfg.OUTPUT_DIR:
            os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)

        self.unsupervised = cfg.MODEL.META_ARCHITECTURE in UNSUPERVISED_ARCHS
        # The seed of every data stream (sampler order, augmentation); a resumed run takes its checkpoint's.
        self.seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        self.train_items = self._checked_items(cfg)
        if self.unsupervised:
            data_loader = []  # the ClusterHook hands over a loader before the first step
            iters_per_epoch = cfg.SOLVER.ITERS_PER_EPOCH
            if iters_per_epoch <= 0:
                raise ValueError("SOLVER.ITERS_PER_EPOCH must be > 0 for unsupervised training")
        else:
            data_loader = build_supervised_train_loader(cfg, self.train_items, seed=self.seed)
            cfg = self.auto_scale_hyperparams(cfg, data_loader.dataset.num_classes)
            iters_per_epoch = cfg.SOLVER.ITERS_PER_EPOCH or len(self.train_items) // cfg.SOLVER.IMS_PER_BATCH

        model = self.build_model(cfg)
        optimizer, param_wrapper = build_optimizer(cfg, model, contiguous=False)
        if comm.get_world_size() > 1:
            device_ids = [comm.get_local_rank()] if cfg.MODEL.DEVICE.startswith("cuda") else None
            model = DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)

        checkpointables = {"optimizer": optimizer}
        if cfg.SOLVER.AMP.ENABLED:
            if not cfg.MODEL.DEVICE.startswith("cuda"):
                raise ValueError("SOLVER.AMP.ENABLED needs MODEL.DEVICE cuda; set SOLVER.AMP.ENABLED False on CPU")
            self._trainer = AMPTrainer(model, data_loader, optimizer, param_wrapper)
            checkpointables["grad_scaler"] = self._trainer.grad_scaler
        else:
            self._trainer = SimpleTrainer(model, data_loader, optimizer, param_wrapper)

        self.iters_per_epoch = iters_per_epoch
        self.scheduler = EpochLRScheduler(optimizer, cfg.SOLVER.STEPS, cfg.SOLVER.GAMMA,
                                          cfg.SOLVER.WARMUP_FACTOR, cfg.SOLVER.WARMUP_EPOCHS)
        self.checkpointer = AtomicCheckpointer(model, cfg.OUTPUT_DIR, save_to_disk=comm.is_main_process(),
                                               partial=cfg.MODEL.WEIGHTS_PARTIAL, **checkpointables)
        if comm.is_main_process():
            self.checkpointer.remove_orphan_temporaries()
        self.resume = ResumeState()  # a fresh run until `resume_or_load` finds a checkpoint
        self.max_epoch = cfg.SOLVER.MAX_EPOCH
        self.max_iter = self.max_epoch * iters_per_epoch
        self.cfg = cfg
        self.pseudo_labels: Optional[Tuple[np.ndarray, np.ndarray]] = None
        self._json_writer: Optional[JSONWriter] = None
        self.register_hooks(self.build_hooks())

    @staticmethod
    def _checked_items(cfg: CfgNode) -> List:
        """The training items, after every image of every split (training and test sets) is checked,
        every test set is found evaluable and every camera id has an embedding: all before training."""
        splits = {"train": load_train_items(cfg)}
        for name in cfg.DATASETS.TESTS:
            splits[f"{name} query"], splits[f"{name} gallery"] = load_test_items(cfg, name)
        splits = usable_splits(cfg, splits)
        for name in cfg.DATASETS.TESTS:
            check_cross_camera(name, splits[f"{name} query"], splits[f"{name} gallery"])
        check_camera_ids(cfg, splits)
        if not splits["train"]:
            raise DataCheckError(f"DATASETS.NAMES {tuple(cfg.DATASETS.NAMES)} hold no usable training image")
        return splits["train"]

    # ------------------------------------------------------------------ loaders

    def set_train_loader(self, loader: DataLoader) -> None:
        """Replace the loader the next steps draw from."""
        self._trainer.data_loader = loader
        self._trainer._data_loader_iter = iter(loader)

    def set_pseudo_labels(self, cluster_labels: np.ndarray, proxy_labels: np.ndarray, start_batch: int = 0) -> None:
        """Train on these pseudo labels from batch `start_batch` of the epoch on (called by the
        ClusterHook each epoch). The epoch's batches and augmentation derive from the run's seed."""
        self.pseudo_labels = (cluster_labels, proxy_labels)
        self.set_train_loader(build_pseudo_label_loader(self.cfg, self.train_items, cluster_labels, proxy_labels,
                                                        seed=derive_seed(self.seed, self.epoch),
                                                        start_batch=start_batch))

    # ------------------------------------------------------------------ checkpoint state

    @property
    def start_iter(self) -> int:  # read by fast-reid's hooks
        return self.resume.start_iter

    def checkpoint_state(self, iteration: int, epoch_done: bool) -> dict:
        """The `trainer` entry of a checkpoint (`engine.state`); every process must call it."""
        model = unwrap(self.model)
        epoch_state = None
        if self.unsupervised and not epoch_done:
            epoch_state = {"pseudo_labels": [torch.from_numpy(np.asarray(a, dtype=np.int64)) for a in self.pseudo_labels],
                           "memory": model.memory.training_state()}
        return checkpoint_state(model, iteration, epoch_done, iters_per_epoch=self.iters_per_epoch, seed=self.seed,
                                storage=self.storage, epoch_state=epoch_state,
                                last_write=self._json_writer._last_write if self._json_writer else -1)

    def resume_or_load(self, resume: bool = True) -> None:
        """With `resume` and a checkpoint in OUTPUT_DIR (`last_checkpoint`), continue from it exactly;
        otherwise load MODEL.WEIGHTS (model only) and start at epoch 0."""
        if not (resume and self.checkpointer.has_checkpoint()):
            self.checkpointer.load(self.cfg.MODEL.WEIGHTS, checkpointables=[])
            return
        path = self.checkpointer.get_checkpoint_file()
        checkpoint = self.checkpointer.load(path)
        self.resume = resume_state(checkpoint, path, self.iters_per_epoch)
        if self.resume.seed is not None:
            self.seed = self.resume.seed
        restore_processes(checkpoint, unwrap(self.model), path)
        if not self.unsupervised:  # one loader for the whole run: skip what was trained on
            self.set_train_loader(build_supervised_train_loader(self.cfg, self.train_items, seed=self.seed,
                                                                start_batch=self.start_iter))
        if comm.is_main_process() and self.cfg.OUTPUT_DIR:
            removed = truncate_metrics(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json"), self.resume.metrics_written)
            if removed:
                logger.info(f"metrics.json: removed {removed} rows written after the checkpoint (they are redone)")
        where = f"epoch {self.resume.start_epoch}" + (
            f", iteration {self.resume.start_batch} of {self.iters_per_epoch}" if self.resume.start_batch else "")
        logger.info(f"Resuming from {path} at {where}")

    # ------------------------------------------------------------------ loop

    def train(self):
        """Run training from `start_epoch` / `start_iter` (inside an epoch after a mid-epoch resume);
        return the last evaluation's results on the main process."""
        start_epoch = self.resume.start_epoch
        logger.info(f"Starting training from epoch {start_epoch}")
        self.iter, self.epoch = self.start_iter, start_epoch
        with EventStorage(self.start_iter) as self.storage:
            self.storage.epoch = self.epoch
            if self.resume.storage is not None:
                restore_storage(self.storage, self.resume.storage)
            try:
                self.before_train()
                for self.epoch in range(start_epoch, self.max_epoch):
                    self.before_epoch()
                    while self.iter < (self.epoch + 1) * self.iters_per_epoch:
                        self.before_step()
                        self.run_step()
                        self.after_step()
                        self.iter += 1
                    self.after_epoch()
            except Exception:
                logger.exception("Exception during training:")
                raise
            finally:
                self.after_train()
        if comm.is_main_process():
            return getattr(self, "_last_eval_results", None)

    def before_epoch(self):
        self.storage.iter = self.iter  # epoch-level scalars go under the epoch's first iteration
        super().before_epoch()

    def after_epoch(self):
        self.storage.iter = self.iter  # the next epoch's first iteration (see MetricsWriter)
        if comm.get_world_size() > 1:
            # Each process's BatchNorm statistics saw only its share of the batches: from here on (for
            # the checkpoint, the evaluation, the next epoch's features) every process uses rank 0's.
            for buf in persistent_buffers(unwrap(self.model)).values():
                torch.distributed.broadcast(buf, src=0)
        super().after_epoch()

    # ------------------------------------------------------------------ hooks, writers, model, test

    def build_hooks(self):
        cfg = self.cfg
        ret = [hooks.IterationTimer(), EpochLRHook(self.scheduler)]
        if self.unsupervised:
            ret += [ClusterHook(cfg, self.train_items), MemoryUpdateHook()]
        if comm.is_main_process():
            ret.append(MetricsWriter(self.build_writers, cfg.SOLVER.LOG_PERIOD))
        ret.append(CheckpointHook(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD, cfg.SOLVER.CHECKPOINT_ITERS,
                                  self.max_epoch, self.iters_per_epoch))

        def test_and_save_results():
            self._last_eval_results = self.test(self.cfg, self.model, self._put_eval_pictures)
            return self._last_eval_results

        ret.append(EpochEvalHook(cfg.TEST.EVAL_PERIOD, self.max_epoch, test_and_save_results,
                                 os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")))
        return ret

    def _put_eval_pictures(self, dataset_name: str, evaluator: ReidEvaluator) -> None:
        if self.cfg.ANALYSIS.TB_RANKLISTS > 0 or self.cfg.ANALYSIS.TB_HEATMAPS > 0:
            put_eval_pictures(self.cfg, unwrap(self.model), dataset_name, evaluator.ranking, self.storage)

    def build_writers(self):
        """The console, metrics.json and TensorBoard writers; after a resume they continue after
        the last iteration the checkpoint's run had written (TensorBoard hides its later events)."""
        written = self.resume.metrics_written
        self._json_writer = JSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json"))
        tensorboard = TensorboardXWriter(self.cfg.OUTPUT_DIR, **({} if written is None else {"purge_step": written + 1}))
        if written is not None:
            self._json_writer._last_write = tensorboard._last_write = written
        return [CommonMetricPrinter(self.max_iter), self._json_writer, tensorboard]

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
