"""Search a gallery of re-id features (unit rows) for the queries' most similar images, with faiss.

The default index is exact: a flat inner-product scan (`faiss.IndexFlatIP`), which on unit rows
ranks by cosine similarity, as matrix products; fast enough for galleries of some hundred
thousand images. Larger galleries, or many queries, can use an inverted file
(`faiss.IndexIVFFlat`, Jegou et al., TPAMI 2011): k-means cells, and each query scans only the
members of its `nprobe` nearest cells, about nprobe / nlist of the gallery (vector by vector,
not as matrix products, so the time saved is less than that ratio), after a k-means training
when it is built. It misses the true neighbours that fall in cells it does not probe: recall
falls as nprobe drops. On 100,000 x 768 clustered features with 2 CPU threads, nprobe 16 of
1265 cells searched 17x faster than flat and kept the exact top 10; nprobe 1 searched 80x
faster but kept half of it (`python tools/benchmark.py search`). Real features may need more
probes: measure recall on a sample against the flat index before relying on one.

Either index runs on a GPU when asked for `cuda` and faiss has GPU support and a GPU (only the
stable `StandardGpuResources` / `index_cpu_to_gpu` API is used); on CPU otherwise.
"""
import logging
import math
from typing import Iterator, Optional, Tuple

import numpy as np

__all__ = ["DEFAULT_NPROBE", "INDEX_KINDS", "GalleryIndex", "default_nlist"]

logger = logging.getLogger("fastreid." + __name__)

INDEX_KINDS = ("flat", "ivf")
DEFAULT_NPROBE = 16
_MAX_NLIST = 65536
# faiss's k-means warns below 39 training points per cell; fewer give cells too noisy to route by
_MIN_POINTS_PER_CELL = 39
# the k-means sample: more points per cell barely move the centroids but cost training time
_TRAIN_POINTS_PER_CELL = 64
# result entries (query x rank) per search call: bounds faiss's per-call heaps and device buffers
_CHUNK_ENTRIES = 1 << 22
# faiss's GPU k-selection returns at most this many neighbours per query
_GPU_MAX_K = 2048


