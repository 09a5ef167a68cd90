"""Pseudo labels for fully unsupervised re-id: exact sparse k-reciprocal Jaccard distance,
DBSCAN and the split of every cluster into camera-aware proxies (METHOD.md section 3).

The Jaccard distance of Zhong et al. (CVPR 2017) is computed from neighbour lists and sparse
matrices only: memory grows with N times the neighbourhood size, never with N x N. Only pairs
whose distance is below a threshold are returned; pairs that share no expanded neighbour have
distance exactly 1 and are never stored.
"""
import contextlib
import functools
import logging
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
from scipy import sparse
from sklearn.cluster import DBSCAN
from sklearn.neighbors import sort_graph_by_row_values

from .distributed import all_gather_rows, collective_device, split_rows
from .knn import RERANK_MARGIN, IvfPlan, KnnSearch, recall, sample_rows

__all__ = [
    "NoClustersError",
    "knn",
    "jaccard_distance",
    "camera_proxies",
    "pseudo_labels",
    "CameraAwareK",
    "camera_aware_encoding",
]

logger = logging.getLogger("fastreid." + __name__)

ArrayLike = Union[np.ndarray, torch.Tensor]

# DBSCAN's rule is d <= eps; many pairs sit exactly on eps = 0.5 (s = 2/3), so the comparison
# carries a tolerance that absorbs float rounding on every machine (METHOD.md section 3, step 3).
EPS_TOLERANCE = 1e-6

_ROW_CHUNK = 1024  # rows per block in the neighbour-list steps
_RERANK_CHUNK = 1 << 19  # candidate coordinates per block of the float64 re-ranking (4 MB: stays in cache)
STAGES = ("knn", "jaccard", "dbscan", "proxies")
_FAILED = -2  # label broadcast by process 0 when it could not compute the labels
_PAIR_CHUNK = 1 << 15  # feature pairs per block when gathering cosines
_OVERLAP_CHUNK = 1 << 22  # (row, partner) products per block of the overlap step
# One verified (pair, partner entry) costs about this share of one overlap product, measured on
# the cluster benchmark's sets (docs/BENCHMARKS.md): a block of rows is verified when cheaper so.
_VERIFY_COST = 0.35
_TABLE_ROWS = 256  # rows per dense table of the verification (256 x their columns float64)
_STATS_ROWS = 2000  # sampled rows whose smallest Jaccard distances give the logged quantiles


class NoClustersError(RuntimeError):
    """DBSCAN found no cluster at all; the message holds distance statistics and a suggested eps."""


def _host_peak_gb(reset: bool = False) -> float:
    """This process's peak resident memory (Linux VmHWM) in GB, nan where unknown; `reset` starts
    a new peak from the current size."""
    try:
        if reset:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2 ** 20
    except OSError:
        pass
    return float("nan")


