"""The per-epoch report of the pseudo labels: the share of clusters that join cameras, and the warning when the
pseudo labels follow the cameras."""
import logging

import numpy as np
import pytest
import torch
from fastreid.config import get_cfg
from fastreid.utils.events import EventStorage

import lwtgpf  # noqa: F401
from lwtgpf.clustering import camera_proxies
from lwtgpf.config import add_lwtgpf_config
from lwtgpf.engine.cluster_report import ClusterReport, check_cluster_sizes
from lwtgpf.engine.pseudo_labelling import EpochLabels


def report(tmp_path, clusters, cams, norm="none"):
    cfg = add_lwtgpf_config(get_cfg())
    cfg.merge_from_list(["OUTPUT_DIR", str(tmp_path), "CLUSTER.CAMERA_NORM", norm])
    items = [(f"img{i}.jpg", f"p{i // 4}", int(c)) for i, c in enumerate(cams)]
    clusters = np.asarray(clusters)
    labels = EpochLabels(clusters, camera_proxies(clusters, cams), torch.zeros(0))
    with EventStorage(0) as storage:
        ClusterReport(cfg, items)(3, labels, storage)
        return {k: v[0] for k, v in storage.latest().items()}


def test_share_of_cross_camera_clusters(tmp_path, caplog):
    clusters = np.array([0, 0, 0, 1, 1, 1, 2, 2, -1, 3, 3, 3])
    cams = np.array([0, 1, 1, 2, 2, 2, 0, 3, 1, 0, 0, 0])
    with caplog.at_level(logging.WARNING, logger="fastreid"):
        scalars = report(tmp_path, clusters, cams)
    assert scalars["cluster/cross_camera"] == 0.5  # clusters 0 and 2 of 0-3
    assert "follow the cameras" not in caplog.text
    rows = (tmp_path / "pseudo_labels" / "epoch_003.csv").read_text().splitlines()
    assert len(rows) == 13 and rows[9] == "img8.jpg,1,-1,-1"


@pytest.mark.parametrize("norm,hint", [("none", True), ("center", False)])
def test_camera_bound_clusters_are_reported(tmp_path, caplog, norm, hint):
    cams = np.repeat(np.arange(4), 6)
    clusters = np.repeat(np.arange(8), 3)  # every cluster inside one camera
    with caplog.at_level(logging.WARNING, logger="fastreid"):
        scalars = report(tmp_path, clusters, cams, norm)
    assert scalars["cluster/cross_camera"] == 0.0
    assert "0% of the clusters join several cameras" in caplog.text
    assert ("CLUSTER.CAMERA_NORM center" in caplog.text) == hint


def test_one_giant_cluster_is_reported_with_a_smaller_eps(caplog):
    stats = {"nn_dist_p10": 0.0, "nn_dist_p50": 0.21, "nn_dist_p90": 0.4,
             "core_dist_p10": 0.1, "core_dist_p50": 0.347, "core_dist_p90": 0.6}
    labels = np.array([0] * 6 + [1, 1, -1, -1])
    with caplog.at_level(logging.WARNING):
        check_cluster_sizes(labels, stats, eps=0.6, max_fraction=0.5)
    assert stats["largest_cluster_fraction"] == 0.6
    assert "One cluster holds 6 of 10 samples (60% > CLUSTER.MAX_CLUSTER_FRACTION 50%)" in caplog.text
    assert "core_dist_p50 0.347" in caplog.text and "try CLUSTER.EPS 0.34" in caplog.text
    caplog.clear()
    stats = {"core_dist_p50": 0.7}
    with caplog.at_level(logging.WARNING):
        check_cluster_sizes(labels, stats, eps=0.6, max_fraction=0.5)
    assert "try CLUSTER.EPS 0.50" in caplog.text
    caplog.clear()
    check_cluster_sizes(np.array([0, 0, 1, 1, 2]), stats, eps=0.6, max_fraction=0.5)
    assert stats["largest_cluster_fraction"] == 0.4 and not caplog.text
