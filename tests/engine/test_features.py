"""Lean epoch features: the proxy memory built from per-process shares equals the plain one."""
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import lwtgpf  # noqa: F401
from lwtgpf.engine.features import extract_features
from lwtgpf.memory import ProxyMemory

REPO = Path(__file__).resolve().parents[2]

# Shared by this test and the two-process script below: a table of features served by a loader
# sharded like fastreid's, and labels with outliers, several cameras per cluster, a gap-free K.
COMMON = '''
import torch
from fastreid.data.samplers import InferenceSampler
from torch.utils.data import BatchSampler, DataLoader

N, LEVELS, DIM = 53, 4, 8


def table():
    g = torch.Generator().manual_seed(0)
    return torch.nn.functional.normalize(torch.randn(LEVELS, N, DIM, generator=g), dim=2)


def labels():
    g = torch.Generator().manual_seed(1)
    clusters = torch.randint(-1, 6, (N,), generator=g)
    cams = torch.randint(0, 3, (N,), generator=g)
    key = torch.where(clusters >= 0, clusters * 3 + cams, -1)
    proxies = torch.full((N,), -1)
    proxies[key >= 0] = torch.unique(key[key >= 0], return_inverse=True)[1]
    return clusters.numpy(), proxies.numpy(), cams.numpy()


class TableModel(torch.nn.Module):
    """extract_features(batch) serves the rows of a fixed feature table."""

    def __init__(self):
        super().__init__()
        self.table = table()

    def extract_features(self, batch):
        return self.table[:, batch]


def loader():
    return DataLoader(range(N), batch_sampler=BatchSampler(InferenceSampler(N), 7, drop_last=False),
                      collate_fn=torch.tensor)


def memory_of(features):
    """The proxy memory as the ClusterHook starts it from these features and `labels()`."""
    from lwtgpf.engine.pseudo_labelling import proxy_feature_sums
    from lwtgpf.memory import ProxyMemory

    clusters, proxies, cams = labels()
    memory = ProxyMemory()
    memory.reset_from_sums(proxy_feature_sums(features, proxies), clusters, proxies, cams)
    return memory
'''

SCRIPT = "import lwtgpf  # fastreid's imports need its fixes first\n" + COMMON + '''
import sys
import numpy as np
import torch.distributed as dist
import torch.multiprocessing as mp

from lwtgpf.engine.features import extract_features


def worker(rank, world, init, out):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    features = extract_features(TableModel(), loader(), N)
    assert torch.equal(features.global_all, table()[0])  # every process holds every global feature
    assert features.parts_local.shape == (LEVELS - 1, len(features.rows), DIM)
    memory = memory_of(features)
    np.save(f"{out}/memory_{rank}.npy", memory.memory.numpy())
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(worker, args=(2, "file://" + sys.argv[1], sys.argv[2]), nprocs=2)
'''

namespace = {}
exec(COMMON, namespace)


def plain_memory():
    memory = ProxyMemory()
    memory.reset(namespace["table"](), *namespace["labels"]())
    return memory.memory


def normalised_means():
    """METHOD.md section 3, step 5, written from the formula: per level, the L2-normalised mean of
    each proxy's member features."""
    features = namespace["table"]().double()
    _, proxies, _ = namespace["labels"]()
    means = torch.stack([features[:, proxies == k].mean(1) for k in range(proxies.max() + 1)], dim=1)
    return torch.nn.functional.normalize(means, dim=2).float()


def test_lean_memory_equals_plain_memory_in_one_process():
    features = extract_features(namespace["TableModel"](), namespace["loader"](), namespace["N"])
    memory = namespace["memory_of"](features)
    assert torch.equal(memory.memory, plain_memory())
    assert torch.allclose(memory.memory, normalised_means(), atol=1e-6)


def test_float16_parts_are_close_to_float32():
    features = extract_features(namespace["TableModel"](), namespace["loader"](), namespace["N"], "float16")
    assert features.parts_local.dtype == torch.float16 and features.global_all.dtype == torch.float32
    memory = namespace["memory_of"](features)
    plain = plain_memory()
    assert torch.equal(memory.memory[0], plain[0])  # global features stay float32
    assert torch.allclose(memory.memory, plain, atol=2e-3) and not torch.equal(memory.memory, plain)
    with pytest.raises(ValueError, match="CLUSTER.PART_DTYPE"):
        extract_features(namespace["TableModel"](), namespace["loader"](), namespace["N"], "bfloat8")


@pytest.mark.slow
def test_two_processes_build_the_same_memory(tmp_path):
    script = tmp_path / "lean.py"
    script.write_text(textwrap.dedent(SCRIPT))
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "rendezvous"), str(tmp_path)],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    plain = plain_memory().numpy()
    for rank in range(2):
        np.testing.assert_allclose(np.load(tmp_path / f"memory_{rank}.npy"), plain, atol=1e-6)
    assert np.array_equal(np.load(tmp_path / "memory_0.npy"), np.load(tmp_path / "memory_1.npy"))
