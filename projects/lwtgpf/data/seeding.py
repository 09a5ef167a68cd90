"""Random streams of the training data that are pure functions of a seed, for exact resume.

Augmentation (fast-reid's transforms draw from the global torch, numpy and python RNGs) gets,
for every sample, RNGs seeded from (run seed, epoch, batch, position in the global batch): the
same image is augmented the same way whichever loader worker, process count or restart handles
it, and the main process's own RNG states are left untouched. Samplers that draw from the
global numpy / python RNGs (fast-reid's) run on private copies of them. A loader restarted at
batch b therefore yields exactly what the uninterrupted loader yielded from batch b on.
"""
import contextlib
import itertools
import random
from typing import Iterable, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["derive_seed", "seeded_rngs", "SeededBatches", "PrivateRNGSampler"]


def derive_seed(*keys: int) -> int:
    """A well-mixed 32-bit seed from non-negative integer keys (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


@contextlib.contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """Seed the global CPU torch, numpy and python RNGs with `seed` inside the block, and put
    their previous states back after it (CUDA generators are not touched)."""
    torch_state, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    torch.random.default_generator.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        np.random.set_state(np_state)
        random.setstate(py_state)


class SeededBatches(Sampler):
    """Batches of `(index, sample seed)` from a batch sampler, starting at batch `start`.

    The seed of the sample at position p of this process's slice of batch b is
    `derive_seed(seed, b, offset + p)`; with `offset` = rank x local batch size it names the
    position in the global batch, so one and several processes augment a sample alike.
    """

    def __init__(self, batch_sampler: Iterable[List[int]], seed: int, start: int = 0, offset: int = 0):
        self.batch_sampler = batch_sampler
        self.seed = int(seed)
        self.start = int(start)
        self.offset = int(offset)

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        batches = itertools.islice(iter(self.batch_sampler), self.start, None)
        for b, batch in enumerate(batches, start=self.start):
            yield [(int(i), derive_seed(self.seed, b, self.offset + p)) for p, i in enumerate(batch)]


class PrivateRNGSampler(Sampler):
    """Runs a sampler that draws from the global numpy / python RNGs (fast-reid's samplers seed
    and use `np.random`) on private copies of them, so that its stream depends on its own seed
    only, not on what else draws from those RNGs, nor on when the loader prefetches. The private
    copies start from `seed` (the sampler may reseed them itself)."""

    def __init__(self, sampler: Iterable[int], seed: int):
        self.sampler = sampler
        self.seed = int(seed)

    def __iter__(self) -> Iterator[int]:
        inner = iter(self.sampler)
        private: Optional[tuple] = None
        while True:
            outer = (np.random.get_state(), random.getstate())
            if private is None:
                np.random.seed(self.seed)
                random.seed(self.seed)
            else:
                np.random.set_state(private[0])
                random.setstate(private[1])
            try:
                value = next(inner)
            except StopIteration:
                return
            finally:
                private = (np.random.get_state(), random.getstate())
                np.random.set_state(outer[0])
                random.setstate(outer[1])
            yield value
