"""ClusterHook's per-epoch report: the share of clusters that join cameras, and the warning when the
pseudo labels follow the cameras."""
import logging

import numpy as np
import pytest
from fastreid.config import get_cfg
from fastreid.utils.events import EventStorage

import lwtgpf  # noqa: F401
from lwtgpf.clustering import camera_proxies
from lwtgpf.config import add_lwtgpf_config
from lwtgpf.engine.hooks import ClusterHook


class _Trainer:
    def __init__(self, storage):
        self.storage = storage


def report(tmp_path, clusters, cams, norm="none"):
    cfg = add_lwtgpf_config(get_cfg())
    cfg.merge_from_list(["OUTPUT_DIR", str(tmp_path), "CLUSTER.CAMERA_NORM", norm])
    hook = ClusterHook.__new__(ClusterHook)  # no loader: only the report is under test
    hook.cfg, hook.camera_norm = cfg, norm
    hook.items = [(f"img{i}.jpg", f"p{i // 4}", int(c)) for i, c in enumerate(cams)]
    hook.cams = np.asarray(cams)
    hook.gt = np.arange(len(cams)) // 4
    with EventStorage(0) as storage:
        hook.trainer = _Trainer(storage)
        hook._report(3, np.asarray(clusters), camera_proxies(clusters, cams), {})
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
