"""A warning when DBSCAN merges most samples into one cluster (training then learns nothing)."""
import logging
from typing import Dict

import numpy as np

__all__ = ["check_cluster_sizes"]

logger = logging.getLogger("fastreid." + __name__)


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
