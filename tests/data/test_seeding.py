"""Data streams that are pure functions of a seed: a loader rebuilt at batch b continues exactly."""
import random

import numpy as np
import pytest
import torch
from PIL import Image

import lwtgpf  # noqa: F401
from fastreid.config import get_cfg
from fastreid.data.samplers import NaiveIdentitySampler

from lwtgpf.config import add_lwtgpf_config
from lwtgpf.data.build import build_pseudo_label_loader, build_supervised_train_loader
from lwtgpf.data.samplers import ProxyBalancedSampler
from lwtgpf.data.seeding import PrivateRNGSampler, SeededBatches, seeded_rngs
from torch.utils.data import BatchSampler


def cfg_for(workers: int, sampler: str = "ProxyBalancedSampler"):
    cfg = add_lwtgpf_config(get_cfg())
    cfg.merge_from_list(["INPUT.SIZE_TRAIN", "[32,16]", "DATALOADER.NUM_WORKERS", str(workers),
                         "SOLVER.IMS_PER_BATCH", "8", "DATALOADER.NUM_INSTANCE", "2",
                         "DATALOADER.SAMPLER_TRAIN", sampler, "INPUT.REA.ENABLED", "True",
                         "INPUT.FLIP.ENABLED", "True", "INPUT.PADDING.ENABLED", "True"])
    return cfg


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    folder = tmp_path_factory.mktemp("img")
    rng = np.random.default_rng(0)
    out = []
    for i in range(24):
        path = folder / f"{i:04d}.png"
        Image.fromarray(rng.integers(0, 256, (32, 16, 3), dtype=np.uint8)).save(path)
        out.append((str(path), f"set_{i // 3}", i % 3))
    return out


def batches(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_pseudo_label_loader_restarts_exactly_with_any_worker_count(items):
    proxies = np.arange(24) // 3
    full = batches(build_pseudo_label_loader(cfg_for(0), items, proxies, proxies, seed=7), 6)
    torch.manual_seed(123), np.random.seed(5), random.seed(9)  # other draws must not matter
    tail = batches(build_pseudo_label_loader(cfg_for(2), items, proxies, proxies, seed=7, start_batch=4), 2)
    for a, b in zip(full[4:], tail):
        assert a["img_paths"] == b["img_paths"] and torch.equal(a["images"], b["images"])
    # augmentation is random, and the seed decides it
    other = batches(build_pseudo_label_loader(cfg_for(0), items, proxies, proxies, seed=8), 1)[0]
    assert not torch.equal(other["images"], full[0]["images"])


def test_supervised_loader_restarts_exactly(items):
    cfg = cfg_for(0, "NaiveIdentitySampler")
    full = batches(build_supervised_train_loader(cfg, items, seed=3), 5)
    np.random.seed(1)  # fast-reid's sampler draws from np.random: it must draw from its own copy
    tail = batches(build_supervised_train_loader(cfg, items, seed=3, start_batch=3), 2)
    for a, b in zip(full[3:], tail):
        assert a["img_paths"] == b["img_paths"] and torch.equal(a["images"], b["images"])


def test_sample_seeds_name_the_position_in_the_global_batch():
    labels = np.arange(40) // 4
    one = SeededBatches(BatchSampler(ProxyBalancedSampler(labels, 8, 2, seed=1, rank=0, world_size=1), 8, False), 5)
    ranks = [SeededBatches(BatchSampler(ProxyBalancedSampler(labels, 8, 2, seed=1, rank=r, world_size=2), 4, False),
                           5, offset=4 * r) for r in range(2)]
    streams = [iter(one)] + [iter(r) for r in ranks]
    for _ in range(5):
        whole, first, second = (next(s) for s in streams)
        assert whole == first + second


def test_seeded_rngs_restore_the_global_states():
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    with seeded_rngs(11):
        a = torch.rand(3), np.random.rand(), random.random()
    with seeded_rngs(11):
        b = torch.rand(3), np.random.rand(), random.random()
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
    assert torch.equal(torch.get_rng_state(), states[0]) and (np.random.get_state()[1] == states[1]).all()
    assert random.getstate() == states[2]


def test_private_rng_sampler_ignores_outside_draws(items):
    def stream(disturb):
        sampler = iter(PrivateRNGSampler(NaiveIdentitySampler(items, 8, 2, seed=4), seed=4))
        out = []
        for _ in range(40):
            out.append(next(sampler))
            if disturb:
                np.random.rand(), random.random()
        return out

    assert stream(False) == stream(True)