def default_nlist(n: int) -> int:
    """Cells of an IVF index over `n` rows: about 4 sqrt(n), at most 65536, and at most n / 39 so
    that k-means has enough points per cell (at least 1)."""
    return max(1, min(round(4 * math.sqrt(n)), _MAX_NLIST, n // _MIN_POINTS_PER_CELL))


def _rows(array: np.ndarray, name: str) -> np.ndarray:
    """`array` as a float32 C-contiguous [rows, dimension] matrix of finite values (what faiss reads)."""
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array [rows, dimension], got shape {array.shape}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(f"{name}: {bad.size} row(s) hold NaN or infinite values, the first is row {bad[0]}")
    return array


def _gpu_id(device: str) -> Optional[int]:
    """The GPU faiss should use for `device` ("cpu", "cuda", "cuda:N"), or None for the CPU."""
    if device == "cpu":
        return None
    if device != "cuda" and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    import faiss

    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        # faiss-gpu imports and runs on CPU-only machines; a search there must not fail for it
        logger.warning(f"device {device!r} asked for, but faiss sees no GPU: searching on the CPU")
        return None
    return int(device[5:]) if device.startswith("cuda:") else 0


class GalleryIndex:
    """A faiss index over gallery features [N, D] (unit rows), searched by inner product.

    Args:
        features: the gallery features; converted to float32.
        kind: "flat" (exact) or "ivf" (inverted file: approximate, faster on large galleries).
        nlist: ivf: k-means cells (None: `default_nlist(N)`); at most N.
        nprobe: ivf: cells scanned per query (clipped to nlist; nprobe = nlist scans everything).
        device: "cpu", "cuda" or "cuda:N"; a GPU is used only where faiss has one.
        seed: ivf: seed of the k-means sample and initialisation (on the CPU, the same seed builds
            the same index).
        camids: gallery cameras [N] (-1 unknown), needed to leave out same-camera matches.
        name: what error messages call the gallery (e.g. its file).
    """

    def __init__(self, features: np.ndarray, kind: str = "flat", nlist: Optional[int] = None,
                 nprobe: int = DEFAULT_NPROBE, device: str = "cpu", seed: int = 0,
                 camids: Optional[np.ndarray] = None, name: str = "gallery"):
        import faiss

        if kind not in INDEX_KINDS:
            raise ValueError(f"index kind must be one of {', '.join(map(repr, INDEX_KINDS))}, got {kind!r}")
        features = _rows(features, name)
        n, dim = features.shape
        if n == 0 or dim == 0:
            raise ValueError(f"{name}: the gallery is empty (features of shape {features.shape})")
        if camids is not None:
            camids = np.asarray(camids)
            if camids.shape != (n,) or not np.issubdtype(camids.dtype, np.integer):
                raise ValueError(f"{name}: camids must be integers of shape ({n},), got {camids.dtype} {camids.shape}")
        if nlist is not None and kind == "flat":
            raise ValueError("nlist applies to an 'ivf' index only")
        self.name, self.kind, self.dim, self.size, self.camids = name, kind, dim, n, camids
        if camids is not None:
            cams, counts = np.unique(camids[camids >= 0], return_counts=True)
            self._camera_sizes = dict(zip(cams.tolist(), counts.tolist()))
        self.nlist = 0
        gpu = _gpu_id(device)
        self.on_gpu = gpu is not None

        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        else:
            self.nlist = default_nlist(n) if nlist is None else nlist
            if not 1 <= self.nlist <= n:
                raise ValueError(f"{name}: nlist must be between 1 and the gallery size {n}, got {self.nlist}")
            # the IVF index holds a plain pointer to its quantizer: keep the quantizer alive with it
            self._quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(self._quantizer, dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = seed
        if self.on_gpu:
            self._resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._resources, gpu, index)
        if kind == "ivf":
            rng = np.random.default_rng(seed)
            sample = min(n, _TRAIN_POINTS_PER_CELL * self.nlist)
            train = features if sample == n else features[np.sort(rng.choice(n, sample, replace=False))]
            index.train(train)
        index.add(features)
        self._index = index
        self.nprobe = nprobe

    @property
    def nprobe(self) -> int:
        """ivf: cells scanned per query (0 for a flat index)."""
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"nprobe must be >= 1, got {value}")
        self._nprobe = 0 if self.kind == "flat" else min(value, self.nlist)
        if self.kind == "ivf":
            self._index.nprobe = self._nprobe

    def search(self, queries: np.ndarray, topk: int, query_camids: Optional[np.ndarray] = None,
               chunk_size: Optional[int] = None, name: str = "queries") -> Tuple[np.ndarray, np.ndarray]:
        """Similarities float32 [M, k] (descending) and gallery indices int64 [M, k] of each query's
        top k = min(topk, N) gallery rows; see `iter_search` for the arguments. Where a query has
        fewer than k results (ivf cells with too few members, or same-camera rows left out) the
        rest of its row is index -1 and similarity -inf."""
        chunks = self.iter_search(queries, topk, query_camids, chunk_size, name)
        rows, k = len(queries), self._k(topk)
        similarities, indices = np.empty((rows, k), np.float32), np.empty((rows, k), np.int64)
        for start, sims, idx in chunks:
            similarities[start:start + len(sims)] = sims
            indices[start:start + len(idx)] = idx
        return similarities, indices

    def iter_search(self, queries: np.ndarray, topk: int, query_camids: Optional[np.ndarray] = None,
                    chunk_size: Optional[int] = None,
                    name: str = "queries") -> Iterator[Tuple[int, np.ndarray, np.ndarray]]:
        """`search` in chunks of queries: yields (first query row, similarities, indices) per chunk,
        so that results can be written out without holding all of them.

        Args:
            queries: [M, D] features; converted to float32 one chunk at a time.
            topk: results per query (>= 1); more than N gives N.
            query_camids: [M] cameras of the queries: when given, gallery rows of the query's
                camera are left out (none for a query of camera -1); the index needs `camids`.
                On a GPU at most 2048 candidates are fetched, which may leave a query short.
            chunk_size: queries per faiss call (None: about 4M result entries per call).
            name: what error messages call the queries (e.g. their file).
        """
        queries = np.asarray(queries)
        if queries.ndim != 2:
            raise ValueError(f"{name}: expected a 2-D array [rows, dimension], got shape {queries.shape}")
        if queries.shape[1] != self.dim:
            raise ValueError(f"{name}: features of dimension {queries.shape[1]} but the gallery index "
                             f"({self.name}) holds {self.dim}")
        k = self._k(topk)
        if query_camids is not None:
            if self.camids is None:
                raise ValueError(f"leaving out same-camera matches needs the gallery's camids ({self.name})")
            query_camids = np.asarray(query_camids)
            if query_camids.shape != (queries.shape[0],) or not np.issubdtype(query_camids.dtype, np.integer):
                raise ValueError(f"{name}: camids must be integers of shape ({queries.shape[0]},), "
                                 f"got {query_camids.dtype} {query_camids.shape}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        # a generator of its own, so that the checks above run at the call, not at the first chunk
        return self._chunks(queries, k, query_camids, chunk_size or max(1, _CHUNK_ENTRIES // k), name)

    def _chunks(self, queries: np.ndarray, k: int, query_camids: Optional[np.ndarray], step: int,
                name: str) -> Iterator[Tuple[int, np.ndarray, np.ndarray]]:
        for start in range(0, queries.shape[0], step):
            stop = min(start + step, queries.shape[0])
            chunk = _rows(queries[start:stop], f"{name} (rows {start} to {stop - 1})")
            cams = None if query_camids is None else query_camids[start:stop]
            yield (start, *self._search_chunk(chunk, k, cams))

    def _k(self, topk: int) -> int:
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        k = min(topk, self.size)
        if self.on_gpu and k > _GPU_MAX_K:
            raise ValueError(f"faiss on a GPU returns at most {_GPU_MAX_K} results per query, got topk {topk}")
        return k

    def _search_chunk(self, queries: np.ndarray, k: int,
                      camids: Optional[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
        """Top k of each query, leaving out gallery rows of its camera when `camids` is given.

        Leaving rows out needs more candidates than k: the search asks for 2k, and again for twice
        as many for the queries still short, until every query has k, ran out of rows it can reach
        (ivf returned -1), or asked for k + the largest number of rows it could lose."""
        m = queries.shape[0]
        out_sims = np.full((m, k), -np.inf, np.float32)
        out_idx = np.full((m, k), -1, np.int64)
        if camids is None:
            fetch = limit = k
        else:
            worst = max((self._camera_sizes.get(int(c), 0) for c in np.unique(camids)), default=0)
            limit = min(self.size, k + worst, _GPU_MAX_K if self.on_gpu else self.size)
            fetch = min(2 * k, limit)
        pending = np.arange(m)
        while pending.size:
            sims, idx = self._index.search(queries[pending], fetch)
            keep = idx >= 0
            if camids is not None:
                query_cams = camids[pending][:, None]
                keep &= (query_cams < 0) | (self.camids[np.maximum(idx, 0)] != query_cams)
            done = (keep.sum(axis=1) >= k) | (idx < 0).any(axis=1) | (fetch >= limit)
            # kept entries first, each group in faiss's (descending) order
            order = np.argsort(~keep[done], axis=1, kind="stable")[:, :k]
            taken = np.take_along_axis(keep[done], order, axis=1)
            out_idx[pending[done]] = np.where(taken, np.take_along_axis(idx[done], order, axis=1), -1)
            out_sims[pending[done]] = np.where(taken, np.take_along_axis(sims[done], order, axis=1), -np.inf)
            pending = pending[~done]
            fetch = min(2 * fetch, limit)
        return out_sims, out_idx
