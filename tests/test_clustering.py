"""lwtgpf.clustering against dense NumPy references written from METHOD.md section 3."""
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import sparse
from sklearn.cluster import DBSCAN

import lwtgpf  # noqa: F401
from lwtgpf import clustering
from lwtgpf.clustering import EPS_TOLERANCE, NoClustersError
from lwtgpf.knn import KnnSearch


def blobs(n=240, dim=32, ids=12, noise=20, seed=0):
    """Clusters of points around random directions plus uniform noise points; cameras 0..3."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((ids, dim))
    x = centers[rng.integers(0, ids, n - noise)] * 1.5 + rng.standard_normal((n - noise, dim))
    x = np.concatenate([x, rng.standard_normal((noise, dim)) * 2.0]).astype(np.float32)
    return x, rng.integers(0, 4, n)


def dense_neighbours(x):
    """Neighbour order per METHOD.md: the image itself first, then decreasing cosine (ties by index).
    Cosines are float64 products of the unit rows rounded to float32, as lwtgpf.clustering defines them."""
    x = x.astype(np.float64)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32).astype(np.float64)
    sim = x @ x.T
    np.fill_diagonal(sim, np.inf)
    n = len(x)
    return np.array([np.lexsort((np.arange(n), -sim[i])) for i in range(n)]), x @ x.T


def dense_jaccard(x, k1, k2):
    order, sim = dense_neighbours(x)
    n = len(x)

    def N(i, m):
        return list(order[i, :m])

    R = [{j for j in N(i, k1) if i in N(j, k1)} for i in range(n)]
    h = int(np.round(k1 / 2))
    H = [{l for l in N(j, h + 1) if j in N(l, h + 1)} for j in range(n)]
    V = np.zeros((n, n))
    for i in range(n):
        expanded = set(R[i])
        for j in R[i]:
            if len(H[j] & R[i]) > 2 / 3 * len(H[j]):
                expanded |= H[j]
        idx = np.array(sorted(expanded))
        logits = -(2 - 2 * sim[i, idx])
        V[i, idx] = np.exp(logits) / np.exp(logits).sum()
    Vq = np.stack([V[N(i, k2)].mean(0) for i in range(n)])
    s = np.stack([np.minimum(Vq[i], Vq).sum(1) for i in range(n)])
    return np.maximum(0.0, 1 - s / (2 - s))


@pytest.mark.parametrize("verify_cost", [0.0, np.inf], ids=["prefix-filtered", "all-overlaps"])
@pytest.mark.parametrize("k1,k2,max_distance", [(20, 6, 1.0), (8, 3, 0.6), (5, 1, 0.5), (20, 6, 0.3)])
def test_jaccard_matches_dense(k1, k2, max_distance, verify_cost, monkeypatch):
    # both ways of finding a block's pairs: every block verified, or none
    monkeypatch.setattr(clustering, "_VERIFY_COST", verify_cost)
    x, _ = blobs(seed=k1)
    ref = dense_jaccard(x, k1, k2)
    graph = clustering.jaccard_distance(torch.from_numpy(x), k1=k1, k2=k2, max_distance=max_distance)
    assert graph.shape == ref.shape
    coo = graph.tocoo()
    stored = np.zeros(ref.shape, dtype=bool)
    stored[coo.row, coo.col] = True
    assert stored.sum() == graph.nnz  # no duplicate entries
    np.testing.assert_allclose(coo.data, ref[coo.row, coo.col], atol=1e-9)
    # every pair below the threshold is stored, and nothing else (up to rounding at the border)
    border = np.abs(ref - max_distance) < 1e-9
    assert np.array_equal(stored[~border], (ref < max_distance)[~border])
    assert (graph.diagonal() == 0).all() and stored.diagonal().all()
    assert (ref < max_distance).sum() > len(x) + 50  # the blobs do form neighbourhoods


def test_jaccard_on_duplicates_is_exact_and_deterministic():
    x, _ = blobs(n=120, seed=3)
    x = np.concatenate([x, x[:30]])  # exact duplicates: ties everywhere in the kNN
    ref = dense_jaccard(x, 10, 4)
    graph = clustering.jaccard_distance(x, k1=10, k2=4)
    coo = graph.tocoo()
    np.testing.assert_allclose(coo.data, ref[coo.row, coo.col], atol=1e-9)
    assert graph.nnz == (ref < 1.0).sum()
    diagonal = coo.row == coo.col
    assert diagonal.sum() == len(x) and (coo.data[diagonal] == 0).all()  # stored explicitly
    # the 30 duplicate pairs, both ways, at distance 0 up to float64 rounding (their neighbour lists
    # hold the same images in a tie order the search may choose differently, so s sums in another order)
    twins = (coo.row % 120 == coo.col % 120) & ~diagonal
    assert twins.sum() == 60 and coo.data[twins].max() < 1e-12


def random_encoding(n, seed, hubs=3):
    """A random V': rows of 5-40 nonnegative entries summing to 1, in groups of three that share
    most of their columns, plus a few hub columns in most rows."""
    rng = np.random.default_rng(seed)
    dense = np.zeros((n, n))
    for i in range(n):
        if i % 3:  # the group's first row, reweighted, with some columns moved elsewhere
            dense[i] = dense[i - i % 3] * rng.uniform(0.3, 1.7, n)
            moved = rng.choice(np.flatnonzero(dense[i]), rng.integers(0, 4))
            dense[i, rng.choice(n, moved.size)] += dense[i, moved]
            dense[i, moved] = 0
        else:
            cols = rng.choice(n, rng.integers(5, 41), replace=False)
            dense[i, cols] = rng.exponential(size=cols.size)
        if rng.random() < 0.7:
            dense[i, rng.choice(hubs, 2)] += rng.exponential(size=2)
    return dense / dense.sum(1, keepdims=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prefixes_follow_their_definition_and_keep_every_close_pair(seed):
    n = 150
    dense = random_encoding(n, seed)
    threshold = np.random.default_rng(seed).uniform(0.05, 0.9)
    prefixes = clustering._prefixes(sparse.csr_matrix(dense), threshold).toarray() > 0
    # one order of the columns: by how many rows store them, ties by index
    order = np.lexsort((np.arange(n), (dense > 0).sum(0)))
    for i in range(n):
        stored = [k for k in order if dense[i, k] > 0]
        mass_from = [dense[i, stored[p:]].sum() for p in range(len(stored))]
        expected = {k for k, mass in zip(stored, mass_from) if mass >= threshold - 1e-12}
        assert set(np.flatnonzero(prefixes[i])) == expected
    overlap = np.minimum(dense[:, None, :], dense[None, :, :]).sum(2)
    close = overlap >= threshold
    share = (prefixes[:, None, :] & prefixes[None, :, :]).any(2)
    assert close.sum() > n and (share | ~close).all()  # the filter drops no pair at or above the threshold


@pytest.mark.parametrize("max_distance", [0.3, 0.5, 0.8])
def test_jaccard_graph_ways_agree_with_overlaps_on_hub_columns(max_distance, monkeypatch):
    n = 300
    dense = random_encoding(n, 7, hubs=2)
    overlap = np.minimum(dense[:, None, :], dense[None, :, :]).sum(2)
    d = np.maximum(1 - overlap / (2 - overlap), 0)
    np.fill_diagonal(d, 0)
    for verify_cost in (0.0, np.inf):
        monkeypatch.setattr(clustering, "_VERIFY_COST", verify_cost)
        graph = clustering._jaccard_graph(sparse.csr_matrix(dense), max_distance)
        coo = graph.tocoo()
        border = np.abs(d - max_distance) < 1e-9
        stored = np.zeros((n, n), dtype=bool)
        stored[coo.row, coo.col] = True
        assert np.array_equal(stored[~border], (d < max_distance)[~border]), verify_cost
        np.testing.assert_allclose(coo.data, d[coo.row, coo.col], atol=1e-12)
    rows = np.array([0, 5, 77, 299])
    smallest = clustering._smallest_distances(sparse.csr_matrix(dense), rows, 4)
    np.testing.assert_allclose(smallest, np.sort(np.where(overlap > 0, d, 1.0)[rows], axis=1)[:, :4], atol=1e-12)


def test_knn_backends_agree():
    x, _ = blobs(n=300, dim=48, seed=5)
    order, _ = dense_neighbours(x)
    for backend in ("faiss", "torch"):
        assert np.array_equal(clustering.knn(x, 15, backend=backend), order[:, :15]), backend
    with pytest.raises(ValueError, match="CLUSTER.KNN"):
        clustering.knn(x, 5, backend="annoy")


@pytest.mark.parametrize("k2", [3, 6, 9])
def test_exact_ties_at_eps_are_neighbours(k2):
    # k1 = 1 makes R*(i) = {i} and V the identity, so V'[i] = 1[N(i, k2)] / k2 and
    # s(i, j) = |N(i, k2) & N(j, k2)| / k2: an overlap of 2 k2 / 3 gives s = 2/3, d = 0.5 = eps exactly.
    x, cams = blobs(n=200, dim=16, seed=7)
    nbr = clustering.knn(x, k2)
    member = np.zeros((len(x), len(x)))
    member[np.arange(len(x))[:, None], nbr] = 1
    overlap = member @ member.T
    tie = 3 * overlap == 2 * k2
    assert tie.sum() > 0
    exact = np.where(tie, 0.5, 1 - overlap / (2 * k2 - overlap))  # ties set exactly, free of rounding
    graph = clustering.jaccard_distance(x, k1=1, k2=k2, max_distance=0.5 + EPS_TOLERANCE)
    assert graph.nnz == (exact <= 0.5).sum()
    np.testing.assert_allclose(graph.toarray()[exact <= 0.5], exact[exact <= 0.5], atol=1e-12)
    labels, _ = clustering.pseudo_labels(x, cams, eps=0.5, min_samples=3, k1=1, k2=k2)
    expected = DBSCAN(eps=0.5, min_samples=3, metric="precomputed").fit_predict(exact)
    assert np.array_equal(labels, expected)


@pytest.mark.parametrize("eps,min_samples", [(0.5, 4), (0.6, 3), (0.4, 6)])
def test_pseudo_labels_match_dense_dbscan(eps, min_samples):
    x, cams = blobs(n=260, seed=11)
    ref = dense_jaccard(x, 20, 6)
    expected = DBSCAN(eps=eps + EPS_TOLERANCE, min_samples=min_samples, metric="precomputed").fit_predict(ref)
    stats = {}
    labels, proxies = clustering.pseudo_labels(x, cams, eps=eps, min_samples=min_samples, stats=stats)
    assert labels.dtype == np.int64 and proxies.dtype == np.int64
    assert np.array_equal(labels, expected)
    assert np.array_equal(proxies, clustering.camera_proxies(expected, cams))
    assert stats["num_clusters"] == expected.max() + 1 > 1
    assert stats["num_outliers"] == (expected < 0).sum()
    assert stats["num_proxies"] == proxies.max() + 1
    nearest = np.sort(ref + np.eye(len(x)) * 9, axis=1)[:, 0]
    assert stats["nn_dist_p50"] == pytest.approx(np.quantile(nearest, 0.5), abs=1e-9)


def dense_camera_jaccard(x, cams, k):
    """CA-Jaccard (docs/METHOD.md section 9) the plain way: rankings within the own camera (the
    image first) and among the other cameras, k-reciprocal sets in each, no expansion, softmax
    weights, query expansion over both rankings' first entries."""
    order, sim = dense_neighbours(x)
    n = len(x)
    intra = [[j for j in order[i] if cams[j] == cams[i]] for i in range(n)]
    inter = [[j for j in order[i] if cams[j] != cams[i]] for i in range(n)]

    def reciprocal(rank, i, m):
        return [j for j in rank[i][:m] if i in rank[j][:m]]

    V = np.zeros((n, n))
    for i in range(n):
        idx = np.array(reciprocal(intra, i, k.k1_intra + 1) + reciprocal(inter, i, k.k1_inter + 1))
        w = np.exp(-(2 - 2 * sim[i, idx]))
        V[i, idx] = w / w.sum()
    Vq = np.stack([V[intra[i][:k.k2_intra] + inter[i][:k.k2_inter]].mean(0) for i in range(n)])
    s = np.stack([np.minimum(Vq[i], Vq).sum(1) for i in range(n)])
    return np.maximum(0.0, 1 - s / (2 - s))


