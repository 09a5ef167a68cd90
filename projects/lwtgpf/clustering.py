"""Pseudo labels for fully unsupervised re-id: exact sparse k-reciprocal Jaccard distance,
DBSCAN and the split of every cluster into camera-aware proxies (METHOD.md section 3).

The Jaccard distance of Zhong et al. (CVPR 2017) is computed from neighbour lists and sparse
matrices only: memory grows with N times the neighbourhood size, never with N x N. Only pairs
whose distance is below a threshold are returned; pairs that share no expanded neighbour have
distance exactly 1 and are never stored.
"""
import logging
import time
from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch
from scipy import sparse
from sklearn.cluster import DBSCAN
from sklearn.neighbors import sort_graph_by_row_values

__all__ = [
    "NoClustersError",
    "knn",
    "jaccard_distance",
    "camera_proxies",
    "pseudo_labels",
]

logger = logging.getLogger("fastreid." + __name__)

ArrayLike = Union[np.ndarray, torch.Tensor]

# DBSCAN's rule is d <= eps; many pairs sit exactly on eps = 0.5 (s = 2/3), so the comparison
# carries a tolerance that absorbs float rounding on every machine (METHOD.md section 3, step 3).
EPS_TOLERANCE = 1e-6

# Extra candidates fetched from the search backend and re-ranked in float64, so that the final
# order does not depend on the backend's float32 rounding.
_KNN_MARGIN = 10
_ROW_CHUNK = 1024  # rows per block in the neighbour-list steps
_PAIR_CHUNK = 1 << 15  # feature pairs per block when gathering cosines
_OVERLAP_CHUNK = 1 << 22  # (row, partner) products per block of the overlap step


class NoClustersError(RuntimeError):
    """DBSCAN found no cluster at all; the message holds distance statistics and a suggested eps."""


def _normalised(features: ArrayLike) -> np.ndarray:
    """`features` [N, D] with rows L2-normalised in float64, then stored as float32.

    Every cosine below is the float64 dot product of these float32 rows (exact products,
    float64 sums), so the result does not depend on the search backend's rounding."""
    if isinstance(features, torch.Tensor):
        x = features.detach().to("cpu", torch.float64).numpy()
    else:
        x = np.array(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"features must be a non-empty [N, D] matrix, got shape {tuple(x.shape)}")
    if not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x).all(1))
        raise ValueError(f"features hold NaN or inf in {bad.size} rows (first: row {bad[0]})")
    norms = np.sqrt(np.einsum("nd,nd->n", x, x))[:, None]
    if (norms == 0).any():
        raise ValueError(f"features row {np.flatnonzero(norms[:, 0] == 0)[0]} is all zeros; cosine is undefined")
    x /= norms
    return x.astype(np.float32)


def _search_faiss(x32: np.ndarray, c: int) -> np.ndarray:
    try:
        import faiss
    except ImportError as e:
        raise ImportError("knn backend 'faiss' needs the faiss package (faiss-cpu or faiss-gpu); "
                          "install it or set CLUSTER.KNN to 'torch'") from e

    index = faiss.IndexFlatIP(x32.shape[1])
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0 and torch.cuda.is_available():
        resources = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(resources, 0, index)
    index.add(x32)
    _, idx = index.search(x32, c)
    return idx.astype(np.int64)


