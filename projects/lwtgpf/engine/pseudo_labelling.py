"""What GP-O2CAP does before every epoch (METHOD.md section 3): the training set's features in;
pseudo labels, camera-aware proxies and the proxy memory's initial state out.

1. `extract_features` (engine/features.py): the L2-normalised global and part features of every
   training image, with the test transform, in eval mode.
2. The global features, normalised per camera when CLUSTER.CAMERA_NORM asks (an addition,
   METHOD.md section 9), are clustered: k-reciprocal Jaccard distance, then DBSCAN.
3. Every cluster is split by camera into proxies.
4. The memory starts from each proxy's mean global and part features, taken from the model's
   own features, never the camera-normalised ones.

`label_epoch` does 2-4 and touches nothing else: the `ClusterHook` hands its result to the
memory and to the loader, and `engine/cluster_report.py` reports on it. Under data parallelism
it is a collective call (every process passes its `EpochFeatures`, all get the same result).
"""
from dataclasses import dataclass, field
from typing import Dict

import numpy as np
import torch
import torch.distributed as dist
from fastreid.config import CfgNode
from fastreid.utils import comm

from ..camera_norm import camera_normalise
from ..clustering import CameraAwareK, pseudo_labels
from ..distributed import collective_device
from ..knn import KnnSearch
from ..memory import proxy_sums
from .features import EpochFeatures

__all__ = ["EpochLabels", "label_epoch", "proxy_feature_sums"]


@dataclass(frozen=True)
class EpochLabels:
    """One epoch's pseudo labels and the memory they start.

    `cluster` and `proxy` [N] int64 give each image's cluster and proxy (one camera of one
    cluster), -1 for outliers in both; `proxy_sums` [1+P, K, D] float32 are the sums of each
    proxy's global and part features (`ProxyMemory.reset_from_sums` normalises them into the
    memory); `stats` are the clustering's statistics (`clustering.pseudo_labels`)."""

    cluster: np.ndarray
    proxy: np.ndarray
    proxy_sums: torch.Tensor
    stats: Dict[str, float] = field(default_factory=dict)


@torch.no_grad()
def label_epoch(features: EpochFeatures, cams: np.ndarray, cfg: CfgNode) -> EpochLabels:
    """Steps 2-4 of the module docstring on `features`, with `cams` [N] the images' camera ids
    and `cfg` the CLUSTER config node."""
    stats: Dict[str, float] = {}
    clustered = camera_normalise(features.global_all, cams, cfg.CAMERA_NORM)
    cluster, proxy = pseudo_labels(clustered, cams, eps=cfg.EPS, min_samples=cfg.MIN_SAMPLES, k1=cfg.K1, k2=cfg.K2,
                                   knn_backend=KnnSearch.from_config(cfg), stats=stats, distributed=True,
                                   camera_aware=CameraAwareK.from_config(cfg))
    return EpochLabels(cluster, proxy, proxy_feature_sums(features, proxy), stats)


def proxy_feature_sums(features: EpochFeatures, proxy: np.ndarray) -> torch.Tensor:
    """Per-proxy sums of every image's global and part features, from each process's share of
    them, all-reduced: with one process, the sums over all images."""
    rows = features.rows
    local = torch.as_tensor(proxy[rows.start:rows.stop], device=features.parts_local.device)
    num_proxies = int(proxy.max()) + 1
    global_local = features.global_all[rows.start:rows.stop]
    sums = torch.cat([proxy_sums(global_local[None], local, num_proxies),
                      proxy_sums(features.parts_local, local, num_proxies)])
    if comm.get_world_size() > 1:
        reduced = sums.to(collective_device(sums.device))
        dist.all_reduce(reduced)
        sums = reduced.to(sums.device)
    return sums
