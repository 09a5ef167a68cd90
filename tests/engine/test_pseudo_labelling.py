"""The epoch's pseudo labelling: clustering sees the camera-normalised global features, the memory
starts from the model's own (raw) global and part features."""
import numpy as np
import pytest
import torch
from fastreid.config import get_cfg

import lwtgpf  # noqa: F401
from lwtgpf.clustering import CameraAwareK, pseudo_labels
from lwtgpf.config import add_lwtgpf_config
from lwtgpf.engine.features import EpochFeatures
from lwtgpf.engine.pseudo_labelling import label_epoch

PEOPLE, CAMS, PARTS, DIM = 12, 3, 2, 16


def camera_biased_features(seed):
    """Every person seen 4 times by each camera; each camera adds a strong offset of its own to
    the global features (left unnormalised, so that centring removes it exactly), so that raw
    features cluster by camera and centred ones by person."""
    g = torch.Generator().manual_seed(seed)
    person = torch.randn(PEOPLE, DIM, generator=g)
    offset = 3 * torch.randn(CAMS, DIM, generator=g)
    pid = torch.arange(PEOPLE).repeat_interleave(4 * CAMS)
    cams = torch.arange(CAMS).repeat_interleave(4).repeat(PEOPLE)
    global_ = person[pid] + offset[cams] + 0.05 * torch.randn(len(pid), DIM, generator=g)
    parts = torch.randn(PARTS, len(pid), DIM, generator=g)
    parts = torch.nn.functional.normalize(parts, dim=2)
    return EpochFeatures(global_, parts, range(len(pid))), cams.numpy(), pid.numpy()


def cluster_cfg(norm):
    cfg = add_lwtgpf_config(get_cfg())
    cfg.merge_from_list(["CLUSTER.CAMERA_NORM", norm, "CLUSTER.EPS", "0.5", "CLUSTER.MIN_SAMPLES", "3",
                         "CLUSTER.K1", "10", "CLUSTER.K2", "3", "CLUSTER.KNN", "torch"])
    return cfg.CLUSTER


def normalised_proxy_means(features, proxies):
    """Written from METHOD.md section 3: per granularity, the L2-normalised mean of each proxy's
    members' features."""
    levels = torch.cat([features.global_all[None], features.parts_local]).double()
    means = torch.stack([levels[:, torch.as_tensor(proxies == k)].mean(1) for k in range(proxies.max() + 1)], dim=1)
    return torch.nn.functional.normalize(means, dim=2)


@pytest.mark.parametrize("norm", ["none", "center"])
def test_clustering_sees_normalised_features_and_the_memory_raw_ones(norm):
    features, cams, pid = camera_biased_features(seed=4)
    labels = label_epoch(features, cams, cluster_cfg(norm))
    centred = features.global_all - torch.stack([features.global_all[torch.as_tensor(cams == c)].mean(0)
                                                 for c in range(CAMS)])[torch.as_tensor(cams)]
    seen = centred if norm == "center" else features.global_all
    cluster, proxy = pseudo_labels(seen, cams, eps=0.5, min_samples=3, k1=10, k2=3, knn_backend="torch")
    np.testing.assert_array_equal(labels.cluster, cluster)
    np.testing.assert_array_equal(labels.proxy, proxy)
    # the clusters follow the people once the cameras' offsets are removed, the cameras otherwise
    joins_cameras = [len(np.unique(cams[labels.cluster == c])) > 1 for c in range(labels.cluster.max() + 1)]
    assert all(joins_cameras) if norm == "center" else not any(joins_cameras)
    if norm == "center":
        assert len(np.unique(pid[labels.cluster >= 0])) == PEOPLE
    # the memory's sums are those of the raw features, whatever the clustering saw
    memory = torch.nn.functional.normalize(labels.proxy_sums.double(), dim=2)
    torch.testing.assert_close(memory, normalised_proxy_means(features, labels.proxy), atol=1e-6, rtol=0)
    assert {"num_clusters", "num_proxies", "seconds"} <= set(labels.stats)


def test_camera_aware_jaccard_from_the_config():
    features, cams, _ = camera_biased_features(seed=4)
    cfg = cluster_cfg("none")
    cfg.merge_from_list(["CAMERA_JACCARD.ENABLED", "True", "CAMERA_JACCARD.K1_INTRA", "3",
                         "CAMERA_JACCARD.K1_INTER", "4", "CAMERA_JACCARD.K2_INTER", "2"])
    labels = label_epoch(features, cams, cfg)
    cluster, proxy = pseudo_labels(features.global_all, cams, eps=0.5, min_samples=3, knn_backend="torch",
                                   camera_aware=CameraAwareK(3, 4, 2, 2))
    np.testing.assert_array_equal(labels.cluster, cluster)
    np.testing.assert_array_equal(labels.proxy, proxy)
    plain = label_epoch(features, cams, cluster_cfg("none"))
    assert not np.array_equal(plain.cluster, labels.cluster)
