"""Proxy-balanced and cluster-balanced training samplers (METHOD.md section 3.6).

Like fastreid's training samplers they yield indices forever and every process builds the
same stream from a shared seed; here the stream is made of whole *global* batches and each
process yields only its contiguous slice, so the global batch does not depend on the number
of processes.
"""
import logging
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Sampler

from fastreid.utils import comm

__all__ = ["GroupBalancedSampler", "ProxyBalancedSampler", "ClusterBalancedSampler"]

logger = logging.getLogger(__name__)

Labels = Union[Sequence[int], np.ndarray, torch.Tensor]


class GroupBalancedSampler(Sampler):
    """Global batches of ``batch_size / num_instances`` distinct groups, ``num_instances`` images each.

    Groups are drawn in random order: a pass over a fresh permutation of all groups gives
    ``num_groups // groups_per_batch`` batches, the remainder of the pass is dropped (a
    different one every pass). A group with at least ``num_instances`` images gives that many
    distinct images; a smaller group gives all of its images, then random repeats of them.
    Images labelled -1 (outliers) are never sampled.

    With fewer groups than a batch needs, training goes on: each batch is filled with
    successive permutations of all groups, so a group appears once or more in it (a warning
    says so).

    Args:
        labels: the group of every image, -1 for an image that must not be sampled.
        batch_size: images per *global* batch (all processes together).
        num_instances: images per group in a batch.
        seed: shared seed of the batch stream; ``None`` draws one shared by all processes.
        rank, world_size: this process's slice of each global batch; default to the
            process group's (fastreid.utils.comm).
    """

    label_name = "labels"

    def __init__(
            self,
            labels: Labels,
            batch_size: int,
            num_instances: int = 4,
            seed: Optional[int] = None,
            rank: Optional[int] = None,
            world_size: Optional[int] = None,
    ):
        name = type(self).__name__
        labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        if labels.ndim != 1 or not (labels.size == 0 or np.issubdtype(labels.dtype, np.integer)):
            raise ValueError(f"{name}: {self.label_name} must be a 1-D sequence of integers (-1 for outliers), "
                             f"got dtype {labels.dtype} shape {labels.shape}")
        if num_instances < 1:
            raise ValueError(f"{name}: num_instances (DATALOADER.NUM_INSTANCE) must be >= 1, got {num_instances}")
        if batch_size < 1 or batch_size % num_instances:
            raise ValueError(f"{name}: the global batch size (SOLVER.IMS_PER_BATCH) must be a positive multiple of "
                             f"num_instances={num_instances}, got {batch_size}")
        world_size = comm.get_world_size() if world_size is None else int(world_size)
        rank = comm.get_rank() if rank is None else int(rank)
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"{name}: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if batch_size % world_size:
            raise ValueError(f"{name}: the global batch size (SOLVER.IMS_PER_BATCH) {batch_size} must be divisible "
                             f"by the number of processes {world_size}")

        valid = np.flatnonzero(labels >= 0)
        if valid.size == 0:
            raise ValueError(f"{name}: every image is an outlier (-1); there is nothing to sample")
        # Images of each group, groups in ascending label order, images in index order.
        order = valid[np.argsort(labels[valid], kind="stable")]
        groups, starts = np.unique(labels[order], return_index=True)
        self._members = np.split(order, starts[1:])

        self.batch_size = int(batch_size)
        self.num_instances = int(num_instances)
        self.groups_per_batch = self.batch_size // self.num_instances
        self.num_groups = len(groups)
        self._rank = rank
        self._world_size = world_size
        self._seed = int(comm.shared_random_seed() if seed is None else seed)
        if self.num_groups < self.groups_per_batch:
            logger.warning(f"{name}: {self.num_groups} groups in {self.label_name} but a batch of {self.batch_size} "
                           f"needs {self.groups_per_batch} distinct ones; groups are repeated within a batch")

    def __iter__(self) -> Iterator[int]:
        local = self.batch_size // self._world_size
        start = self._rank * local
        for batch in self._global_batches():
            yield from batch[start:start + local].tolist()

    def _global_batches(self) -> Iterator[np.ndarray]:
        """Every process's identical stream of global batches of image indices."""
        rng = np.random.default_rng(self._seed)
        per_batch = self.groups_per_batch
        while True:
            if self.num_groups >= per_batch:
                perm = rng.permutation(self.num_groups)
                for first in range(0, self.num_groups - per_batch + 1, per_batch):
                    yield self._fill(perm[first:first + per_batch], rng)
            else:
                repeats = -(-per_batch // self.num_groups)
                chosen = np.concatenate([rng.permutation(self.num_groups) for _ in range(repeats)])
                yield self._fill(chosen[:per_batch], rng)

    def _fill(self, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``num_instances`` images of each group, group after group."""
        k = self.num_instances
        picks = []
        for g in groups:
            members = self._members[g]
            if len(members) >= k:
                picks.append(rng.choice(members, size=k, replace=False))
            else:
                extra = rng.choice(members, size=k - len(members), replace=True)
                picks.append(rng.permutation(np.concatenate([members, extra])))
        return np.concatenate(picks)


class ProxyBalancedSampler(GroupBalancedSampler):
    """Proxy-balanced batches: ``batch_size / num_instances`` distinct camera-aware proxies,
    ``num_instances`` images each (the published recipe: 8 proxies x 4). See
    :class:`GroupBalancedSampler`."""

    label_name = "proxy_labels"

    def __init__(self, proxy_labels: Labels, batch_size: int, num_instances: int = 4, seed: Optional[int] = None,
                 rank: Optional[int] = None, world_size: Optional[int] = None):
        super().__init__(proxy_labels, batch_size, num_instances, seed, rank, world_size)


class ClusterBalancedSampler(GroupBalancedSampler):
    """Cluster-balanced batches: distinct clusters (pseudo identities) instead of proxies. See
    :class:`GroupBalancedSampler`."""

    label_name = "cluster_labels"

    def __init__(self, cluster_labels: Labels, batch_size: int, num_instances: int = 4, seed: Optional[int] = None,
                 rank: Optional[int] = None, world_size: Optional[int] = None):
        super().__init__(cluster_labels, batch_size, num_instances, seed, rank, world_size)
