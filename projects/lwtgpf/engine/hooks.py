"""Training hooks: per-epoch clustering, memory update, epoch-wise learning rate, metrics, evaluation."""
import bisect
import csv
import logging
import os
import re
from typing import Callable, Dict, List, Sequence

import numpy as np
import torch
from fastreid.engine.hooks import PeriodicWriter
from fastreid.engine.train_loop import HookBase
from fastreid.evaluation.testing import flatten_results_dict
from fastreid.utils import comm
from fastreid.utils.events import EventWriter
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from torch.nn.parallel import DistributedDataParallel

from ..analysis.tensorboard import EmbeddingProjector
from ..camera_norm import camera_normalise, check_camera_norm
from ..clustering import pseudo_labels
from ..data.build import Item, build_inference_loader
from ..knn import KnnSearch
from .cluster_health import check_cluster_sizes
from .features import extract_features, reset_memory

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
        epoch = self.trainer.resumed_epoch_end
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
    """Before every epoch: training-set features -> pseudo labels -> proxies -> memory + loader.

    Features are extracted in eval mode with the test transform and the camera ids, each process
    its share (`features.extract_features`); the processes share the neighbour search, the main
    process clusters and broadcasts the labels (`clustering.pseudo_labels(..., distributed=True)`), so every
    process trains on the same proxies; the memory is built from per-process sums. With
    CLUSTER.CAMERA_NORM the clustering sees the global features normalised per camera (METHOD.md
    section 9); the memory is built from the model's own features.
    """

    def __init__(self, cfg, items: List[Item]):
        self.cfg = cfg
        self.camera_norm = check_camera_norm(cfg.CLUSTER.CAMERA_NORM)
        self.items = items
        self.cams = np.asarray([cam for _, _, cam in items], dtype=np.int64)
        self.gt = np.unique(np.asarray([str(pid) for _, pid, _ in items]), return_inverse=True)[1]
        self.loader = build_inference_loader(cfg, items)
        self.projector = None
        if cfg.CLUSTER.EMBEDDING_PERIOD > 0 and comm.is_main_process():
            self.projector = EmbeddingProjector(cfg.OUTPUT_DIR, [path for path, _, _ in items], self.cams,
                                                [pid for _, pid, _ in items], cfg.CLUSTER.EMBEDDING_SAMPLES)

    def before_epoch(self):
        if self.trainer.epoch_restored:  # resumed inside the epoch: its labels and memory came from the checkpoint
            return
        cfg, epoch = self.cfg.CLUSTER, self.trainer.epoch
        model = unwrap(self.trainer.model)
        features = extract_features(model, self.loader, len(self.items), cfg.PART_DTYPE)
        stats = {}
        cluster_labels, proxy_labels = pseudo_labels(
            camera_normalise(features.global_all, self.cams, self.camera_norm), self.cams, eps=cfg.EPS,
            min_samples=cfg.MIN_SAMPLES, k1=cfg.K1, k2=cfg.K2,
            knn_backend=KnnSearch.from_config(cfg), stats=stats, distributed=True)
        reset_memory(model.memory, features, cluster_labels, proxy_labels, self.cams)
        if self.projector is not None and epoch % cfg.EMBEDDING_PERIOD == 0:
            self.projector.write(epoch, features.global_all, cluster_labels)
        del features
        self.trainer.set_pseudo_labels(cluster_labels, proxy_labels)
        if comm.is_main_process():
            self._report(epoch, cluster_labels, proxy_labels, stats)

    def _report(self, epoch: int, cluster_labels: np.ndarray, proxy_labels: np.ndarray,
                stats: Dict[str, float]) -> None:
        # Share of clusters that join two cameras or more (a proxy is one camera of one cluster).
        kept = proxy_labels >= 0
        proxy_cluster = np.zeros(int(proxy_labels.max()) + 1, dtype=np.int64)
        proxy_cluster[proxy_labels[kept]] = cluster_labels[kept]
        stats["cross_camera"] = float((np.bincount(proxy_cluster) > 1).mean())
        if stats["cross_camera"] < 0.1 and len(np.unique(self.cams)) > 1:
            hint = (" If this lasts, try CLUSTER.CAMERA_NORM center (docs/METHOD.md, section 9)."
                    if self.camera_norm == "none" else "")
            logger.warning(f"Epoch {epoch}: only {100 * stats['cross_camera']:.0f}% of the clusters join several "
                           f"cameras: the pseudo labels follow the cameras, not the people.{hint}")
        # Outliers count as singletons: pseudo labels that leave images out must not look better.
        outlier = cluster_labels < 0
        singleton = np.where(outlier, cluster_labels.max() + 1 + np.arange(len(cluster_labels)), cluster_labels)
        stats["nmi"] = float(normalized_mutual_info_score(self.gt, singleton))
        stats["ari"] = float(adjusted_rand_score(self.gt, singleton))
        check_cluster_sizes(cluster_labels, stats, self.cfg.CLUSTER.EPS, self.cfg.CLUSTER.MAX_CLUSTER_FRACTION)
        self.trainer.storage.put_scalars(**{f"cluster/{k}": v for k, v in stats.items()}, smoothing_hint=False)
        logger.info(f"Epoch {epoch} pseudo labels vs ground truth: NMI {stats['nmi']:.4f}, ARI {stats['ari']:.4f}")
        out_dir = os.path.join(self.cfg.OUTPUT_DIR, "pseudo_labels")
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, f"epoch_{epoch:03d}.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "camera", "cluster", "proxy"])
            writer.writerows((path, cam, c, p) for (path, _, cam), c, p in zip(self.items, cluster_labels, proxy_labels))
