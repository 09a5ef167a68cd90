import numpy as np
import pytest
from PIL import Image

import lwtgpf  # noqa: F401
from fastreid.config import get_cfg

from lwtgpf.config import add_lwtgpf_config
from lwtgpf.data.build import build_dataset, build_inference_loader, build_pseudo_label_loader
from lwtgpf.data.io import UnreadableImageError


def tiny_cfg():
    cfg = get_cfg()
    add_lwtgpf_config(cfg)
    cfg.merge_from_list(["INPUT.SIZE_TRAIN", "[32,16]", "INPUT.SIZE_TEST", "[32,16]", "DATALOADER.NUM_WORKERS", "0",
                         "SOLVER.IMS_PER_BATCH", "8", "DATALOADER.NUM_INSTANCE", "4", "TEST.IMS_PER_BATCH", "4",
                         "DATALOADER.SAMPLER_TRAIN", "ProxyBalancedSampler"])
    return cfg


def images(tmp_path, n):
    paths = []
    for i in range(n):
        path = tmp_path / f"{i:04d}.jpg"
        Image.fromarray(np.full((32, 16, 3), i * 10 % 255, np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_unknown_dataset_name_lists_the_registered_ones():
    with pytest.raises(KeyError, match="Market1501.*SyntheticReID|SyntheticReID.*Market1501"):
        build_dataset(tiny_cfg(), "Market1502")


def test_unreadable_image_names_the_file(tmp_path):
    paths = images(tmp_path, 3)
    with open(paths[1], "wb") as f:
        f.write(b"not a jpeg")
    loader = build_inference_loader(tiny_cfg(), [(p, 0, 0) for p in paths])
    with pytest.raises(UnreadableImageError, match="0001.jpg"):
        list(loader)


def test_pseudo_label_loader_skips_outliers_and_balances_proxies(tmp_path):
    paths = images(tmp_path, 12)
    items = [(p, "gt", i % 2) for i, p in enumerate(paths)]
    proxies = np.array([0, 0, 0, 1, 1, 1, -1, 2, 2, -1, 3, 3])
    clusters = np.where(proxies < 0, -1, proxies // 2)
    batch = next(iter(build_pseudo_label_loader(tiny_cfg(), items, clusters, proxies)))
    targets = batch["targets"].tolist()
    assert len(targets) == 8 and -1 not in targets
    assert sorted(np.bincount(targets).tolist())[-2:] == [4, 4]  # 2 proxies x 4 images
    kept = {p for p, y in zip(batch["img_paths"], targets)}
    assert not kept & {paths[6], paths[9]}
    for path, target in zip(batch["img_paths"], targets):
        assert proxies[paths.index(path)] == target
