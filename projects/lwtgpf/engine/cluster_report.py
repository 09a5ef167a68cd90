"""What each epoch's pseudo labels look like, for the person watching the run: scalars for
TensorBoard and metrics.json, a CSV of every image's labels, the projector embedding, and
warnings when the labels follow the cameras or one cluster swallows the set.

Ground-truth identities, when the dataset has them, are used here only, to score the labels
(NMI, ARI); training never sees them.
"""
import csv
import logging
import os
from typing import Dict, List

import numpy as np
import torch
from fastreid.config import CfgNode
from fastreid.utils.events import EventStorage
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from ..analysis.tensorboard import EmbeddingProjector
from ..data.build import Item
from .pseudo_labelling import EpochLabels

__all__ = ["ClusterReport", "check_cluster_sizes", "cross_camera_share"]

logger = logging.getLogger("fastreid." + __name__)


class ClusterReport:
    """Reports an epoch's `EpochLabels` on the main process (see the module docstring).

    Args:
        cfg: the run's config (OUTPUT_DIR, CLUSTER.*).
        items: the training images (path, identity, camera), in the order of the features.
    """

    def __init__(self, cfg: CfgNode, items: List[Item]):
        self.cfg = cfg
        self.items = items
        self.cams = np.asarray([cam for _, _, cam in items], dtype=np.int64)
        self.gt = np.unique(np.asarray([str(pid) for _, pid, _ in items]), return_inverse=True)[1]
        self.projector = None
        if cfg.CLUSTER.EMBEDDING_PERIOD > 0:
            self.projector = EmbeddingProjector(cfg.OUTPUT_DIR, [path for path, _, _ in items], self.cams,
                                                [pid for _, pid, _ in items], cfg.CLUSTER.EMBEDDING_SAMPLES)

    def embed(self, epoch: int, global_features: torch.Tensor, labels: EpochLabels) -> None:
        """The projector embedding of the epoch's global features, every CLUSTER.EMBEDDING_PERIOD epochs."""
        if self.projector is not None and epoch % self.cfg.CLUSTER.EMBEDDING_PERIOD == 0:
            self.projector.write(epoch, global_features, labels.cluster)

    def __call__(self, epoch: int, labels: EpochLabels, storage: EventStorage) -> None:
        """Scalars `cluster/*` into `storage`, the CSV, the log line and the warnings."""
        cfg = self.cfg.CLUSTER
        stats = dict(labels.stats)
        stats["cross_camera"] = cross_camera_share(labels.cluster, labels.proxy)
        if stats["cross_camera"] < 0.1 and len(np.unique(self.cams)) > 1:
            hint = (" If this lasts, try CLUSTER.CAMERA_NORM center (docs/METHOD.md, section 9)."
                    if cfg.CAMERA_NORM == "none" else "")
            logger.warning(f"Epoch {epoch}: only {100 * stats['cross_camera']:.0f}% of the clusters join several "
                           f"cameras: the pseudo labels follow the cameras, not the people.{hint}")
        # Outliers count as singletons: pseudo labels that leave images out must not look better.
        outlier = labels.cluster < 0
        singleton = np.where(outlier, labels.cluster.max() + 1 + np.arange(len(labels.cluster)), labels.cluster)
        stats["nmi"] = float(normalized_mutual_info_score(self.gt, singleton))
        stats["ari"] = float(adjusted_rand_score(self.gt, singleton))
        check_cluster_sizes(labels.cluster, stats, cfg.EPS, cfg.MAX_CLUSTER_FRACTION)
        storage.put_scalars(**{f"cluster/{k}": v for k, v in stats.items()}, smoothing_hint=False)
        logger.info(f"Epoch {epoch} pseudo labels vs ground truth: NMI {stats['nmi']:.4f}, ARI {stats['ari']:.4f}")
        self._write_csv(epoch, labels)

    def _write_csv(self, epoch: int, labels: EpochLabels) -> None:
        out_dir = os.path.join(self.cfg.OUTPUT_DIR, "pseudo_labels")
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, f"epoch_{epoch:03d}.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "camera", "cluster", "proxy"])
            writer.writerows((path, cam, c, p) for (path, _, cam), c, p in zip(self.items, labels.cluster, labels.proxy))


def cross_camera_share(cluster_labels: np.ndarray, proxy_labels: np.ndarray) -> float:
    """The share of clusters that join two cameras or more (a proxy is one camera of one cluster)."""
    kept = proxy_labels >= 0
    proxy_cluster = np.zeros(int(proxy_labels.max()) + 1, dtype=np.int64)
    proxy_cluster[proxy_labels[kept]] = cluster_labels[kept]
    return float((np.bincount(proxy_cluster) > 1).mean())


def check_cluster_sizes(cluster_labels: np.ndarray, stats: Dict[str, float], eps: float,
                        max_fraction: float) -> None:
    """Add `largest_cluster_fraction` to `stats` and warn when it exceeds `max_fraction`
    (CLUSTER.MAX_CLUSTER_FRACTION), with the Jaccard-distance statistics of `stats` (as
    `pseudo_labels` fills them) and a smaller CLUSTER.EPS to try.

    A radius above most samples' core distance (the distance to their MIN_SAMPLES-th neighbour)
    chains clusters together; the suggestion is the median core distance, which keeps about half
    the samples as core points, or eps - 0.1 when that median is not below eps.
    """
    labels = np.asarray(cluster_labels)
    clustered = labels[labels >= 0]
    largest = int(np.bincount(clustered).max()) if clustered.size else 0
    fraction = largest / max(len(labels), 1)
    stats["largest_cluster_fraction"] = float(fraction)
    if fraction <= max_fraction:
        return
    core = stats.get("core_dist_p50")
    if core is not None and core < eps:
        suggestion = max(np.floor(core * 100) / 100, 0.01)
    else:
        suggestion = round(max(eps - 0.1, 0.01), 2)
    distances = ", ".join(f"{name} {stats[name]:.3f}" for name in
                          ("nn_dist_p10", "nn_dist_p50", "nn_dist_p90", "core_dist_p10", "core_dist_p50",
                           "core_dist_p90") if name in stats)
    logger.warning(
        f"One cluster holds {largest} of {len(labels)} samples ({100 * fraction:.0f}% > "
        f"CLUSTER.MAX_CLUSTER_FRACTION {100 * max_fraction:.0f}%): the pseudo labels hardly separate anyone. "
        f"Jaccard distances: {distances}. CLUSTER.EPS {eps} lets clusters chain; try CLUSTER.EPS {suggestion:.2f}.")