def _search_torch(x32: np.ndarray, c: int, device: torch.device) -> np.ndarray:
    x = torch.from_numpy(x32).to(device)
    out = []
    for start in range(0, x.shape[0], _ROW_CHUNK):
        sim = x[start:start + _ROW_CHUNK] @ x.T
        out.append(sim.topk(c, dim=1).indices.cpu())
    return torch.cat(out).numpy().astype(np.int64)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise float64 dot products of float32 rows a [..., D] and b [..., D]."""
    return np.einsum("...d,...d->...", a, b, dtype=np.float64)


def _knn(x: np.ndarray, k: int, backend: str, device: torch.device) -> Tuple[np.ndarray, np.ndarray]:
    """Neighbour indices [N, k] (see `knn`) and their float64 cosines [N, k] (inf for the row itself)."""
    n = x.shape[0]
    k = min(k, n)
    c = min(k + _KNN_MARGIN, n)
    if backend == "auto":
        try:
            import faiss  # noqa: F401

            backend = "faiss"
        except ImportError:
            backend = "torch"
    if backend == "faiss":
        cand = _search_faiss(x, c)
    elif backend == "torch":
        cand = _search_torch(x, c, device)
    else:
        raise ValueError(f"knn backend must be 'auto', 'faiss' or 'torch' (config key CLUSTER.KNN), got {backend!r}")

    # Every row lists itself first, even among exact duplicates.
    rows = np.arange(n)
    missing_self = ~(cand == rows[:, None]).any(1)
    cand[missing_self, -1] = rows[missing_self]
    out = np.empty((n, k), dtype=np.int64)
    out_sim = np.empty((n, k))
    for start in range(0, n, _ROW_CHUNK // 4):
        block = cand[start:start + _ROW_CHUNK // 4]
        sim = _dot(x[start:start + block.shape[0], None], x[block])
        sim[block == rows[start:start + block.shape[0], None]] = np.inf
        order = np.lexsort((block, -sim), axis=1)[:, :k]
        out[start:start + block.shape[0]] = np.take_along_axis(block, order, axis=1)
        out_sim[start:start + block.shape[0]] = np.take_along_axis(sim, order, axis=1)
    return out, out_sim


def knn(features: ArrayLike, k: int, backend: str = "auto") -> np.ndarray:
    """Indices [N, min(k, N)] of the k nearest rows of every row by cosine, the row itself first.

    The rest follow by decreasing cosine (float64 dot products of the L2-normalised rows rounded
    to float32); exact ties go by ascending index. `backend` finds the candidates: "faiss" (exact IndexFlatIP, on
    the GPU when faiss-gpu and CUDA exist), "torch" (chunked matmul + topk on the device of
    `features`), or "auto" (faiss when importable). Both give the same lists: the top k + 10
    candidates of each row are re-ranked exactly, so only near-ties at that depth could differ.
    """
    if k < 1:
        raise ValueError(f"knn needs k >= 1, got {k}")
    device = features.device if isinstance(features, torch.Tensor) else torch.device("cpu")
    return _knn(_normalised(features), k, backend, device)[0]


def _reciprocal(nbr: np.ndarray, m: int) -> np.ndarray:
    """[N, m] copy of nbr[:, :m] with -1 where j in N(i, m) does not have i in N(j, m)."""
    nm = nbr[:, :m]
    out = np.empty_like(nm)
    for start in range(0, nm.shape[0], _ROW_CHUNK):
        block = nm[start:start + _ROW_CHUNK]
        ids = np.arange(start, start + block.shape[0])[:, None, None]
        out[start:start + block.shape[0]] = np.where((nm[block] == ids).any(-1), block, -1)
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


def _jaccard_graph(
    features: ArrayLike, k1: int, k2: int, max_distance: float, knn_backend: str, ranks: int = 0,
) -> Tuple[sparse.csr_matrix, np.ndarray]:
    """Sparse Jaccard graph (pairs with d < max_distance) and, for every row, its `ranks` smallest
    distances counting itself (1.0 where a row has fewer stored partners), as [N, ranks]."""
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k-reciprocal neighbourhoods need k1 >= 1 and k2 >= 1, got k1={k1}, k2={k2}")
    if not max_distance > 0:
        raise ValueError(f"max_distance must be > 0, got {max_distance}")
    t0 = time.perf_counter()
    device = features.device if isinstance(features, torch.Tensor) else torch.device("cpu")
    x = _normalised(features)
    n = x.shape[0]
    nbr, nbr_sim = _knn(x, max(k1, k2), knn_backend, device)
    t_knn = time.perf_counter() - t0
    vq = _encoding(x, nbr, nbr_sim, k1, k2)
    del nbr, nbr_sim

    # s(i, j) = sum_k min(V'[i, k], V'[j, k]) over shared columns k: expand every stored V'[i, k]
    # against column k's entries (an inverted index) and sum the minima per (i, j).
    vc = vq.tocsc()
    vc.indices = vc.indices.astype(np.int32)  # halves the traffic of the per-row sorts below
    col_nnz = np.diff(vc.indptr)
    row_cost = np.cumsum(np.add.reduceat(col_nnz[vq.indices], vq.indptr[:-1]))
    indptr, indices, data = [np.zeros(1, dtype=np.int64)], [], []
    smallest = np.ones((n, ranks))
    start = 0
    while start < n:
        done = row_cost[start - 1] if start else 0
        stop = max(int(np.searchsorted(row_cost, done + _OVERLAP_CHUNK, side="right")), start + 1)
        lo, hi = vq.indptr[start], vq.indptr[stop]
        ent_cols = vq.indices[lo:hi]
        cnt = col_nnz[ent_cols]
        offsets = np.repeat(vc.indptr[ent_cols] - (np.cumsum(cnt) - cnt), cnt) + np.arange(cnt.sum())
        mins = np.minimum(np.repeat(vq.data[lo:hi], cnt), vc.data[offsets])
        # The products come out grouped by row already: build the CSR block directly and let
        # scipy sort each row and sum the duplicate (i, j) entries.
        pair_ptr = np.zeros(stop - start + 1, dtype=np.int64)
        np.cumsum(np.add.reduceat(cnt, vq.indptr[start:stop] - lo), out=pair_ptr[1:])
        s = sparse.csr_matrix((mins, vc.indices[offsets], pair_ptr), shape=(stop - start, n))
        s.sum_duplicates()
        del mins, offsets
        block_rows = np.repeat(np.arange(start, stop), np.diff(s.indptr))
        d = np.maximum(1.0 - s.data / (2.0 - s.data), 0.0)
        d[s.indices == block_rows] = 0.0
        if ranks:
            ordered = d[np.argsort((block_rows - start) * 2.0 + d)]  # by row, then by d in [0, 1]
            for t in range(ranks):
                pos = s.indptr[:-1] + t
                has = pos < s.indptr[1:]
                smallest[start:stop, t][has] = ordered[pos[has]]
        keep = d < max_distance
        indptr.append(indptr[-1][-1] + np.cumsum(np.add.reduceat(keep.astype(np.int64), s.indptr[:-1])))
        indices.append(s.indices[keep])
        data.append(d[keep])
        start = stop
    graph = sparse.csr_matrix(
        (np.concatenate(data), np.concatenate(indices), np.concatenate(indptr)), shape=(n, n))
    logger.info(
        "Jaccard distance of %d features: %d pairs below %.4g in %.1fs (kNN %.1fs)",
        n, graph.nnz - n, max_distance, time.perf_counter() - t0, t_knn)
    return graph, smallest


def jaccard_distance(
    features: ArrayLike, k1: int = 20, k2: int = 6, max_distance: float = 1.0, knn_backend: str = "auto",
) -> sparse.csr_matrix:
    """k-reciprocal Jaccard distance (Zhong et al., CVPR 2017) as a sparse [N, N] CSR matrix.

    Holds exactly the pairs with d < `max_distance` (0 < max_distance <= 1); the diagonal and
    any other zero distance are stored as explicit zeros, as DBSCAN on a sparse graph only sees
    stored pairs. Follows METHOD.md section 3, step 2: N(i, m) counts i first; R uses m = k1,
    H uses m = round(k1 / 2) + 1; overlaps are summed in float64. `features` [N, D] (numpy or
    torch, any device) are L2-normalised here; neighbours come from `knn(..., knn_backend)`.
    """
    return _jaccard_graph(features, k1, k2, max_distance, knn_backend)[0]


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


def pseudo_labels(
    features: ArrayLike,
    cams: ArrayLike,
    eps: float = 0.5,
    min_samples: int = 4,
    k1: int = 20,
    k2: int = 6,
    knn_backend: str = "auto",
    stats: Optional[Dict[str, float]] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Cluster ids and camera-aware proxy ids [N] int64 (-1 for outliers) of `features` [N, D].

    DBSCAN(eps, min_samples) runs on the sparse Jaccard graph; pairs with d <= eps + 1e-6 are
    neighbours, so exact ties at eps count on every machine. Raises `NoClustersError`, with
    distance statistics and a suggested eps, when no cluster forms.

    When `stats` is a dict it receives flat float scalars for logging (e.g. to TensorBoard):
    num_clusters, num_outliers, num_proxies, outlier_ratio, num_pairs (neighbour pairs, self
    excluded), seconds, and the 10/50/90% quantiles of each point's nearest non-self distance
    (nn_dist_p10 ...) and of its core distance, the distance to its min_samples-th nearest point
    counting itself, which must be <= eps for a core point (core_dist_p10 ...). The same line
    is logged on logger "fastreid.lwtgpf.clustering".
    """
    if not 0 < eps < 1:
        raise ValueError(f"eps must lie in (0, 1) for the Jaccard distance (config key CLUSTER.EPS), got {eps}")
    if min_samples < 1:
        raise ValueError(f"min_samples must be >= 1 (config key CLUSTER.MIN_SAMPLES), got {min_samples}")
    n = len(features)
    if len(cams) != n:
        raise ValueError(f"got {n} features but {len(cams)} camera ids")
    t0 = time.perf_counter()
    radius = eps + EPS_TOLERANCE
    graph, smallest = _jaccard_graph(features, k1, k2, radius, knn_backend, ranks=max(min_samples, 2))
    nearest, core = smallest[:, 1], smallest[:, min_samples - 1]
    num_pairs = graph.nnz - n
    # sklearn would sort each row itself, with a warning.
    graph = sort_graph_by_row_values(graph, copy=False, warn_when_not_sorted=False)
    labels = DBSCAN(eps=radius, min_samples=min_samples, metric="precomputed").fit_predict(graph).astype(np.int64)
    num_clusters = int(labels.max()) + 1
    values = {f"nn_dist_{k}": v for k, v in _quantiles(nearest).items()}
    values.update({f"core_dist_{k}": v for k, v in _quantiles(core).items()})
    if num_clusters == 0:
        usable = np.sort(core[core < 1.0])
        if usable.size:
            hint = (f"eps = {np.ceil(usable[(usable.size - 1) // 10] * 100) / 100:.2f} would make at least "
                    f"{100 * (usable.size // 10 + 1) / n:.1f}% of the points core points")
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
    proxies = camera_proxies(labels, cams)
    num_outliers = int((labels < 0).sum())
    values.update(
        num_clusters=float(num_clusters), num_outliers=float(num_outliers), num_proxies=float(proxies.max() + 1),
        outlier_ratio=num_outliers / n, num_pairs=float(num_pairs), seconds=time.perf_counter() - t0)
    logger.info(
        "Pseudo labels: %d clusters, %d proxies, %d outliers of %d (%.1f%%); nearest Jaccard distance "
        "p10/50/90 %.3f/%.3f/%.3f, core distance %.3f/%.3f/%.3f; %.1fs",
        num_clusters, int(values["num_proxies"]), num_outliers, n, 100 * values["outlier_ratio"],
        values["nn_dist_p10"], values["nn_dist_p50"], values["nn_dist_p90"],
        values["core_dist_p10"], values["core_dist_p50"], values["core_dist_p90"], values["seconds"])
    if stats is not None:
        stats.update(values)
    return labels, proxies