@pytest.mark.parametrize("k", [clustering.CameraAwareK(), clustering.CameraAwareK(3, 7, 1, 2),
                               clustering.CameraAwareK(30, 5, 6, 1)], ids=["default", "small", "k1_intra>camera"])
@pytest.mark.parametrize("backend", ["torch", "faiss", "approx"])
def test_camera_aware_jaccard_matches_dense(k, backend):
    x, cams = blobs(n=200, seed=5)
    cams[:3] = 7  # a camera of three images: fewer than k1_intra + 1, padded lists
    ref = dense_camera_jaccard(x, cams, k)
    graph = clustering.jaccard_distance(x, cams=cams, camera_aware=k, knn_backend=backend)
    dense = np.ones(ref.shape)
    coo = graph.tocoo()
    dense[coo.row, coo.col] = coo.data
    np.testing.assert_allclose(dense, ref, atol=1e-9)
    assert (ref < 0.9).sum() > len(x) + 50  # neighbourhoods form, across cameras too
    assert ((ref < 0.9) & (cams[:, None] != cams[None])).sum() > 50


def test_camera_aware_jaccard_with_one_camera_uses_its_own_neighbours():
    x, _ = blobs(n=80, seed=6)
    cams = np.zeros(len(x), dtype=int)
    k = clustering.CameraAwareK(5, 20, 2, 4)
    dense = np.ones((len(x), len(x)))
    coo = clustering.jaccard_distance(x, cams=cams, camera_aware=k).tocoo()
    dense[coo.row, coo.col] = coo.data
    np.testing.assert_allclose(dense, dense_camera_jaccard(x, cams, k), atol=1e-9)


