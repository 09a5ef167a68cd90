"""Training hooks: per-epoch clustering, memory update, epoch-wise learning rate, checkpoints."""
import bisect
import csv
import logging
import os
from typing import Dict, List, Sequence

import numpy as np
import torch
from fastreid.engine.hooks import PeriodicWriter
from fastreid.engine.train_loop import HookBase
from fastreid.utils import comm
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from torch.nn.parallel import DistributedDataParallel

from ..camera_norm import camera_normalise, check_camera_norm
from ..clustering import pseudo_labels
from ..data.build import Item, build_inference_loader, build_pseudo_label_loader
from ..knn import KnnSearch
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


class EpochCheckpointHook(HookBase):
    """Saves `model_last` every epoch (so `--resume` restarts at the last epoch boundary),
    `model_XXXX` every `period` epochs and `model_final` at the end."""

    def __init__(self, checkpointer, period: int, max_epoch: int):
        self.checkpointer = checkpointer
        self.period = period
        self.max_epoch = max_epoch

    def after_epoch(self):
        epoch = self.trainer.epoch
        if epoch + 1 >= self.max_epoch:
            name = "model_final"
        elif self.period > 0 and (epoch + 1) % self.period == 0:
            name = f"model_{epoch:04d}"
        else:
            name = "model_last"
        self.checkpointer.save(name, epoch=epoch)


class MetricsWriter(PeriodicWriter):
    """fast-reid's PeriodicWriter without losing epoch-level scalars.

    fast-reid's writers skip every scalar whose iteration was already written, and its
    PeriodicWriter writes at the last step of an epoch: evaluation results and clustering
    statistics, put after that step, never reached metrics.json or TensorBoard. The trainer
    files epoch-level scalars under the first iteration of the next epoch; this writer leaves
    them to the next periodic write, and writes once more before closing at the end.
    """

    def after_epoch(self):
        pass

    def after_train(self):
        for writer in self._writers:
            writer.write()
        super().after_train()


class ClusterHook(HookBase):
    """Before every epoch: training-set features -> pseudo labels -> proxies -> memory + loader.

    Features are extracted in eval mode with the test transform and the camera ids, each process
    its share (`features.extract_features`); the processes share the neighbour search, the main
    process clusters and broadcasts the labels (`clustering.pseudo_labels(..., distributed=True)`), so every
    process trains on the same proxies; the memory is built from per-process sums. With
    CLUSTER.CAMERA_NORM the clustering sees the global features normalised per camera (METHOD.md
    section 8); the memory is built from the model's own features.
    """

    def __init__(self, cfg, items: List[Item]):
        self.cfg = cfg
        self.camera_norm = check_camera_norm(cfg.CLUSTER.CAMERA_NORM)
        self.items = items
        self.cams = np.asarray([cam for _, _, cam in items], dtype=np.int64)
        self.gt = np.unique(np.asarray([str(pid) for _, pid, _ in items]), return_inverse=True)[1]
        self.loader = build_inference_loader(cfg, items)

    def before_epoch(self):
        cfg, epoch = self.cfg.CLUSTER, self.trainer.epoch
        model = unwrap(self.trainer.model)
        features = extract_features(model, self.loader, len(self.items), cfg.PART_DTYPE)
        stats = {}
        cluster_labels, proxy_labels = pseudo_labels(
            camera_normalise(features.global_all, self.cams, self.camera_norm), self.cams, eps=cfg.EPS,
            min_samples=cfg.MIN_SAMPLES, k1=cfg.K1, k2=cfg.K2,
            knn_backend=KnnSearch.from_config(cfg), stats=stats, distributed=True)
        reset_memory(model.memory, features, cluster_labels, proxy_labels, self.cams)
        del features
        self.trainer.set_train_loader(build_pseudo_label_loader(self.cfg, self.items, cluster_labels, proxy_labels))
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
            hint = (" If this lasts, try CLUSTER.CAMERA_NORM center (docs/METHOD.md, section 8)."
                    if self.camera_norm == "none" else "")
            logger.warning(f"Epoch {epoch}: only {100 * stats['cross_camera']:.0f}% of the clusters join several "
                           f"cameras: the pseudo labels follow the cameras, not the people.{hint}")
        # Outliers count as singletons: pseudo labels that leave images out must not look better.
        outlier = cluster_labels < 0
        singleton = np.where(outlier, cluster_labels.max() + 1 + np.arange(len(cluster_labels)), cluster_labels)
        stats["nmi"] = float(normalized_mutual_info_score(self.gt, singleton))
        stats["ari"] = float(adjusted_rand_score(self.gt, singleton))
        self.trainer.storage.put_scalars(**{f"cluster/{k}": v for k, v in stats.items()}, smoothing_hint=False)
        logger.info(f"Epoch {epoch} pseudo labels vs ground truth: NMI {stats['nmi']:.4f}, ARI {stats['ari']:.4f}")
        out_dir = os.path.join(self.cfg.OUTPUT_DIR, "pseudo_labels")
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, f"epoch_{epoch:03d}.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "camera", "cluster", "proxy"])
            writer.writerows((path, cam, c, p) for (path, _, cam), c, p in zip(self.items, cluster_labels, proxy_labels))
