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

  The search adapts to the data (`KnnSearch.plan`). Cells far larger than the mean (an identity
  with thousands of images, a camera's worth of near-duplicates) are split by k-means of their
  own members, so that a probe never scans much more than N / cells rows. The number of probes is
  raised until the candidates of a sample of rows find a target share of their k-reciprocal
  neighbours (found by exact search; or fixed, with `nprobe`); when reaching it would scan more
  than `max_scan` of the rows per query, exact search is cheaper and runs instead, with a warning.
- ``auto``: faiss when it can search on the features' device, else torch.

faiss is reached through `_faiss_flat_search` only: its GPU helpers have broken across releases
before, so only the stable index API is used, and torch can always stand in.
"""
import logging
import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np
import torch

__all__ = ["BACKENDS", "RERANK_MARGIN", "IvfPlan", "KnnSearch", "add_reverse", "kmeans", "split_large_cells"]

logger = logging.getLogger("fastreid." + __name__)

BACKENDS = ("auto", "faiss", "torch", "approx")
PRECISIONS = ("auto", "bfloat16", "float32")

_BLOCK = 1 << 26  # similarity entries per block of a dense search (256 MB in float32)
# (query, probe, member) slots per query chunk of the approx search (512 MB in bfloat16): larger
# chunks give every cell more queries per product, which runs the scan 1.4x faster than 128 MB
_SLOTS = 1 << 28
# Extra candidates beyond k fetched from every backend and re-ranked in float64 (lwtgpf.clustering),
# so that the final order does not depend on the backend's float32 rounding.
RERANK_MARGIN = 10
# sampled rows whose k-reciprocal neighbours choose the probes: the members of their exact lists
# are searched exactly too (k1 rows each), so this bounds that cost to about 4,000 exact queries
_MUTUAL_ROWS = 200


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


def _torch_flat_search(x: torch.Tensor, rows: torch.Tensor, c: int, base: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Indices [len(rows), c] of the c rows of `base` (default: x) with the highest inner product
    with each query x[rows]."""
    base = x if base is None else base
    step = max(1, min(4096, _BLOCK // base.shape[0]))
    out = [(x[rows[i:i + step]] @ base.T).topk(c, dim=1).indices for i in range(0, rows.numel(), step)]
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


def split_large_cells(x: torch.Tensor, centroids: torch.Tensor, max_factor: float, seed: int = 0,
                      rounds: int = 3) -> torch.Tensor:
    """`centroids` with every cell of more than `max_factor` times the mean cell size replaced by
    k-means centroids of its own members (one per mean cell size), for up to `rounds` rounds;
    `max_factor` 0 keeps them as they are. Cells then hold about N / cells rows each, whatever the
    sizes of the clusters in `x`, so that the rows a probe scans stay bounded."""
    if not max_factor:
        return centroids
    n = x.shape[0]
    for round_ in range(rounds):
        cell_of = _nearest_cells(x, centroids, 1)[:, 0]
        sizes = torch.bincount(cell_of, minlength=centroids.shape[0])
        mean = n / centroids.shape[0]
        large = torch.nonzero(sizes > max_factor * mean).flatten().tolist()
        if not large:
            break
        parts = [centroids[sizes <= max_factor * mean]]
        for cell in large:
            members = x[cell_of == cell]
            parts.append(kmeans(members, math.ceil(members.shape[0] / mean), seed=seed + 1 + round_ * 7919 + cell))
        centroids = torch.cat(parts)
    return centroids


@dataclass(frozen=True)
class _Cells:
    """The rows of `x` grouped by their nearest centroid: `members` (row indices, cell by cell),
    each cell's `sizes` and `starts` in it, and `base`, the grouped rows in the scan's dtype."""

    members: torch.Tensor
    sizes: torch.Tensor
    starts: torch.Tensor
    base: torch.Tensor

    @classmethod
    def of(cls, x: torch.Tensor, centroids: torch.Tensor, dtype: torch.dtype,
           cell_of: Optional[torch.Tensor] = None) -> "_Cells":
        """The cells of `x`'s rows (`cell_of`, each row's nearest centroid, when already known)."""
        if cell_of is None:
            cell_of = _nearest_cells(x, centroids, 1)[:, 0]
        members = torch.argsort(cell_of, stable=True)
        sizes = torch.bincount(cell_of, minlength=centroids.shape[0])
        return cls(members, sizes, torch.cumsum(sizes, 0) - sizes, x[members].to(dtype))


def _ivf_search(x: torch.Tensor, rows: torch.Tensor, c: int, centroids: torch.Tensor, nprobe: int,
                cells: _Cells) -> torch.Tensor:
    """Indices [len(rows), c] of the best rows among the members of each query's nprobe nearest
    cells, compared in the dtype of `cells.base` (-1 where fewer than c rows were scanned).

    Queries go in chunks; inside a chunk every probed cell is compared with all the queries that
    probe it in one dense product, whose rows land in the queries' (probe, member) slots of a
    [queries, nprobe, largest cell] table; one top-c over each query's whole table row ends the
    chunk (one selection over a long row costs a fraction of one per short cell block)."""
    dtype = cells.base.dtype
    sizes_list, starts_list, cap = cells.sizes.tolist(), cells.starts.tolist(), int(cells.sizes.max())
    out = torch.full((rows.numel(), c), -1, dtype=torch.long, device=x.device)
    step = max(1, min(rows.numel(), _SLOTS // (nprobe * cap)))
    buffer = torch.empty(step * nprobe * cap, dtype=dtype, device=x.device)  # one allocation: fresh pages cost
    num_cells = centroids.shape[0]
    for start in range(0, rows.numel(), step):
        chunk = rows[start:start + step]
        queries = x[chunk]
        probes = _nearest_cells(queries, centroids, nprobe)
        queries = queries.to(dtype)
        table = buffer[:chunk.numel() * nprobe * cap].view(chunk.numel(), nprobe, cap).fill_(float("-inf"))
        pairs = torch.argsort(probes.flatten(), stable=True)  # (query, probe) pairs grouped by cell
        pair_ends = torch.cumsum(torch.bincount(probes.flatten(), minlength=num_cells), 0).tolist()
        for cell in torch.unique(probes).tolist():
            group = pairs[pair_ends[cell - 1] if cell else 0:pair_ends[cell]]
            query, probe = group // nprobe, group % nprobe
            lo, size = starts_list[cell], sizes_list[cell]
            table[query, probe, :size] = queries[query] @ cells.base[lo:lo + size].T
        best = table.view(chunk.numel(), -1).topk(min(c, nprobe * cap), dim=1)
        slot = cells.starts[probes.gather(1, best.indices // cap)] + best.indices % cap
        found = cells.members[slot.clamp(max=x.shape[0] - 1)]
        out[start:start + chunk.numel(), :found.shape[1]] = torch.where(best.values > float("-inf"), found, -1)
    return out


def _mutual_pairs(x: torch.Tensor, rows: torch.Tensor, exact: np.ndarray, c: int, k1: int) -> Tuple[np.ndarray, np.ndarray]:
    """The rows listed in the exact top-k1 lists `exact` [R, k1] of `rows` (sorted, unique), and
    which entries of `exact` are k-reciprocal: the row is in its neighbour's exact top k1 too (the
    pairs the Jaccard distance is built from)."""
    listed = np.unique(exact)
    their = _reranked(x, torch.from_numpy(listed).to(x.device), _torch_flat_search(
        x, torch.from_numpy(listed).to(x.device), c), k1)
    return listed, (their[np.searchsorted(listed, exact)] == rows.cpu().numpy()[:, None, None]).any(2)


def _pairs_found(found: np.ndarray, found_listed: np.ndarray, listed: np.ndarray, rows: np.ndarray,
                 exact: np.ndarray) -> np.ndarray:
    """Which entries (i, j) of `exact` [R, k] a search finds from either side: j in i's list
    `found` [R, k], or i in j's list (`found_listed`, the lists of the `listed` rows), as the
    reverse neighbours (`add_reverse`) then give both."""
    forward = (found[:, :, None] == exact[:, None, :]).any(1)
    backward = (found_listed[np.searchsorted(listed, exact)] == rows[:, None, None]).any(2)
    return forward | backward


def _reranked(x: torch.Tensor, rows: torch.Tensor, candidates: torch.Tensor, k: int) -> np.ndarray:
    """The k candidates of each row with the highest float64 cosine (-1 pads ignored), as the
    clustering re-ranks them."""
    sim = torch.einsum("qd,qcd->qc", x[rows].double(), x[candidates.clamp(min=0)].double())
    sim[candidates < 0] = float("-inf")
    return candidates.gather(1, sim.topk(min(k, candidates.shape[1]), dim=1).indices).cpu().numpy()


@dataclass(frozen=True)
class IvfPlan:
    """How the approx backend searches this set: the cells' centroids [C, D] and the probes per
    query, or `fallback` to exact search. `sample_recall` (the share of the sampled rows'
    k-reciprocal neighbours that the candidates find) and `scanned` (the mean share of rows a
    query scans) are NaN when not measured."""

    centroids: torch.Tensor
    nprobe: int
    sample_recall: float = float("nan")
    scanned: float = float("nan")
    fallback: bool = False

    def stats(self) -> Dict[str, float]:
        """Scalars for the clustering's log: knn_cells, knn_nprobe, knn_fallback, and where measured
        knn_scanned and knn_sample_recall."""
        values = {"knn_cells": float(self.centroids.shape[0]), "knn_nprobe": float(self.nprobe),
                  "knn_fallback": float(self.fallback), "knn_scanned": self.scanned,
                  "knn_sample_recall": self.sample_recall}
        return {key: value for key, value in values.items() if not math.isnan(value)}


@dataclass(frozen=True)
class KnnSearch:
    """How candidate neighbours are found (config keys CLUSTER.KNN*).

    Args:
        backend: "auto", "faiss", "torch" (exact) or "approx" (inverted file).
        fp16: faiss on a GPU stores the features in float16 (half the device memory; candidates
            are still re-ranked in float64, but near-ties within float16 rounding may differ).
        nlist: approx: k-means cells before large ones are split; 0 derives round(sqrt(N)), at
            most N / 64 (cells of about sqrt(N) rows, large enough for dense products).
        nprobe: approx: cells scanned per query (32: about 32 sqrt(N) rows, 10% of them at N =
            100,000, 3.2% at 1,000,000); 0 chooses them for `target_recall`.
        precision: approx: dtype of the scan's products: "bfloat16" (the candidates only; they are
            re-ranked in float64), "float32", or "auto": bfloat16 where the device multiplies it
            natively (CUDA with bfloat16 support; CPUs with AVX512-BF16 or AMX), else float32.
        recall_sample: approx: rows whose scanned share is measured, and the first 200 of whose
            k-reciprocal neighbours choose the probes; on another sample the final recall@k1 is
            logged (0: none of these; nprobe must then be set).
        seed: approx: seed of the k-means samples and initialisations and of the recall samples.
        target_recall: approx with nprobe 0: the share of the sampled rows' k-reciprocal neighbours
            (within the exact top k1) that the candidates must find.
        max_cell: approx: cells of more than this many times the mean size are split (0: never).
        max_scan: approx with nprobe 0: when the target needs more than this share of the rows
            scanned per query, exact search runs instead (it is then the cheaper one).
    """

    backend: str = "auto"
    fp16: bool = False
    nlist: int = 0
    nprobe: int = 32
    precision: str = "auto"
    recall_sample: int = 1000
    seed: int = 0
    target_recall: float = 0.95
    max_cell: float = 4.0
    max_scan: float = 0.25

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"knn backend must be one of {', '.join(map(repr, BACKENDS))} (config key CLUSTER.KNN), "
                             f"got {self.backend!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"approx precision must be one of {', '.join(map(repr, PRECISIONS))} (config key "
                             f"CLUSTER.APPROX.PRECISION), got {self.precision!r}")
        for name in ("nlist", "nprobe", "recall_sample", "max_cell"):
            if getattr(self, name) < 0:
                raise ValueError(f"KnnSearch.{name} (config key CLUSTER.APPROX.{name.upper()}) must be >= 0, "
                                 f"got {getattr(self, name)}")
        for name in ("target_recall", "max_scan"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"KnnSearch.{name} (config key CLUSTER.APPROX.{name.upper()}) must lie in (0, 1], "
                                 f"got {getattr(self, name)}")
        if self.backend == "approx" and not self.nprobe and not self.recall_sample:
            raise ValueError("the approx search chooses its probes on CLUSTER.APPROX.RECALL_SAMPLE rows: set it "
                             "above 0, or fix CLUSTER.APPROX.NPROBE")

    @classmethod
    def from_config(cls, cluster_cfg) -> "KnnSearch":
        """From a config's CLUSTER node."""
        approx = cluster_cfg.APPROX
        return cls(backend=cluster_cfg.KNN, fp16=cluster_cfg.KNN_FP16, nlist=approx.NLIST, nprobe=approx.NPROBE,
                   precision=approx.PRECISION, recall_sample=approx.RECALL_SAMPLE, seed=approx.SEED,
                   target_recall=approx.TARGET_RECALL, max_cell=approx.MAX_CELL, max_scan=approx.MAX_SCAN)

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

    def cells(self, n: int) -> int:
        """k-means cells of the approx backend for n rows, before large cells are split."""
        return min(self.nlist or max(1, min(round(math.sqrt(n)), n // 64)), n)

    def plan(self, x: torch.Tensor, k1: int) -> Optional[IvfPlan]:
        """The approx search of the unit rows `x` (None for exact backends): cells trained and
        split, then probes fixed, or the first count in 1, 2, 4, ... that finds `target_recall`
        of the k-reciprocal neighbour pairs of min(recall_sample, 200) sampled rows (from either
        side, as the reverse neighbours complete the lists), or a fallback to exact search.
        k-reciprocal pairs (each in the other's exact top k1) are the only ones the Jaccard
        distance is built from: a noise image's top k1 is near-random rows that no cell structure
        routes to, and that the k-reciprocal test discards anyway."""
        if self.exact:
            return None
        n = x.shape[0]
        centroids = split_large_cells(x, kmeans(x, self.cells(n), seed=self.seed), self.max_cell, self.seed)
        num_cells = centroids.shape[0]
        if not self.recall_sample:
            return IvfPlan(centroids, min(self.nprobe, num_cells))
        cell_of = _nearest_cells(x, centroids, 1)[:, 0]
        sizes = torch.bincount(cell_of, minlength=num_cells)
        rows = torch.from_numpy(sample_rows(n, self.recall_sample, self.seed)).to(x.device)

        def scanned(nprobe: int) -> float:
            """The mean share of the rows that the sampled rows scan with `nprobe` probes."""
            return float(sizes[_nearest_cells(x[rows], centroids, nprobe)].sum(1).double().mean()) / n

        if self.nprobe:
            nprobe = min(self.nprobe, num_cells)
            return IvfPlan(centroids, nprobe, scanned=scanned(nprobe))
        k1 = min(k1, n)
        c = min(k1 + RERANK_MARGIN, n)  # as many candidates as the clustering re-ranks
        choice = torch.from_numpy(sample_rows(n, min(self.recall_sample, _MUTUAL_ROWS), self.seed)).to(x.device)
        exact = _reranked(x, choice, _torch_flat_search(x, choice, c), k1)
        listed, mutual = _mutual_pairs(x, choice, exact, c, k1)
        listed_rows = torch.from_numpy(listed).to(x.device)
        cells = _Cells.of(x, centroids, self.scan_dtype(x.device), cell_of)
        nprobe = 1
        while True:
            share = scanned(nprobe)
            if share > self.max_scan:
                logger.warning(f"approx kNN: finding {self.target_recall} of the k-reciprocal neighbours would take "
                               f"{nprobe} or more of {num_cells} cells per query, which scan {share:.0%} of the rows "
                               f"(more than CLUSTER.APPROX.MAX_SCAN, {self.max_scan:.0%}): exact search is the "
                               "cheaper here and runs instead")
                return IvfPlan(centroids, nprobe, scanned=share, fallback=True)
            found = _reranked(x, choice, _ivf_search(x, choice, c, centroids, nprobe, cells), k1)
            found_listed = _reranked(x, listed_rows, _ivf_search(x, listed_rows, c, centroids, nprobe, cells), k1)
            pairs = _pairs_found(found, found_listed, listed, choice.cpu().numpy(), exact)
            reached = float(pairs[mutual].mean()) if mutual.any() else 1.0
            if reached >= self.target_recall or nprobe == num_cells:
                return IvfPlan(centroids, nprobe, reached, share)
            nprobe = min(2 * nprobe, num_cells)

    def candidates(self, x: torch.Tensor, rows: torch.Tensor, c: int, plan: Optional[IvfPlan] = None) -> torch.Tensor:
        """Indices [len(rows), c] (on x's device) of about the c rows of the unit rows `x` with the
        highest inner product with each query row `rows`; -1 pads approx lists that found fewer.
        The approx backend needs its `plan`."""
        backend = self.resolve(x.device)
        if backend == "approx" and plan is None:
            raise ValueError("the approx search needs its plan: KnnSearch.plan(x, k1)")
        if backend == "approx" and plan.fallback:
            backend = KnnSearch().resolve(x.device)
        if backend == "torch":
            return _torch_flat_search(x, rows, c)
        if backend == "faiss":
            if x.device.type == "cuda" and not _faiss_gpu(x.device):
                logger.warning("faiss has no GPU support here: searching on the CPU (CLUSTER.KNN torch searches "
                               "on the GPU)")
            base = x.cpu().numpy()
            found = _faiss_flat_search(base, base[rows.cpu().numpy()], c, x.device, self.fp16)
            return torch.from_numpy(found).to(x.device)
        centroids = plan.centroids.to(x.device)
        return _ivf_search(x, rows, c, centroids, plan.nprobe, _Cells.of(x, centroids, self.scan_dtype(x.device)))

    def candidates_between(self, queries: torch.Tensor, base: torch.Tensor, c: int) -> torch.Tensor:
        """Indices [len(queries), c] of the c rows of `base` with the highest inner product with
        each row of `queries` (one device), searched exactly: with faiss or torch as `resolve`
        says, with the default exact backend where this one is approx."""
        backend = self.resolve(base.device)
        if backend == "approx":
            backend = KnnSearch().resolve(base.device)
        if backend == "faiss":
            found = _faiss_flat_search(base.cpu().numpy(), queries.cpu().numpy(), c, base.device, self.fp16)
            return torch.from_numpy(found).to(base.device)
        return _torch_flat_search(queries, torch.arange(queries.shape[0], device=queries.device), c, base)

    def describe(self, plan: Optional[IvfPlan] = None) -> str:
        if plan is None:
            return self.backend
        cells = plan.centroids.shape[0]
        if plan.fallback:
            return f"approx fell back to exact search ({cells} cells would scan {plan.scanned:.0%} of the rows)"
        chosen = "fixed" if math.isnan(plan.sample_recall) else \
            f"chosen for recall {plan.sample_recall:.3f} >= {self.target_recall} on {self.recall_sample} rows"
        scanned = "" if math.isnan(plan.scanned) else f", {plan.scanned:.1%} of the rows scanned per query"
        return (f"approx (inverted file, {cells} cells, {plan.nprobe} probed ({chosen}){scanned}, "
                f"{self.precision} scan, reverse neighbours)")

    def complete(self, nbr: np.ndarray, sim: np.ndarray, plan: Optional[IvfPlan] = None) -> Tuple[np.ndarray, np.ndarray]:
        """The final lists from every row's re-ranked candidates `nbr` [N, k] and their cosines `sim`
        (inf for the row itself): unchanged for exact search; for approx, `add_reverse`."""
        return (nbr, sim) if plan is None or plan.fallback else add_reverse(nbr, sim)


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