def test_camera_aware_pseudo_labels_match_dense_dbscan():
    x, cams = blobs(n=260, seed=12)
    k = clustering.CameraAwareK()
    expected = DBSCAN(eps=0.6 + EPS_TOLERANCE, min_samples=4, metric="precomputed").fit_predict(
        dense_camera_jaccard(x, cams, k))
    plain = clustering.pseudo_labels(x, cams, eps=0.6)[0]
    stats = {}
    labels, proxies = clustering.pseudo_labels(x, cams, eps=0.6, camera_aware=k, stats=stats)
    assert np.array_equal(labels, expected) and expected.max() > 3
    assert not np.array_equal(labels, plain)  # another distance, other labels
    assert np.array_equal(proxies, clustering.camera_proxies(expected, cams))
    assert stats["num_clusters"] == expected.max() + 1 and stats["knn_seconds"] > 0


def test_camera_aware_settings_are_checked():
    with pytest.raises(ValueError, match="K1_INTER must be an integer >= 1, got 0"):
        clustering.CameraAwareK(k1_inter=0)
    with pytest.raises(ValueError, match="one camera id per row: got 10 rows and no camera ids"):
        clustering.jaccard_distance(np.eye(10, dtype=np.float32) + 0.1, camera_aware=clustering.CameraAwareK())


