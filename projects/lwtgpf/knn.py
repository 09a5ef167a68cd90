"""Candidate nearest neighbours for the pseudo labels: exact (faiss, torch) or approximate (IVF).

Every backend returns, for some query rows of a matrix of unit rows, the indices of about the
`c` rows with the highest inner product; `lwtgpf.clustering` then re-ranks those candidates in
float64, so two exact backends give the same neighbour lists.

- ``faiss``: exact flat inner-product search, on the GPU when the features are on a CUDA device
  and faiss has GPU support (optionally storing the features in float16 there);
- ``torch``: exact, chunked matmul + top-k on the features' device;
- ``approx``: an inverted file (Jegou et al., TPAMI 2011): spherical k-means cells, every query
  scans the members of its `nprobe` nearest cells. The scan runs cell by cell as dense
  query-block x cell-block products on the features' device, in bfloat16 where the device
  multiplies it natively (3.5x float32's speed at the scan's product sizes on an AVX512-BF16
  CPU; the candidates are re-ranked in float64 all the same), so it runs at matrix-product speed
  (faiss's CPU IVF scan compares a query with one stored vector at a time). The re-ranked lists
  then take in their reverse neighbours (`add_reverse`), which repairs most of what the probes
  missed at no new product.
  It needs no faiss and runs on CPU and GPU alike.
- ``auto``: faiss when it can search on the features' device, else torch.

faiss is reached through `_faiss_flat_search` only: its GPU helpers have broken across releases
before, so only the stable index API is used, and torch can always stand in.
"""
import logging
import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch

__all__ = ["BACKENDS", "KnnSearch", "add_reverse", "kmeans"]

logger = logging.getLogger("fastreid." + __name__)

BACKENDS = ("auto", "faiss", "torch", "approx")
PRECISIONS = ("auto", "bfloat16", "float32")

_BLOCK = 1 << 26  # similarity entries per block of a dense search (256 MB in float32)
# (query, probe, member) slots per query chunk of the approx search (512 MB in bfloat16): larger
# chunks give every cell more queries per product, which runs the scan 1.4x faster than 128 MB
_SLOTS = 1 << 28


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


