"""Candidate nearest neighbours for the pseudo labels: exact (faiss, torch) or approximate (IVF).

Every backend returns, for some query rows of a matrix of unit rows, the indices of about the
`c` rows with the highest inner product; `lwtgpf.clustering` then re-ranks those candidates in
float64, so two exact backends give the same neighbour lists.

- ``faiss``: exact flat inner-product search, on the GPU when the features are on a CUDA device
  and faiss has GPU support (optionally storing the features in float16 there);
- ``torch``: exact, chunked matmul + top-k on the features' device;
- ``approx``: an inverted file (Jegou et al., TPAMI 2011): spherical k-means cells, every query
  scans the members of its `nprobe` nearest cells. The scan runs cell by cell as dense
  query-block x cell-block products on the features' device, so on CPU it runs at matrix-product
  speed (faiss's CPU IVF scan compares a query with one stored vector at a time, reading every
  probed list once per query, which is slow when every row is a query); it needs no faiss.
- ``auto``: faiss when it can search on the features' device, else torch.

faiss is reached through `_faiss_flat_search` only: its GPU helpers have broken across releases
before, so only the stable index API is used, and torch can always stand in.
"""
import logging
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

__all__ = ["BACKENDS", "KnnSearch", "kmeans"]

logger = logging.getLogger("fastreid." + __name__)

BACKENDS = ("auto", "faiss", "torch", "approx")

_BLOCK = 1 << 26  # similarity entries per block of a dense search (256 MB in float32)
_SLOTS = 1 << 24  # (query, probe, candidate) slots per query chunk of the approx search (192 MB)


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _faiss_gpu(device: torch.device) -> bool:
    faiss = _faiss()
    return (device.type == "cuda" and faiss is not None and hasattr(faiss, "StandardGpuResources")
            and faiss.get_num_gpus() > 0)


def _faiss_flat_search(base: np.ndarray, queries: np.ndarray, c: int, device: torch.device,
                       fp16: bool) -> np.ndarray:
    """Exact inner-product search with faiss: indices [len(queries), c] (the only use of faiss)."""
    faiss = _faiss()
    if faiss is None:
        raise ImportError("knn backend 'faiss' needs the faiss package (faiss-gpu or faiss-cpu); "
                          "install it or set CLUSTER.KNN to 'torch'")
    index = faiss.IndexFlatIP(base.shape[1])
    if _faiss_gpu(device):
        resources = faiss.StandardGpuResources()
        options = faiss.GpuClonerOptions()
        options.useFloat16 = fp16
        gpu = device.index if device.index is not None else torch.cuda.current_device()
        index = faiss.index_cpu_to_gpu(resources, gpu, index, options)
    index.add(base)
    return index.search(queries, c)[1].astype(np.int64)


