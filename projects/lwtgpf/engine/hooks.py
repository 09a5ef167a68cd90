"""Training hooks: per-epoch pseudo labels, memory update, epoch-wise learning rate, metrics,
checkpoints, evaluation."""
import bisect
import logging
import os
import re
from typing import Callable, List, Sequence

import numpy as np
import torch
from fastreid.engine.hooks import PeriodicWriter
from fastreid.engine.train_loop import HookBase
from fastreid.evaluation.testing import flatten_results_dict
from fastreid.utils import comm
from fastreid.utils.events import EventWriter
from torch.nn.parallel import DistributedDataParallel

from ..camera_norm import check_camera_norm
from ..data.build import Item, build_inference_loader
from .cluster_report import ClusterReport
from .features import extract_features
from .pseudo_labelling import label_epoch

logger = logging.getLogger("fastreid." + __name__)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


class EpochLRScheduler:
    """Learning rate as a pure function of the epoch (METHOD.md section 5).

    factor(e) = warm-up (linear from `warmup_factor` to 1 over `warmup_epochs`, as in the original
    code's WarmupMultiStepLR) times gamma ** (number of `steps` <= e). Because it holds no state
    beyond the base rates, `--resume` needs nothing from it but the epoch.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, steps: Sequence[int], gamma: float,
                 warmup_factor: float, warmup_epochs: int):
        self.optimizer = optimizer
        self.steps = sorted(steps)
        self.gamma = gamma
        self.warmup_factor = warmup_factor
        self.warmup_epochs = warmup_epochs
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]

    def factor(self, epoch: int) -> float:
        warm = 1.0
        if epoch < self.warmup_epochs:
            alpha = epoch / self.warmup_epochs
            warm = self.warmup_factor * (1 - alpha) + alpha
        return warm * self.gamma ** bisect.bisect_right(self.steps, epoch)

    def set_epoch(self, epoch: int) -> None:
        f = self.factor(epoch)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * f


class EpochLRHook(HookBase):
    """Sets the epoch's learning rate and records it."""

    def __init__(self, scheduler: EpochLRScheduler):
        self.scheduler = scheduler

    def before_epoch(self):
        self.scheduler.set_epoch(self.trainer.epoch)

    def after_step(self):
        self.trainer.storage.put_scalar("lr", self.scheduler.optimizer.param_groups[0]["lr"], smoothing_hint=False)


class MemoryUpdateHook(HookBase):
    """Moves the proxy memory towards the batch features after each optimiser step."""

    def after_step(self):
        unwrap(self.trainer.model).update_memory()


class MetricsWriter(PeriodicWriter):
    """fast-reid's PeriodicWriter without losing epoch-level scalars.

    fast-reid's writers skip every scalar whose iteration was already written, and its
    PeriodicWriter writes at the last step of an epoch: evaluation results and clustering
    statistics, put after that step, never reached metrics.json or TensorBoard. The trainer
    files epoch-level scalars under the first iteration of the next epoch; this writer leaves
    them to the next periodic write, and writes once more before closing at the end.
    The writers come from `build_writers()` at the start of training, when a resumed run knows
    where its checkpoint's metrics end.
    """

    def __init__(self, build_writers: Callable[[], List[EventWriter]], period: int = 20):
        super().__init__([], period)
        self._build_writers = build_writers

    def before_train(self):
        self._writers = self._build_writers()

    def after_epoch(self):
        pass

    def after_train(self):
        for writer in self._writers:
            writer.write()
        super().after_train()


def _reason(err: BaseException) -> str:
    """"Type: message" of an error; for one a loader worker raised, its original last line."""
    text = str(err).strip()
    if "Traceback (most recent call last)" in text:
        return re.sub(r"^[\w.]*\.(\w+): ", r"\1: ", text.splitlines()[-1])
    return f"{type(err).__name__}: {text}"


class EvaluationError(RuntimeError):
    """An evaluation during training failed; the message says where the training is saved."""