def test_camera_proxies_match_loop():
    rng = np.random.default_rng(2)
    labels = rng.integers(-1, 9, 300)
    cams = rng.integers(1, 7, 300)
    expected = np.full(300, -1)
    next_id = 0
    for c in range(labels.max() + 1):
        for cam in sorted(set(cams[labels == c])):
            expected[(labels == c) & (cams == cam)] = next_id
            next_id += 1
    assert np.array_equal(clustering.camera_proxies(labels, cams), expected)
    assert np.array_equal(clustering.camera_proxies(np.full(4, -1), np.arange(4)), np.full(4, -1))
    with pytest.raises(ValueError, match="same length"):
        clustering.camera_proxies(labels, cams[:-1])


def test_no_cluster_error_reports_distances():
    x = np.random.default_rng(4).standard_normal((80, 64))
    with pytest.raises(NoClustersError, match=r"found no cluster.*nearest other sample: p10 .*Suggestion: eps = 0\.\d\d") as info:
        clustering.pseudo_labels(x, np.zeros(80), eps=0.01, min_samples=4)
    # the suggested eps does what the message promises: at least that share of core points, hence clusters
    suggested, share = re.search(r"eps = (0\.\d\d) would make at least ([\d.]+)%", str(info.value)).groups()
    stats = {}
    clustering.pseudo_labels(x, np.zeros(80), eps=float(suggested), min_samples=4, stats=stats)
    assert stats["num_clusters"] >= 1
    core = np.sort(dense_jaccard(x, 20, 6), axis=1)[:, 3]  # distance to the 4th nearest, itself first
    assert np.mean(core <= float(suggested) + EPS_TOLERANCE) * 100 >= float(share)