def _torch_flat_search(x: torch.Tensor, rows: torch.Tensor, c: int) -> torch.Tensor:
    step = max(1, min(4096, _BLOCK // x.shape[0]))
    out = [(x[rows[i:i + step]] @ x.T).topk(c, dim=1).indices for i in range(0, rows.numel(), step)]
    return torch.cat(out)


@torch.no_grad()
def kmeans(x: torch.Tensor, cells: int, iters: int = 10, sample: int = 64, seed: int = 0) -> torch.Tensor:
    """Spherical k-means centroids [cells, D] (unit rows) of the unit rows of `x`, trained on at most
    `sample` rows per cell drawn with `seed`; an empty cell keeps its previous centroid."""
    n = x.shape[0]
    generator = torch.Generator().manual_seed(seed)
    train = x[torch.randperm(n, generator=generator)[:min(n, sample * cells)].to(x.device)]
    centroids = train[:cells].clone()
    for _ in range(iters):
        assign = _nearest_cells(train, centroids, 1)[:, 0]
        sums = torch.zeros_like(centroids).index_add_(0, assign, train)
        filled = torch.bincount(assign, minlength=cells) > 0
        centroids[filled] = torch.nn.functional.normalize(sums[filled], dim=1)
    return centroids


def _nearest_cells(x: torch.Tensor, centroids: torch.Tensor, nprobe: int) -> torch.Tensor:
    step = max(1, _BLOCK // centroids.shape[0])
    return torch.cat([(x[i:i + step] @ centroids.T).topk(nprobe, dim=1).indices for i in range(0, x.shape[0], step)])


def _ivf_search(x: torch.Tensor, rows: torch.Tensor, c: int, centroids: torch.Tensor, nprobe: int) -> torch.Tensor:
    """Indices [len(rows), c] of the best rows among the members of each query's nprobe nearest
    cells (-1 where fewer than c rows were scanned).

    Queries go in chunks; inside a chunk every cell's members are compared with the queries that
    probe it in one dense product, and each (query, cell) top-c lands in its own slot, so the
    loop over cells only does large operations; one top-c over a query's slots ends the chunk."""
    cells = centroids.shape[0]
    cell_of = _nearest_cells(x, centroids, 1)[:, 0]
    members = torch.argsort(cell_of, stable=True)
    member_ptr = torch.zeros(cells + 1, dtype=torch.long, device=x.device)
    member_ptr[1:] = torch.cumsum(torch.bincount(cell_of, minlength=cells), 0)
    out = torch.empty(rows.numel(), c, dtype=torch.long, device=x.device)
    step = max(1, _SLOTS // (nprobe * c))
    for start in range(0, rows.numel(), step):
        chunk = rows[start:start + step]
        probes = _nearest_cells(x[chunk], centroids, nprobe).flatten()
        order = torch.argsort(probes, stable=True)  # (query, probe) pairs grouped by cell
        probe_ptr = torch.zeros_like(member_ptr)
        probe_ptr[1:] = torch.cumsum(torch.bincount(probes, minlength=cells), 0)
        values = torch.full((order.numel(), c), float("-inf"), device=x.device)
        found = torch.full((order.numel(), c), -1, dtype=torch.long, device=x.device)
        for cell in torch.nonzero(torch.diff(probe_ptr) > 0).flatten().tolist():
            lo, hi = int(probe_ptr[cell]), int(probe_ptr[cell + 1])
            cell_rows = members[member_ptr[cell]:member_ptr[cell + 1]]
            if cell_rows.numel() == 0:
                continue
            top = (x[chunk[order[lo:hi] // nprobe]] @ x[cell_rows].T).topk(min(c, cell_rows.numel()), dim=1)
            values[lo:hi, :top.values.shape[1]] = top.values
            found[lo:hi, :top.values.shape[1]] = cell_rows[top.indices]
        slot = torch.empty_like(order)
        slot[order] = torch.arange(order.numel(), device=x.device)  # pair (query, probe) -> its slot
        values, found = values[slot].view(chunk.numel(), -1), found[slot].view(chunk.numel(), -1)
        out[start:start + chunk.numel()] = found.gather(1, values.topk(c, dim=1).indices)
    return out


@dataclass(frozen=True)
class KnnSearch:
    """How candidate neighbours are found (config keys CLUSTER.KNN*).

    Args:
        backend: "auto", "faiss", "torch" (exact) or "approx" (inverted file).
        fp16: faiss on a GPU stores the features in float16 (half the device memory; candidates
            are still re-ranked in float64, but near-ties within float16 rounding may differ).
        nlist: approx: k-means cells; 0 derives round(sqrt(N)), at most N / 64 (cells of about
            sqrt(N) rows, large enough for dense products).
        nprobe: approx: cells scanned per query; 0 means 16, so each query is compared with about
            16 sqrt(N) rows (5% of them at N = 100,000, 1.6% at 1,000,000).
        recall_sample: approx: rows whose recall@k1 against exact search is measured each time
            (0: not measured).
        seed: approx: seed of the k-means sample and initialisation.
    """

    backend: str = "auto"
    fp16: bool = False
    nlist: int = 0
    nprobe: int = 0
    recall_sample: int = 1000
    seed: int = 0

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"knn backend must be one of {', '.join(map(repr, BACKENDS))} (config key CLUSTER.KNN), "
                             f"got {self.backend!r}")
        for name in ("nlist", "nprobe", "recall_sample"):
            if getattr(self, name) < 0:
                raise ValueError(f"KnnSearch.{name} (config key CLUSTER.APPROX.{name.upper()}) must be >= 0, "
                                 f"got {getattr(self, name)}")

    @classmethod
    def from_config(cls, cluster_cfg) -> "KnnSearch":
        """From a config's CLUSTER node."""
        approx = cluster_cfg.APPROX
        return cls(backend=cluster_cfg.KNN, fp16=cluster_cfg.KNN_FP16, nlist=approx.NLIST, nprobe=approx.NPROBE,
                   recall_sample=approx.RECALL_SAMPLE, seed=approx.SEED)

    @property
    def exact(self) -> bool:
        return self.backend != "approx"

    def resolve(self, device: torch.device) -> str:
        """The backend that runs on `device`: "auto" becomes "faiss" or "torch"."""
        if self.backend != "auto":
            return self.backend
        if _faiss() is not None and (device.type == "cpu" or _faiss_gpu(device)):
            return "faiss"
        return "torch"

    def cells(self, n: int):
        """(nlist, nprobe) of the approx backend for n rows."""
        nlist = min(self.nlist or max(1, min(round(math.sqrt(n)), n // 64)), n)
        nprobe = min(self.nprobe or 16, nlist)
        return nlist, nprobe

    def train(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """Centroids of the approx backend for the unit rows `x` (None for exact backends)."""
        if self.exact:
            return None
        return kmeans(x, self.cells(x.shape[0])[0], seed=self.seed)

    def candidates(self, x: torch.Tensor, rows: torch.Tensor, c: int,
                   centroids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Indices [len(rows), c] (on x's device) of about the c rows of the unit rows `x` with the
        highest inner product with each query row `rows`; -1 pads approx lists that found fewer.
        `centroids` (from `train`) are trained here when not given."""
        backend = self.resolve(x.device)
        if backend == "torch":
            return _torch_flat_search(x, rows, c)
        if backend == "faiss":
            if x.device.type == "cuda" and not _faiss_gpu(x.device):
                logger.warning("faiss has no GPU support here: searching on the CPU (CLUSTER.KNN torch searches "
                               "on the GPU)")
            base = x.cpu().numpy()
            found = _faiss_flat_search(base, base[rows.cpu().numpy()], c, x.device, self.fp16)
            return torch.from_numpy(found).to(x.device)
        if centroids is None:
            centroids = self.train(x)
        return _ivf_search(x, rows, c, centroids.to(x.device), self.cells(x.shape[0])[1])

    def describe(self, n: int) -> str:
        if self.exact:
            return self.backend
        nlist, nprobe = self.cells(n)
        return f"approx (inverted file, {nlist} cells, {nprobe} probed)"


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each row of `exact` [n, k] that the same row of `found` [n, k] holds."""
    hits = (found[:, :, None] == exact[:, None, :]).any(1)
    return float(hits.mean())


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """`size` distinct rows of n (all when size >= n), ascending, drawn with `seed`."""
    if size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def split_rows(n: int, parts: int) -> Sequence[range]:
    """Contiguous shares of n rows, as fastreid's InferenceSampler cuts them across processes."""
    size = (n - 1) // parts + 1
    return [range(min(size * p, n), min(size * (p + 1), n)) for p in range(parts)]
