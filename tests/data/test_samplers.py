"""Proxy- and cluster-balanced samplers: batch composition, determinism, process slicing, errors."""
import itertools
import logging
from collections import Counter

import lwtgpf  # noqa: F401  (fastreid compatibility fixes first)
import numpy as np
import pytest
import torch

from lwtgpf.data.samplers import ClusterBalancedSampler, ProxyBalancedSampler

# 9 proxies of sizes 1..9 and 5 outliers, shuffled over the dataset.
SIZES = list(range(1, 10))


def make_labels(seed: int = 0) -> np.ndarray:
    labels = np.concatenate([np.full(n, p) for p, n in enumerate(SIZES)] + [np.full(5, -1)])
    return np.random.default_rng(seed).permutation(labels)


def take(sampler, num_batches: int, local_batch: int):
    """The first `num_batches` batches the sampler yields, as a list of index arrays."""
    flat = list(itertools.islice(iter(sampler), num_batches * local_batch))
    return [np.array(flat[i * local_batch:(i + 1) * local_batch]) for i in range(num_batches)]


@pytest.mark.parametrize("num_instances", [2, 4])
def test_batch_composition(num_instances):
    labels = make_labels()
    sampler = ProxyBalancedSampler(labels, batch_size=4 * num_instances, num_instances=num_instances,
                                   seed=1, rank=0, world_size=1)
    members = {p: set(np.flatnonzero(labels == p)) for p in range(len(SIZES))}
    for batch in take(sampler, 40, 4 * num_instances):
        assert (labels[batch] >= 0).all()
        blocks = batch.reshape(4, num_instances)
        proxies = [labels[block[0]] for block in blocks]
        assert len(set(proxies)) == 4  # distinct proxies
        for proxy, block in zip(proxies, blocks):
            assert (labels[block] == proxy).all()
            if len(members[proxy]) >= num_instances:
                assert len(set(block.tolist())) == num_instances  # no replacement when not needed
            else:
                assert set(block.tolist()) == members[proxy]  # every image, then repeats


def test_passes_draw_every_proxy_once():
    labels = make_labels()
    sampler = ProxyBalancedSampler(labels, batch_size=8, num_instances=4, seed=3, rank=0, world_size=1)
    # 9 proxies, 2 per batch: a pass is 4 batches (one proxy left over, a different one each time).
    batches = take(sampler, 4 * 50, 8)
    left_over = Counter()
    for first in range(0, len(batches), 4):
        seen = [labels[b[i]] for b in batches[first:first + 4] for i in (0, 4)]
        assert len(set(seen)) == 8
        left_over.update(set(range(9)) - set(seen))
    assert len(left_over) > 1


def test_deterministic_by_seed():
    labels = make_labels()
    a = take(ProxyBalancedSampler(labels, 16, 4, seed=7, rank=0, world_size=1), 10, 16)
    b = take(ProxyBalancedSampler(labels, 16, 4, seed=7, rank=0, world_size=1), 10, 16)
    c = take(ProxyBalancedSampler(labels, 16, 4, seed=8, rank=0, world_size=1), 10, 16)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize("world_size", [2, 4])
def test_process_slices_concatenate_to_the_single_process_batch(world_size):
    labels = torch.as_tensor(make_labels())
    single = take(ProxyBalancedSampler(labels, 16, 4, seed=5, rank=0, world_size=1), 12, 16)
    local = 16 // world_size
    slices = [take(ProxyBalancedSampler(labels, 16, 4, seed=5, rank=r, world_size=world_size), 12, local)
              for r in range(world_size)]
    for i, batch in enumerate(single):
        np.testing.assert_array_equal(np.concatenate([s[i] for s in slices]), batch)


def test_fewer_proxies_than_a_batch_needs_repeats_them(caplog):
    labels = np.array([0, 0, 0, 1, 1, 2, -1, 2, 2, 2])
    with caplog.at_level(logging.WARNING):
        sampler = ProxyBalancedSampler(labels, batch_size=16, num_instances=4, seed=0, rank=0, world_size=1)
    assert "repeated" in caplog.text
    for batch in take(sampler, 20, 16):
        proxies = Counter(labels[batch[::4]].tolist())
        assert set(proxies) == {0, 1, 2} and sorted(proxies.values()) == [1, 1, 2]
        assert (labels[batch] >= 0).all()


def test_cluster_balanced_sampler_draws_clusters():
    clusters = np.array([0] * 6 + [1] * 3 + [-1] * 4 + [2] * 5 + [3] * 8)
    sampler = ClusterBalancedSampler(clusters, batch_size=12, num_instances=3, seed=2, rank=1, world_size=2)
    for half in take(sampler, 10, 6):
        assert (clusters[half] >= 0).all()
        blocks = clusters[half].reshape(2, 3)
        assert (blocks == blocks[:, :1]).all() and blocks[0, 0] != blocks[1, 0]


def test_default_seed_and_process_group_without_distributed():
    sampler = ProxyBalancedSampler(make_labels(), batch_size=8, num_instances=4)
    assert len(take(sampler, 3, 8)[2]) == 8


@pytest.mark.parametrize("labels,kwargs,match", [
    (make_labels(), dict(batch_size=10, num_instances=4), "multiple of num_instances"),
    (make_labels(), dict(batch_size=8, num_instances=0), "num_instances"),
    (make_labels(), dict(batch_size=12, num_instances=4, world_size=8, rank=0), "divisible by the number"),
    (make_labels(), dict(batch_size=8, num_instances=4, world_size=2, rank=2), "rank"),
    (np.full(6, -1), dict(batch_size=8, num_instances=4), "outlier"),
    (np.zeros(6, dtype=np.float32), dict(batch_size=8, num_instances=4), "integers"),
    (np.zeros((2, 3), dtype=np.int64), dict(batch_size=8, num_instances=4), "1-D"),
])
def test_bad_arguments(labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ProxyBalancedSampler(labels, seed=0, **kwargs)