class EpochEvalHook(HookBase):
    """Evaluates every `period` epochs (<= 0: never) and after the last epoch, after the epoch's
    checkpoint is written, so an evaluation that fails (an unreadable query image, ...) loses
    no training; its error says where the checkpoint is. A run resumed from the checkpoint of an
    epoch whose evaluation was due runs that evaluation first."""

    def __init__(self, period: int, max_epoch: int, evaluate: Callable[[], dict], last_checkpoint: str):
        self.period = period
        self.max_epoch = max_epoch
        self.evaluate = evaluate
        self.last_checkpoint = last_checkpoint

    def _due(self, epoch: int) -> bool:
        return epoch + 1 >= self.max_epoch or (self.period > 0 and (epoch + 1) % self.period == 0)

    def before_train(self):
        epoch = self.trainer.resume.finished_epoch
        if epoch is not None and self._due(epoch):
            self._run(epoch)

    def after_epoch(self):
        if self._due(self.trainer.epoch):
            self._run(self.trainer.epoch)

    def _run(self, epoch: int) -> None:
        try:
            results = self.evaluate()
        except Exception as err:
            saved = self.last_checkpoint
            if os.path.isfile(saved):
                with open(saved) as f:
                    saved = os.path.join(os.path.dirname(saved), f.read().strip())
            raise EvaluationError(f"Evaluation after epoch {epoch} failed: {_reason(err)}\n"
                                  f"The training up to here is saved in {saved}: fix the cause, then evaluate it "
                                  f"with --eval-only MODEL.WEIGHTS {saved}, or continue with --resume.") from err
        if results:
            flat = flatten_results_dict(results)
            self.trainer.storage.put_scalars(**{k: float(v) for k, v in flat.items()}, smoothing_hint=False)
        comm.synchronize()



class ClusterHook(HookBase):
    """Before every epoch: the training set's pseudo labels (engine/pseudo_labelling.py), handed to
    the proxy memory and to the trainer's loader, and reported on the main process
    (engine/cluster_report.py). An epoch resumed from a checkpoint taken inside it continues with
    the checkpoint's labels and memory instead.

    Features are extracted in eval mode with the test transform and the camera ids, each process
    its share (`features.extract_features`); every process then trains on the same proxies.
    """

    def __init__(self, cfg, items: List[Item]):
        check_camera_norm(cfg.CLUSTER.CAMERA_NORM)
        self.cfg = cfg
        self.items = items
        self.cams = np.asarray([cam for _, _, cam in items], dtype=np.int64)
        self.loader = build_inference_loader(cfg, items)
        self.report = ClusterReport(cfg, items) if comm.is_main_process() else None

    def before_epoch(self):
        trainer, epoch = self.trainer, self.trainer.epoch
        model = unwrap(trainer.model)
        if trainer.resume.restores(epoch):
            state = trainer.resume.epoch_state
            model.memory.load_training_state(state["memory"])
            trainer.set_pseudo_labels(*[t.numpy() for t in state["pseudo_labels"]], start_batch=trainer.resume.start_batch)
            return
        features = extract_features(model, self.loader, len(self.items), self.cfg.CLUSTER.PART_DTYPE)
        labels = label_epoch(features, self.cams, self.cfg.CLUSTER)
        model.memory.reset_from_sums(labels.proxy_sums, labels.cluster, labels.proxy, self.cams)
        if self.report is not None:
            self.report.embed(epoch, features.global_all, labels)
        del features
        trainer.set_pseudo_labels(labels.cluster, labels.proxy)
        if self.report is not None:
            self.report(epoch, labels, trainer.storage)


class CheckpointHook(HookBase):
    """Saves the run's full state (`engine.state`) after every epoch, as `model_last`,
    `model_XXXX` every `period` epochs and `model_final` after the last one, and as `model_last`
    every `iters` iterations inside an epoch (0: never). It runs before the evaluation hook, so an
    evaluation that fails loses nothing. Every process takes part (their RNG states are
    gathered); the main process writes."""

    def __init__(self, checkpointer, period: int, iters: int, max_epoch: int, iters_per_epoch: int):
        self.checkpointer = checkpointer
        self.period = period
        self.iters = iters
        self.max_epoch = max_epoch
        self.iters_per_epoch = iters_per_epoch

    def after_step(self):
        it = self.trainer.iter
        last_of_epoch = (it + 1) % self.iters_per_epoch == 0
        if self.iters > 0 and (it + 1) % self.iters == 0 and not last_of_epoch:
            self._save("model_last", it, epoch_done=False)

    def after_epoch(self):
        epoch = self.trainer.epoch
        if epoch + 1 >= self.max_epoch:
            name = "model_final"
        elif self.period > 0 and (epoch + 1) % self.period == 0:
            name = f"model_{epoch:04d}"
        else:
            name = "model_last"
        self._save(name, self.trainer.iter - 1, epoch_done=True)

    def _save(self, name: str, iteration: int, epoch_done: bool) -> None:
        state = self.trainer.checkpoint_state(iteration, epoch_done)
        self.checkpointer.save(name, epoch=self.trainer.epoch, iteration=iteration, trainer=state)