def _native_bfloat16(device: torch.device) -> bool:
    """Whether `device` multiplies bfloat16 matrices in hardware (elsewhere torch emulates it, slower
    than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":  # torch.cpu names these checks privately; absent ones count as False
        return any(getattr(torch.cpu, name, lambda: False)() for name in
                   ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return False


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


def _ivf_search(x: torch.Tensor, rows: torch.Tensor, c: int, centroids: torch.Tensor, nprobe: int,
                dtype: torch.dtype) -> torch.Tensor:
    """Indices [len(rows), c] of the best rows among the members of each query's nprobe nearest
    cells, compared in `dtype` (-1 where fewer than c rows were scanned).

    The members of every cell are copied together, in `dtype`, once. Queries go in chunks; inside
    a chunk every probed cell is compared with all the queries that probe it in one dense product,
    whose rows land in the queries' (probe, member) slots of a [queries, nprobe, largest cell]
    table; one top-c over each query's whole table row ends the chunk (one selection over a long
    row costs a fraction of one per short cell block)."""
    cells = centroids.shape[0]
    cell_of = _nearest_cells(x, centroids, 1)[:, 0]
    members = torch.argsort(cell_of, stable=True)
    sizes = torch.bincount(cell_of, minlength=cells)
    starts = torch.cumsum(sizes, 0) - sizes
    base = x[members].to(dtype)
    sizes_list, starts_list, cap = sizes.tolist(), starts.tolist(), int(sizes.max())
    out = torch.full((rows.numel(), c), -1, dtype=torch.long, device=x.device)
    step = max(1, min(rows.numel(), _SLOTS // (nprobe * cap)))
    buffer = torch.empty(step * nprobe * cap, dtype=dtype, device=x.device)  # one allocation: fresh pages cost
    for start in range(0, rows.numel(), step):
        chunk = rows[start:start + step]
        queries = x[chunk]
        probes = _nearest_cells(queries, centroids, nprobe)
        queries = queries.to(dtype)
        table = buffer[:chunk.numel() * nprobe * cap].view(chunk.numel(), nprobe, cap).fill_(float("-inf"))
        pairs = torch.argsort(probes.flatten(), stable=True)  # (query, probe) pairs grouped by cell
        pair_ends = torch.cumsum(torch.bincount(probes.flatten(), minlength=cells), 0).tolist()
        for cell in torch.unique(probes).tolist():
            group = pairs[pair_ends[cell - 1] if cell else 0:pair_ends[cell]]
            query, probe = group // nprobe, group % nprobe
            lo, size = starts_list[cell], sizes_list[cell]
            table[query, probe, :size] = queries[query] @ base[lo:lo + size].T
        best = table.view(chunk.numel(), -1).topk(min(c, nprobe * cap), dim=1)
        slot = starts[probes.gather(1, best.indices // cap)] + best.indices % cap
        found = members[slot.clamp(max=x.shape[0] - 1)]
        out[start:start + chunk.numel(), :found.shape[1]] = torch.where(best.values > float("-inf"), found, -1)
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
        nprobe: approx: cells scanned per query; 0 means 32, so each query is compared with about
            32 sqrt(N) rows (10% of them at N = 100,000, 3.2% at 1,000,000).
        precision: approx: dtype of the scan's products: "bfloat16" (the candidates only; they are
            re-ranked in float64), "float32", or "auto": bfloat16 where the device multiplies it
            natively (CUDA with bfloat16 support; CPUs with AVX512-BF16 or AMX), else float32.
        recall_sample: approx: rows whose recall@k1 against exact search is measured each time
            (0: not measured).
        seed: approx: seed of the k-means sample and initialisation.
    """

    backend: str = "auto"
    fp16: bool = False
    nlist: int = 0
    nprobe: int = 0
    precision: str = "auto"
    recall_sample: int = 1000
    seed: int = 0

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"knn backend must be one of {', '.join(map(repr, BACKENDS))} (config key CLUSTER.KNN), "
                             f"got {self.backend!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"approx precision must be one of {', '.join(map(repr, PRECISIONS))} (config key "
                             f"CLUSTER.APPROX.PRECISION), got {self.precision!r}")
        for name in ("nlist", "nprobe", "recall_sample"):
            if getattr(self, name) < 0:
                raise ValueError(f"KnnSearch.{name} (config key CLUSTER.APPROX.{name.upper()}) must be >= 0, "
                                 f"got {getattr(self, name)}")

    @classmethod
    def from_config(cls, cluster_cfg) -> "KnnSearch":
        """From a config's CLUSTER node."""
        approx = cluster_cfg.APPROX
        return cls(backend=cluster_cfg.KNN, fp16=cluster_cfg.KNN_FP16, nlist=approx.NLIST, nprobe=approx.NPROBE,
                   precision=approx.PRECISION, recall_sample=approx.RECALL_SAMPLE, seed=approx.SEED)

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

    def scan_dtype(self, device: torch.device) -> torch.dtype:
        """The dtype of the approx scan's products on `device`."""
        if self.precision != "auto":
            return getattr(torch, self.precision)
        return torch.bfloat16 if _native_bfloat16(device) else torch.float32

    def cells(self, n: int):
        """(nlist, nprobe) of the approx backend for n rows."""
        nlist = min(self.nlist or max(1, min(round(math.sqrt(n)), n // 64)), n)
        nprobe = min(self.nprobe or 32, nlist)
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
        return _ivf_search(x, rows, c, centroids.to(x.device), self.cells(x.shape[0])[1], self.scan_dtype(x.device))

    def describe(self, n: int) -> str:
        if self.exact:
            return self.backend
        nlist, nprobe = self.cells(n)
        return f"approx (inverted file, {nlist} cells, {nprobe} probed, {self.precision} scan, reverse neighbours)"

    def complete(self, nbr: np.ndarray, sim: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """The final lists from every row's re-ranked candidates `nbr` [N, k] and their cosines `sim`
        (inf for the row itself): unchanged for exact backends; for approx, `add_reverse`."""
        return (nbr, sim) if self.exact else add_reverse(nbr, sim)


def add_reverse(nbr: np.ndarray, sim: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Every row's k best rows among its own list and the rows whose lists hold it.

    `nbr` [N, k] lists rows by decreasing `sim` (float64; inf for the row itself), exact ties by
    ascending index; the result keeps that order. A pair found from either side is known from
    both, at no new product: an approximate search that missed j for i but found i for j
    repairs the pair (the reverse edges of NN-descent, Dong et al., WWW 2011). Exact lists come
    back unchanged: a row outside i's exact list ranks below all of them."""
    n, k = nbr.shape
    rows = np.repeat(np.arange(n), k)
    src, dst = np.concatenate([rows, nbr.ravel()]), np.concatenate([nbr.ravel(), rows])
    val = np.concatenate([sim.ravel(), sim.ravel()])
    _, first = np.unique(src * n + dst, return_index=True)  # a pair listed from both sides, once
    src, dst, val = src[first], dst[first], val[first]
    order = np.lexsort((dst, -val, src))
    src, dst, val = src[order], dst[order], val[order]
    rank = np.arange(src.size) - np.searchsorted(src, src)
    keep = rank < k
    out, out_sim = np.empty_like(nbr), np.empty_like(sim)
    out[src[keep], rank[keep]] = dst[keep]
    out_sim[src[keep], rank[keep]] = val[keep]
    return out, out_sim


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each row of `exact` [n, k] that the same row of `found` [n, k] holds."""
    hits = (found[:, :, None] == exact[:, None, :]).any(1)
    return float(hits.mean())


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """`size` distinct rows of n (all when size >= n), ascending, drawn with `seed`."""
    if size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