def test_bad_input_messages():
    x, cams = blobs(n=40)
    with pytest.raises(ValueError, match="CLUSTER.EPS"):
        clustering.pseudo_labels(x, cams, eps=1.5)
    with pytest.raises(ValueError, match="40 features but 39 camera ids"):
        clustering.pseudo_labels(x, cams[:-1])
    x[3] = 0
    with pytest.raises(ValueError, match="row 3 is all zeros"):
        clustering.jaccard_distance(x)


DISTRIBUTED = '''
import sys
import numpy as np
import torch.distributed as dist
import torch.multiprocessing as mp

import lwtgpf
from lwtgpf import clustering
from lwtgpf.knn import KnnSearch

SEARCHES = {"torch": KnnSearch("torch"), "approx": KnnSearch("approx", nlist=6, nprobe=2, recall_sample=50)}


def worker(rank, world, init, out):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    x, cams = np.load(f"{out}/x.npy"), np.load(f"{out}/cams.npy")
    for name, search in SEARCHES.items():
        stats = {}
        labels = clustering.pseudo_labels(x, cams, eps=0.6, knn_backend=search, stats=stats, distributed=True)
        np.save(f"{out}/{name}_{rank}.npy", np.stack(labels))
        assert bool(stats) == (rank == 0)
    labels = clustering.pseudo_labels(x, cams, eps=0.6, camera_aware=clustering.CameraAwareK(), distributed=True)
    np.save(f"{out}/camera_aware_{rank}.npy", np.stack(labels))
    try:  # process 0 fails: every process raises instead of waiting for labels
        clustering.pseudo_labels(x, cams, eps=0.01, distributed=True)
    except clustering.NoClustersError:
        assert rank == 0
    except RuntimeError as e:
        assert rank == 1 and "process 0" in str(e)
    else:
        raise AssertionError("no error")
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(worker, args=(2, "file://" + sys.argv[1], sys.argv[2]), nprocs=2)
'''


@pytest.mark.slow
def test_two_processes_give_the_labels_of_one(tmp_path):
    x, cams = blobs(n=301, seed=13)  # an odd N: the processes' shares differ in size
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "cams.npy", cams)
    script = tmp_path / "labels.py"
    script.write_text(textwrap.dedent(DISTRIBUTED))
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "rendezvous"), str(tmp_path)],
                            capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr[-3000:]
    searches = {"torch": KnnSearch("torch"), "approx": KnnSearch("approx", nlist=6, nprobe=2, recall_sample=50)}
    for name, search in searches.items():
        expected = np.stack(clustering.pseudo_labels(x, cams, eps=0.6, knn_backend=search))
        assert expected[0].max() > 3
        for rank in range(2):
            assert np.array_equal(np.load(tmp_path / f"{name}_{rank}.npy"), expected), (name, rank)
    expected = np.stack(clustering.pseudo_labels(x, cams, eps=0.6, camera_aware=clustering.CameraAwareK()))
    assert expected[0].max() > 3
    for rank in range(2):
        assert np.array_equal(np.load(tmp_path / f"camera_aware_{rank}.npy"), expected), rank


def test_unit_float32_features_are_not_copied():
    x, _ = blobs(n=50)
    unit = torch.from_numpy((x / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)).astype(np.float32))
    assert clustering._normalised(unit).data_ptr() == unit.data_ptr()  # the same memory
    assert clustering._normalised(unit.numpy()).data_ptr() == unit.data_ptr()
    other = clustering._normalised(torch.from_numpy(x))
    assert torch.equal(other, unit) and other.data_ptr() != unit.data_ptr()
    almost = unit.clone()
    almost[40] *= 1.01  # one row off: a normalised copy
    fixed = clustering._normalised(almost)
    assert fixed.data_ptr() != almost.data_ptr() and torch.allclose(fixed, unit, atol=1e-7)
    assert torch.equal(fixed[:40], unit[:40]) and torch.equal(almost[:40], unit[:40])