@contextlib.contextmanager
def _stage(name: str, values: Dict[str, float]) -> Iterator[None]:
    """Record a stage's wall time and peak host / CUDA memory in `values` (`<name>_seconds`, ...)."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    _host_peak_gb(reset=True)
    start = time.perf_counter()
    yield
    if cuda:
        torch.cuda.synchronize()
        values[f"{name}_device_gb"] = torch.cuda.max_memory_allocated() / 2 ** 30
    values[f"{name}_seconds"] = time.perf_counter() - start
    values[f"{name}_host_gb"] = _host_peak_gb()


def _normalised(features: ArrayLike) -> torch.Tensor:
    """`features` [N, D] with rows L2-normalised in float64, then stored as float32, on the
    features' device (CPU for numpy input); converted in blocks, so no float64 copy of the whole,
    and float32 features that already are exactly that are used as they are, without a copy.

    Every cosine below is the float64 dot product of these float32 rows (exact products,
    float64 sums), so the result does not depend on the search backend's rounding."""
    x = features.detach() if isinstance(features, torch.Tensor) else torch.from_numpy(np.asarray(features))
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"features must be a non-empty [N, D] matrix, got shape {tuple(x.shape)}")
    out = x if x.dtype == torch.float32 else torch.empty(x.shape, dtype=torch.float32, device=x.device)
    step = max(1, (1 << 24) // x.shape[1])
    for start in range(0, x.shape[0], step):
        block = x[start:start + step].to(torch.float64)
        if not torch.isfinite(block).all():
            bad = torch.nonzero(~torch.isfinite(x).all(1)).flatten()
            raise ValueError(f"features hold NaN or inf in {bad.numel()} rows (first: row {int(bad[0])})")
        norms = block.norm(dim=1, keepdim=True)
        if (norms == 0).any():
            raise ValueError(f"features row {start + int(torch.nonzero(norms[:, 0] == 0)[0])} is all zeros; "
                             "cosine is undefined")
        block = (block / norms).to(torch.float32)
        if out is x and not torch.equal(block, x[start:start + step]):
            out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
            out[:start] = x[:start]
        if out is not x:
            out[start:start + step] = block
    return out


def _search(knn_backend: Union[str, KnnSearch]) -> KnnSearch:
    return knn_backend if isinstance(knn_backend, KnnSearch) else KnnSearch(knn_backend)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise float64 dot products of float32 rows a [..., D] and b [..., D]."""
    return np.einsum("...d,...d->...", a, b, dtype=np.float64)


def _knn(x: torch.Tensor, k: int, search: KnnSearch, rows: Optional[torch.Tensor] = None,
         plan: Optional[IvfPlan] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Neighbour indices [R, k] (see `knn`) of the query `rows` (default: all) of the unit rows `x`,
    and their float64 cosines [R, k] (inf for the row itself); the approx backend needs its `plan`."""
    n = x.shape[0]
    rows = torch.arange(n, device=x.device) if rows is None else rows.to(x.device)
    k = min(k, n)
    c = min(k + RERANK_MARGIN, n)
    cand = search.candidates(x, rows, c, plan)
    # Every row lists itself first, even among exact duplicates.
    missing_self = ~(cand == rows[:, None]).any(1)
    cand[missing_self, -1] = rows[missing_self]
    out, out_sim = _reranked(x, rows, x, cand, k, within=True)
    short = torch.nonzero(out_sim[:, -1] == float("-inf")).flatten()
    if short.numel():  # an approx probe that saw fewer than k rows: search those exactly
        out[short], out_sim[short] = (torch.from_numpy(v) for v in _knn(x, k, KnnSearch("torch"), rows[short]))
    return out.numpy(), out_sim.numpy()


def _reranked(queries: torch.Tensor, rows: torch.Tensor, base: torch.Tensor, cand: torch.Tensor, k: int,
              within: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """The k best of the candidate rows `cand` [Q, c] of `base` for each query queries[rows[q]],
    by float64 cosine, decreasing, exact ties by ascending index: indices [Q, k] and cosines on
    the CPU (-inf for -1 candidates; when `within`, base is queries and each row itself gets inf)."""
    out = torch.empty((cand.shape[0], k), dtype=torch.long)
    out_sim = torch.empty((cand.shape[0], k), dtype=torch.float64)
    step = max(1, _RERANK_CHUNK // (cand.shape[1] * base.shape[1]))
    for start in range(0, cand.shape[0], step):
        block = cand[start:start + step]
        query = rows[start:start + step]
        sim = torch.einsum("qd,qcd->qc", queries[query].double(), base[block.clamp(min=0)].double())
        if within:
            sim[block == query[:, None]] = float("inf")
        sim[block < 0] = float("-inf")  # the approx search found fewer rows
        by_index = torch.sort(block, dim=1, stable=True).indices
        order = by_index.gather(1, torch.sort(-sim.gather(1, by_index), dim=1, stable=True).indices)[:, :k]
        out[start:start + block.shape[0]] = block.gather(1, order).cpu()
        out_sim[start:start + block.shape[0]] = sim.gather(1, order).cpu()
    return out, out_sim


def knn(features: ArrayLike, k: int, backend: Union[str, KnnSearch] = "auto") -> np.ndarray:
    """Indices [N, min(k, N)] of the k nearest rows of every row by cosine, the row itself first.

    The rest follow by decreasing cosine (float64 dot products of the L2-normalised rows rounded
    to float32); exact ties go by ascending index. `backend` (a name or a `KnnSearch`) finds the
    candidates on the device of `features` (see `lwtgpf.knn`): "faiss" (exact; on the GPU with
    faiss-gpu), "torch" (exact, chunked matmul + top-k), "approx" (inverted file, then every row
    also offered to the rows it lists), or "auto" (faiss when it can search there, else torch).
    The exact backends give the same lists: the top k + 10 candidates of each row are re-ranked
    exactly, so only near-ties at that depth could differ.
    """
    if k < 1:
        raise ValueError(f"knn needs k >= 1, got {k}")
    search = _search(backend)
    x = _normalised(features)
    plan = search.plan(x, k)
    return search.complete(*_knn(x, k, search, plan=plan), plan)[0]


def knn_recall(x: torch.Tensor, nbr: np.ndarray, k1: int, search: KnnSearch) -> float:
    """Recall@k1 of the neighbour lists `nbr` [N, >= k1] on `search.recall_sample` rows of `x`,
    against exact search (torch on x's device)."""
    sample = sample_rows(x.shape[0], search.recall_sample, search.seed + 1)  # not the rows that chose the probes
    exact = _knn(x, k1, KnnSearch("torch"), torch.from_numpy(sample))[0]
    return recall(nbr[sample, :k1], exact)


def _reciprocal(nbr: np.ndarray, m: int) -> np.ndarray:
    """[N, m] copy of nbr[:, :m] with -1 where j in N(i, m) does not have i in N(j, m) (and where
    nbr holds -1: lists padded where fewer rows exist)."""
    nm = nbr[:, :m]
    out = np.empty_like(nm)
    for start in range(0, nm.shape[0], _ROW_CHUNK):
        block = nm[start:start + _ROW_CHUNK]
        ids = np.arange(start, start + block.shape[0])[:, None, None]
        out[start:start + block.shape[0]] = np.where((nm[block] == ids).any(-1) & (block >= 0), block, -1)
    return out


def _expanded_sets(nbr: np.ndarray, k1: int) -> sparse.csr_matrix:
    """Boolean structure of R*(i) as a CSR matrix (data unset), columns sorted in each row."""
    n = nbr.shape[0]
    r_all = _reciprocal(nbr, k1)
    h_all = _reciprocal(nbr, int(np.round(k1 / 2)) + 1)
    h_size = (h_all >= 0).sum(1)
    rows, cols = [], []
    for start in range(0, n, _ROW_CHUNK):
        r = r_all[start:start + _ROW_CHUNK]  # R(i), -1 padded
        valid_r = r >= 0
        h = h_all[np.where(valid_r, r, 0)]  # H(j) for j in R(i): [c, k1, h1]
        in_r = ((h[..., None] == r[:, None, None, :]) & (h[..., None] >= 0)).any(-1)
        # |H(j) & R(i)| > 2/3 |H(j)|, in integers
        take = valid_r & (3 * in_r.sum(-1) > 2 * h_size[np.where(valid_r, r, 0)])
        cand = np.concatenate([r, np.where(take[..., None], h, -1).reshape(r.shape[0], -1)], axis=1)
        cand.sort(axis=1)
        cand[:, 1:][cand[:, 1:] == cand[:, :-1]] = -1
        row_ids, slot = np.nonzero(cand >= 0)
        rows.append(row_ids + start)
        cols.append(cand[row_ids, slot])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    return sparse.csr_matrix((np.ones(cols.size), cols, indptr), shape=(n, n))


def _encoding(x: np.ndarray, nbr: np.ndarray, nbr_sim: np.ndarray, k1: int, k2: int) -> sparse.csr_matrix:
    """V' [N, N]: softmax of -(2 - 2 cos) over R*(i), then the mean over N(i, k2), float64."""
    n = x.shape[0]
    v = _expanded_sets(nbr, k1)
    rows = np.repeat(np.arange(n), np.diff(v.indptr))
    # Almost every member of R*(i) is among i's searched neighbours, whose cosines are known.
    known = np.arange(n)[:, None] * n + nbr
    known_sim = np.where(nbr == np.arange(n)[:, None], _dot(x, x)[:, None], nbr_sim).ravel()
    order = np.argsort(known, axis=None)
    known, known_sim = known.ravel()[order], known_sim[order]
    wanted = rows * n + v.indices
    pos = np.minimum(np.searchsorted(known, wanted), known.size - 1)
    found = known[pos] == wanted
    cos = np.where(found, known_sim[pos], 0.0)
    missing = np.flatnonzero(~found)
    for start in range(0, missing.size, _PAIR_CHUNK):
        idx = missing[start:start + _PAIR_CHUNK]
        cos[idx] = _dot(x[rows[idx]], x[v.indices[idx]])
    v.data = np.exp(2.0 * cos - 2.0)  # exp(-(2 - 2cos)) lies in [e^-4, 1]: no overflow
    v.data /= np.repeat(np.add.reduceat(v.data, v.indptr[:-1]), np.diff(v.indptr))
    k2 = nbr[:, :k2].shape[1]
    q = sparse.csr_matrix(
        (np.ones(n * k2), nbr[:, :k2].ravel(), np.arange(0, n * k2 + 1, k2)), shape=(n, n))
    vq = (q @ v).tocsr()
    vq.data /= k2
    return vq


@dataclass(frozen=True)
class CameraAwareK:
    """Neighbourhood sizes of the camera-aware Jaccard distance (`camera_aware_encoding`):
    k-reciprocal neighbours among the image's own camera (k1_intra) and among the other cameras
    (k1_inter), query expansion over k2_intra own-camera and k2_inter other-camera neighbours."""
    k1_intra: int = 5
    k1_inter: int = 20
    k2_intra: int = 2
    k2_inter: int = 4

    def __post_init__(self):
        for name in ("k1_intra", "k1_inter", "k2_intra", "k2_inter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"CLUSTER.CAMERA_JACCARD.{name.upper()} must be an integer >= 1, got {value!r}")

    @classmethod
    def from_config(cls, cluster_cfg) -> Optional["CameraAwareK"]:
        """The sizes under CLUSTER.CAMERA_JACCARD, None when it is off."""
        c = cluster_cfg.CAMERA_JACCARD
        return cls(c.K1_INTRA, c.K1_INTER, c.K2_INTRA, c.K2_INTER) if c.ENABLED else None


def _camera_knn(x: torch.Tensor, cams: np.ndarray, k_intra: int, k_inter: int,
                search: KnnSearch) -> Tuple[np.ndarray, ...]:
    """Every row's neighbours within its own camera ([N, k_intra], itself first) and in the other
    cameras ([N, k_inter]), each ordered as `knn` orders them, -1 padded where a camera has
    fewer rows, with their float64 cosines (inf for the row itself, -inf for pads)."""
    n = x.shape[0]
    intra, inter = np.full((n, k_intra), -1), np.full((n, k_inter), -1)
    intra_sim, inter_sim = np.full((n, k_intra), -np.inf), np.full((n, k_inter), -np.inf)
    exact = search if search.exact else KnnSearch()
    for cam in np.unique(cams):
        own, other = np.flatnonzero(cams == cam), np.flatnonzero(cams != cam)
        queries = x[torch.from_numpy(own).to(x.device)]
        k = min(k_intra, own.size)
        nbr, sim = _knn(queries, k, exact)
        intra[own, :k], intra_sim[own, :k] = own[nbr], sim
        if other.size:
            base = x[torch.from_numpy(other).to(x.device)]
            k = min(k_inter, other.size)
            cand = exact.candidates_between(queries, base, min(k + RERANK_MARGIN, other.size))
            nbr, sim = _reranked(queries, torch.arange(own.size, device=x.device), base, cand, k, within=False)
            inter[own, :k], inter_sim[own, :k] = other[nbr.numpy()], sim.numpy()
    return intra, intra_sim, inter, inter_sim


def _camera_lists(x: torch.Tensor, cams: ArrayLike, k: CameraAwareK, search: KnnSearch) -> Tuple[np.ndarray, ...]:
    """`_camera_knn` lists as long as `camera_aware_encoding` needs them for sizes `k`."""
    cam_ids = np.asarray(cams.cpu() if isinstance(cams, torch.Tensor) else cams)
    return _camera_knn(x, cam_ids, max(k.k1_intra + 1, k.k2_intra), max(k.k1_inter + 1, k.k2_inter), search)


def camera_aware_encoding(x: np.ndarray, intra: np.ndarray, intra_sim: np.ndarray, inter: np.ndarray,
                          inter_sim: np.ndarray, k: CameraAwareK) -> sparse.csr_matrix:
    """V' [N, N] of the camera-aware Jaccard distance (CA-Jaccard, Chen et al., CVPR 2024;
    docs/METHOD.md section 9) from the lists of `_camera_knn` (at least k1 + 1 columns each):
    R(i) = the k-reciprocal neighbours of i among its own camera (m = k1_intra + 1, i itself
    counted) united with those among the other cameras (m = k1_inter + 1), with no further
    expansion; V[i, j] = softmax over R(i) of -(2 - 2 cos(i, j)); V'[i] = the mean of V[j] over
    the first k2_intra own-camera neighbours (i first) and the first k2_inter other-camera ones."""
    n = x.shape[0]
    own_sim = np.where(intra == np.arange(n)[:, None], _dot(x, x)[:, None], intra_sim)
    lists = np.concatenate([intra[:, :k.k1_intra + 1], inter[:, :k.k1_inter + 1]], axis=1)
    sims = np.concatenate([own_sim[:, :k.k1_intra + 1], inter_sim[:, :k.k1_inter + 1]], axis=1)
    members = np.concatenate([_reciprocal(intra, k.k1_intra + 1), _reciprocal(inter, k.k1_inter + 1)], axis=1)
    keep = members >= 0  # the two sets are disjoint: one camera, the others
    weights = np.exp(2.0 * sims[keep] - 2.0)  # exp(-(2 - 2cos)) lies in [e^-4, 1]
    v = sparse.csr_matrix((weights, lists[keep], np.r_[0, np.cumsum(keep.sum(1))]), shape=(n, n))
    v.sum_duplicates()
    v.data /= np.repeat(np.add.reduceat(v.data, v.indptr[:-1]), np.diff(v.indptr))
    expand = np.concatenate([intra[:, :k.k2_intra], inter[:, :k.k2_inter]], axis=1)
    valid = expand >= 0
    counts = valid.sum(1)
    q = sparse.csr_matrix((np.repeat(1.0 / counts, counts), expand[valid], np.r_[0, np.cumsum(counts)]),
                          shape=(n, n))
    return (q @ v).tocsr()


def _check_k(k1: int, k2: int) -> None:
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k-reciprocal neighbourhoods need k1 >= 1 and k2 >= 1, got k1={k1}, k2={k2}")


def _spans(indptr: np.ndarray, ids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Where the stored entries of the rows (CSR) or columns (CSC) `ids` of a matrix with `indptr`
    lie, one row's after another's, and how many each row holds."""
    cnt = np.diff(indptr)[ids]
    return np.repeat(indptr[ids] - (np.cumsum(cnt) - cnt), cnt) + np.arange(cnt.sum()), cnt


def _overlaps(rows: sparse.csr_matrix, columns: sparse.csc_matrix) -> sparse.csr_matrix:
    """s [R, N]: sum_k min(rows[r, k], V'[j, k]) for every j sharing a column with row r, from
    V' as CSC (`columns`): every stored rows[r, k] is expanded against column k's entries (an
    inverted index) and the minima are summed per (r, j)."""
    offsets, cnt = _spans(columns.indptr, rows.indices)
    mins = np.minimum(np.repeat(rows.data, cnt), columns.data[offsets])
    # The products come out grouped by row already: build the CSR matrix directly and let scipy
    # sort each row and sum the duplicate (r, j) entries.
    pair_ptr = np.zeros(rows.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.add.reduceat(cnt, rows.indptr[:-1]), out=pair_ptr[1:])
    s = sparse.csr_matrix((mins, columns.indices[offsets], pair_ptr), shape=(rows.shape[0], columns.shape[0]))
    s.sum_duplicates()
    return s


def _distance(s: np.ndarray) -> np.ndarray:
    """Jaccard distance from the overlap s = sum_k min(V'[i, k], V'[j, k]) (rows of V' sum to 1)."""
    return np.maximum(1.0 - s / (2.0 - s), 0.0)


def _prefixes(vq: sparse.csr_matrix, threshold: float) -> sparse.csr_matrix:
    """Every row's prefix under one global column order (rarest column first): its first entries
    in that order, up to the last one from which the row still holds mass >= `threshold`.

    Two rows with overlap s >= threshold share a column that lies in both prefixes (prefix
    filtering, Chaudhuri et al., ICDE 2006; Bayardo et al., WWW 2007): otherwise all their shared
    columns lie after the first one, which one of them has outside its prefix, where that row holds
    less than `threshold`. Rare columns first keep the candidate pairs few: a hub column, stored
    by hundreds of rows, lies in few prefixes."""
    n = vq.shape[0]
    counts = np.bincount(vq.indices, minlength=n)
    rank = np.empty(n, dtype=np.int64)
    rank[np.lexsort((np.arange(n), counts))] = np.arange(n)
    lengths = np.diff(vq.indptr)
    rows = np.repeat(np.arange(n), lengths)
    order = np.lexsort((rank[vq.indices], rows))
    tail = np.cumsum(vq.data[order][::-1])[::-1]  # mass from each entry to the end of the whole array
    after_row = np.append(tail[vq.indptr[1:-1]], 0.0)
    keep = tail - np.repeat(after_row, lengths) >= threshold
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows[keep], minlength=n), out=indptr[1:])
    return sparse.csr_matrix((np.ones(int(keep.sum()), dtype=np.int32), vq.indices[order][keep], indptr),
                             shape=(n, n))


def _verified(vq: sparse.csr_matrix, start: int, stop: int, rows: np.ndarray, cols: np.ndarray,
              slot: np.ndarray) -> np.ndarray:
    """The overlap s of every candidate pair (start + rows, cols) of the rows
    start..stop: row i's V' entries sit in a dense table of the columns the block stores, and
    every stored V'[j, k] of the partner is looked up there. `slot` [N] is all zeros (the table's
    column of zeros) and is left so."""
    lo, hi = vq.indptr[start], vq.indptr[stop]
    stored = vq.indices[lo:hi]
    used = np.unique(stored)
    slot[used] = np.arange(1, used.size + 1)
    width = used.size + 1
    table = np.zeros((stop - start) * width)
    table[np.repeat(np.arange(stop - start), np.diff(vq.indptr[start:stop + 1])) * width + slot[stored]] = vq.data[lo:hi]
    offsets, cnt = _spans(vq.indptr, cols)
    mins = np.minimum(table[np.repeat(rows * width, cnt) + slot[vq.indices[offsets]]], vq.data[offsets])
    slot[used] = 0
    return np.add.reduceat(mins, np.cumsum(cnt) - cnt) if cnt.size else np.zeros(0)


def _candidate_blocks(vq: sparse.csr_matrix, prefixes: sparse.csr_matrix, partners: sparse.csr_matrix, start: int,
                      stop: int, products: int, slot: np.ndarray) -> Optional[List[Tuple[np.ndarray, ...]]]:
    """The pairs of rows start..stop with d from their prefix-filtered candidates, as (row - start,
    partner, d) parts; None when verifying them would cost more than the block's `products`
    (the expansion's (entry, column entry) products)."""
    pairs = (prefixes[start:stop] @ partners).tocoo()
    lengths = np.diff(vq.indptr)
    if lengths[pairs.col].sum() * _VERIFY_COST >= products:
        return None
    blocks = []
    for lo in range(0, stop - start, _TABLE_ROWS):
        first, last = np.searchsorted(pairs.row, [lo, lo + _TABLE_ROWS])
        rows, cols = pairs.row[first:last], pairs.col[first:last]
        s = _verified(vq, start + lo, min(start + lo + _TABLE_ROWS, stop), rows - lo, cols, slot)
        blocks.append((rows, cols, _distance(s)))
    return blocks


def _jaccard_graph(vq: sparse.csr_matrix, max_distance: float) -> sparse.csr_matrix:
    """Sparse Jaccard graph (pairs with d < max_distance, the diagonal stored as 0) from V'
    (`_encoding`), exact. Below max_distance 1 the rows go in blocks, each the cheaper way:
    candidate pairs from prefix filtering (`_prefixes`), each verified (`_verified`); or all pairs
    that share a column (`_overlaps`), whose count grows with the square of the hub columns."""
    if not max_distance > 0:
        raise ValueError(f"max_distance must be > 0, got {max_distance}")
    n = vq.shape[0]
    vq.sort_indices()
    vc = vq.tocsc()
    vc.indices = vc.indices.astype(np.int32)  # halves the traffic of the per-row sorts
    products = np.cumsum(np.add.reduceat(np.diff(vc.indptr)[vq.indices], vq.indptr[:-1]))
    # d < max_distance needs s > 2 (1 - max_distance) / (2 - max_distance); the margin keeps
    # pairs that float rounding of the prefix masses could drop
    threshold = 2.0 * (1.0 - max_distance) / (2.0 - max_distance) - 1e-9
    prefixes = _prefixes(vq, threshold) if threshold > 0 else None
    partners = prefixes.T.tocsr() if prefixes is not None else None
    slot = np.zeros(n, dtype=np.int64)
    indptr, indices, data = [np.zeros(1, dtype=np.int64)], [], []
    start = 0
    while start < n:
        done = products[start - 1] if start else 0
        stop = max(int(np.searchsorted(products, done + _OVERLAP_CHUNK, side="right")), start + 1)
        blocks = None if prefixes is None else \
            _candidate_blocks(vq, prefixes, partners, start, stop, products[stop - 1] - done, slot)
        if blocks is None:
            s = _overlaps(vq[start:stop], vc)
            pair_rows, pair_cols, d = np.repeat(np.arange(stop - start), np.diff(s.indptr)), s.indices, _distance(s.data)
        else:
            pair_rows, pair_cols, d = (np.concatenate(part) for part in zip(*blocks))
        d[pair_rows + start == pair_cols] = 0.0
        keep = d < max_distance
        indptr.append(indptr[-1][-1] + np.cumsum(np.bincount(pair_rows[keep], minlength=stop - start)))
        indices.append(pair_cols[keep])
        data.append(d[keep])
        start = stop
    graph = sparse.csr_matrix((np.concatenate(data), np.concatenate(indices), np.concatenate(indptr)), shape=(n, n))
    graph.sort_indices()
    return graph


def _smallest_distances(vq: sparse.csr_matrix, rows: np.ndarray, ranks: int) -> np.ndarray:
    """[len(rows), ranks]: each of `rows`' `ranks` smallest Jaccard distances counting itself (1.0
    where a row shares columns with fewer rows), from all the rows sharing a column with it."""
    s = _overlaps(vq[rows], vq.tocsc())
    local = np.repeat(np.arange(rows.size), np.diff(s.indptr))
    d = _distance(s.data)
    d[s.indices == rows[local]] = 0.0
    ordered = d[np.argsort(local * 2.0 + d)]  # by row, then by d in [0, 1]
    out = np.ones((rows.size, ranks))
    for rank in range(ranks):
        pos = s.indptr[:-1] + rank
        has = pos < s.indptr[1:]
        out[has, rank] = ordered[pos[has]]
    return out


def jaccard_distance(
    features: ArrayLike, k1: int = 20, k2: int = 6, max_distance: float = 1.0,
    knn_backend: Union[str, KnnSearch] = "auto", cams: Optional[ArrayLike] = None,
    camera_aware: Optional[CameraAwareK] = None,
) -> sparse.csr_matrix:
    """k-reciprocal Jaccard distance (Zhong et al., CVPR 2017) as a sparse [N, N] CSR matrix.

    Holds exactly the pairs with d < `max_distance` (0 < max_distance <= 1); the diagonal and
    any other zero distance are stored as explicit zeros, as DBSCAN on a sparse graph only sees
    stored pairs. Follows METHOD.md section 3, step 2: N(i, m) counts i first; R uses m = k1,
    H uses m = round(k1 / 2) + 1; overlaps are summed in float64. `features` [N, D] (numpy or
    torch, any device) are L2-normalised here; neighbours come from `knn(..., knn_backend)`.
    With `camera_aware` (and the images' `cams` [N]) it is the camera-aware distance
    (`camera_aware_encoding`) instead, and k1, k2 are not used.
    """
    _check_k(k1, k2)
    x = _normalised(features)
    search = _search(knn_backend)
    if camera_aware is not None:
        if cams is None or len(cams) != x.shape[0]:
            raise ValueError(f"the camera-aware Jaccard distance needs one camera id per row: got {x.shape[0]} "
                             f"rows and {'no' if cams is None else len(cams)} camera ids")
        lists = _camera_lists(x, cams, camera_aware, search)
        return _jaccard_graph(camera_aware_encoding(x.cpu().numpy(), *lists, camera_aware), max_distance)
    plan = search.plan(x, k1)
    nbr, nbr_sim = search.complete(*_knn(x, max(k1, k2), search, plan=plan), plan)
    return _jaccard_graph(_encoding(x.cpu().numpy(), nbr, nbr_sim, k1, k2), max_distance)


def camera_proxies(cluster_labels: ArrayLike, cams: ArrayLike) -> np.ndarray:
    """Split every cluster by camera: proxy ids [N] int64 numbered cluster by cluster (ascending),
    cameras ascending inside a cluster; outliers (label -1) stay -1."""
    labels = np.asarray(cluster_labels.cpu() if isinstance(cluster_labels, torch.Tensor) else cluster_labels)
    cams = np.asarray(cams.cpu() if isinstance(cams, torch.Tensor) else cams)
    if labels.ndim != 1 or cams.shape != labels.shape:
        raise ValueError(
            f"cluster_labels and cams must be 1-D of the same length, got shapes {labels.shape} and {cams.shape}")
    labels, cams = labels.astype(np.int64), cams.astype(np.int64)
    proxies = np.full(labels.shape, -1, dtype=np.int64)
    keep = labels >= 0
    if keep.any():
        cam_ids = cams[keep] - cams[keep].min()
        key = labels[keep] * (int(cam_ids.max()) + 1) + cam_ids
        proxies[keep] = np.unique(key, return_inverse=True)[1].reshape(-1)
    return proxies


def _quantiles(values: np.ndarray) -> Dict[str, float]:
    q = np.quantile(values, [0.1, 0.5, 0.9])
    return {"p10": float(q[0]), "p50": float(q[1]), "p90": float(q[2])}


def _check_clustering(eps: float, min_samples: int, k1: int, k2: int) -> None:
    if not 0 < eps < 1:
        raise ValueError(f"eps must lie in (0, 1) for the Jaccard distance (config key CLUSTER.EPS), got {eps}")
    if min_samples < 1:
        raise ValueError(f"min_samples must be >= 1 (config key CLUSTER.MIN_SAMPLES), got {min_samples}")
    _check_k(k1, k2)


def pseudo_labels(
    features: ArrayLike,
    cams: ArrayLike,
    eps: float = 0.5,
    min_samples: int = 4,
    k1: int = 20,
    k2: int = 6,
    knn_backend: Union[str, KnnSearch] = "auto",
    stats: Optional[Dict[str, float]] = None,
    distributed: bool = False,
    camera_aware: Optional[CameraAwareK] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Cluster ids and camera-aware proxy ids [N] int64 (-1 for outliers) of `features` [N, D].

    With `camera_aware` the Jaccard distance is the camera-aware one (`camera_aware_encoding`, an
    addition beyond the original; k1 and k2 then only name the logged recall), its neighbours
    searched exactly on process 0.

    DBSCAN(eps, min_samples) runs on the sparse Jaccard graph; pairs with d <= eps + 1e-6 are
    neighbours, so exact ties at eps count on every machine. Raises `NoClustersError`, with
    distance statistics and a suggested eps, when no cluster forms. Neighbours are searched on
    the device of `features` with `knn_backend`, a backend name or a `lwtgpf.knn.KnnSearch`
    (see `knn`).

    `distributed=True` under a process group of several processes makes this a collective call:
    every process passes the same `features` (on its own device) and `cams`, searches the
    neighbours of its contiguous share of the rows against all rows (the approx backend's cells
    are trained on process 0 and broadcast), and only the neighbour lists travel to process 0,
    which computes the Jaccard graph, DBSCAN and the proxies; the labels are broadcast and equal
    those of one process. When process 0 fails, the others raise too instead of waiting.

    When `stats` is a dict it receives (on process 0) flat float scalars for logging (e.g. to
    TensorBoard): num_clusters, num_outliers, num_proxies, outlier_ratio, num_pairs (neighbour
    pairs, self excluded), seconds, and the 10/50/90% quantiles, over 2,000 sampled points (all
    of them when fewer), of each point's nearest non-self distance (nn_dist_p10 ...) and of its
    core distance, the distance to its min_samples-th nearest point counting itself, which must be
    <= eps for a core point (core_dist_p10 ...);
    per stage (knn, jaccard, dbscan, proxies) its seconds and peak memory in GB
    (`<stage>_seconds`, `<stage>_host_gb`, on Linux, and `<stage>_device_gb` of torch's CUDA
    allocator); with the approx backend (`KnnSearch.plan`) knn_cells, knn_nprobe, knn_fallback,
    knn_scanned (the mean share of rows a query scans) and knn_sample_recall (the share of
    the sampled k-reciprocal pairs found, when the probes were chosen for TARGET_RECALL), and knn_recall, the recall@k1 of the final lists
    on another sample against exact search. The same line is logged on logger "fastreid.lwtgpf.clustering".
    """
    _check_clustering(eps, min_samples, k1, k2)
    n = len(features)
    if len(cams) != n:
        raise ValueError(f"got {n} features but {len(cams)} camera ids")
    shared = distributed and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    rank, world = (dist.get_rank(), dist.get_world_size()) if shared else (0, 1)
    t0 = time.perf_counter()
    values: Dict[str, float] = {}
    search = _search(knn_backend)
    x = _normalised(features)
    k, share = min(max(k1, k2), n), split_rows(n, world)
    plan, nbr, nbr_sim = None, None, None
    if camera_aware is None:
        with _stage("knn", values):
            # the approx search's parts are timed too: its plan (k-means, splits, choosing the probes),
            # the search with the re-ranking, and the reverse neighbours
            planned = time.perf_counter()
            plan = search.plan(x, k1) if rank == 0 else None
            if shared and not search.exact:
                plan = _broadcast_plan(plan, x)
            searched = time.perf_counter()
            values["knn_plan_seconds"] = searched - planned
            rows = torch.arange(share[rank].start, share[rank].stop)
            nbr, nbr_sim = _knn(x, k, search, rows, plan) if rows.numel() else \
                (np.zeros((0, k), dtype=np.int64), np.zeros((0, k)))
            if shared:
                nbr = all_gather_rows(torch.from_numpy(nbr), len(share[0])).numpy()
                nbr_sim = all_gather_rows(torch.from_numpy(nbr_sim), len(share[0])).numpy()
            completed = time.perf_counter()
            values["knn_search_seconds"] = completed - searched
            if rank == 0:
                nbr, nbr_sim = search.complete(nbr, nbr_sim, plan)
            values["knn_reverse_seconds"] = time.perf_counter() - completed
        if plan is not None and rank == 0:
            values.update(plan.stats())
            logger.info(search.describe(plan))
    labels, error = None, None
    if rank == 0:
        try:
            if camera_aware is not None:  # searched exactly, on process 0 alone
                with _stage("knn", values):
                    lists = _camera_lists(x, cams, camera_aware, search)
            if plan is not None and not plan.fallback and search.recall_sample:
                values["knn_recall"] = knn_recall(x, nbr, k1, search)
            x = x.cpu().numpy()
            encode = (functools.partial(_encoding, x, nbr, nbr_sim, k1, k2) if camera_aware is None
                      else functools.partial(camera_aware_encoding, x, *lists, camera_aware))
            labels = _labels_from_encoding(encode, n, cams, eps, min_samples, k1, values, t0, stats)
        except Exception as e:
            if not shared:
                raise
            error = e  # the other processes wait for the labels: tell them first
    del x, nbr, nbr_sim
    return _broadcast_labels(labels, n, error) if shared else labels


def _broadcast_plan(plan: Optional[IvfPlan], x: torch.Tensor) -> IvfPlan:
    """Process 0's approx plan on every process (the centroids on each one's device)."""
    device = collective_device(x.device)
    header = torch.zeros(5, dtype=torch.float64)
    if plan is not None:
        header = torch.tensor([plan.centroids.shape[0], plan.nprobe, plan.fallback, plan.sample_recall, plan.scanned],
                              dtype=torch.float64)
    header = header.to(device)
    dist.broadcast(header, 0)
    cells, nprobe, fallback, sample_recall, scanned = header.tolist()
    centroids = plan.centroids.to(device) if plan is not None else torch.empty((int(cells), x.shape[1]), device=device)
    dist.broadcast(centroids, 0)
    return IvfPlan(centroids.to(x.device), int(nprobe), sample_recall, scanned, bool(fallback))


def _broadcast_labels(labels: Optional[Tuple[np.ndarray, np.ndarray]], n: int,
                      error: Optional[Exception]) -> Tuple[np.ndarray, np.ndarray]:
    """Process 0's (cluster, proxy) labels on every process; raises on every process when
    process 0 had none (`error` there)."""
    message = torch.full((2, n), _FAILED, dtype=torch.long)
    if labels is not None:
        message = torch.from_numpy(np.stack(labels))
    message = message.to(collective_device(torch.device("cpu")))
    dist.broadcast(message, 0)
    if error is not None:
        raise error
    message = message.cpu().numpy()
    if message[0, 0] == _FAILED:
        raise RuntimeError("process 0 failed to compute the pseudo labels; its log says why")
    return message[0], message[1]


def _labels_from_encoding(
    encode: Callable[[], sparse.csr_matrix], n: int, cams: ArrayLike, eps: float, min_samples: int, k1: int,
    values: Dict[str, float], start_time: float, stats: Optional[Dict[str, float]] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """The part of `pseudo_labels` after the neighbour search: Jaccard graph, DBSCAN and proxies
    of N rows whose V' `encode()` returns (`_encoding` or `camera_aware_encoding`). `values` holds
    the statistics gathered so far, `start_time` the call's perf_counter start."""
    radius = eps + EPS_TOLERANCE
    with _stage("jaccard", values):
        vq = encode()
        graph = _jaccard_graph(vq, radius)
        sampled = sample_rows(n, _STATS_ROWS, 0)
        smallest = _smallest_distances(vq, sampled, max(min_samples, 2))
        del vq
    nearest, core = smallest[:, 1], smallest[:, min_samples - 1]
    num_pairs = graph.nnz - n
    with _stage("dbscan", values):
        # sklearn would sort each row itself, with a warning.
        graph = sort_graph_by_row_values(graph, copy=False, warn_when_not_sorted=False)
        labels = DBSCAN(eps=radius, min_samples=min_samples, metric="precomputed").fit_predict(graph)
        labels = labels.astype(np.int64)
    del graph
    num_clusters = int(labels.max()) + 1
    values.update({f"nn_dist_{k}": v for k, v in _quantiles(nearest).items()})
    values.update({f"core_dist_{k}": v for k, v in _quantiles(core).items()})
    if num_clusters == 0:
        usable = np.sort(core[core < 1.0])
        if usable.size:
            suggested = np.ceil(usable[(usable.size - 1) // 10] * 100) / 100
            share = 100 * (usable.size // 10 + 1) / sampled.size
            hint = (f"eps = {suggested:.2f} would make at least {share:.1f}% of the points core points"
                    if sampled.size == n else f"eps = {suggested:.2f} would make about {share:.1f}% of the "
                    f"points core points (measured on {sampled.size} sampled points)")
        else:
            hint = ("no eps < 1 can form a cluster: no point shares its neighbourhood with min_samples - 1 "
                    "others; lower min_samples or raise k1")
        raise NoClustersError(
            f"DBSCAN(eps={eps}, min_samples={min_samples}) found no cluster among {n} samples "
            f"({num_pairs} neighbour pairs within eps). Jaccard distance to the nearest other sample: "
            f"p10 {values['nn_dist_p10']:.3f}, median {values['nn_dist_p50']:.3f}, p90 {values['nn_dist_p90']:.3f}; "
            f"to the min_samples-th nearest (core distance): p10 {values['core_dist_p10']:.3f}, "
            f"median {values['core_dist_p50']:.3f}, p90 {values['core_dist_p90']:.3f}. Suggestion: {hint} "
            f"(config key CLUSTER.EPS).")
    with _stage("proxies", values):
        proxies = camera_proxies(labels, cams)
    num_outliers = int((labels < 0).sum())
    values.update(
        num_clusters=float(num_clusters), num_outliers=float(num_outliers), num_proxies=float(proxies.max() + 1),
        outlier_ratio=num_outliers / n, num_pairs=float(num_pairs), seconds=time.perf_counter() - start_time)
    logger.info(
        "Pseudo labels: %d clusters, %d proxies, %d outliers of %d (%.1f%%); nearest Jaccard distance "
        "p10/50/90 %.3f/%.3f/%.3f, core distance %.3f/%.3f/%.3f; %.1fs",
        num_clusters, int(values["num_proxies"]), num_outliers, n, 100 * values["outlier_ratio"],
        values["nn_dist_p10"], values["nn_dist_p50"], values["nn_dist_p90"],
        values["core_dist_p10"], values["core_dist_p50"], values["core_dist_p90"], values["seconds"])
    logger.info("Pseudo-label stages: " + ", ".join(
        f"{stage} {values[stage + '_seconds']:.1f}s / {values.get(stage + '_host_gb', float('nan')):.2f} GB"
        for stage in STAGES) + ("" if "knn_recall" not in values else f"; kNN recall@{k1} {values['knn_recall']:.4f}"))
    if stats is not None:
        stats.update(values)
    return labels, proxies
