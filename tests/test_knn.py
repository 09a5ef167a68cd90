"""lwtgpf.knn: the approximate backend against plain references, and the exact backends' agreement."""
import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

import lwtgpf  # noqa: F401
import lwtgpf.knn
from lwtgpf import clustering
from lwtgpf.distributed import split_rows
from lwtgpf.knn import KnnSearch, add_reverse, kmeans, recall


def identities(n=1200, dim=64, ids=60, cams=4, seed=0):
    """Unit features of `ids` identities seen by several cameras (a camera shift per identity),
    plus 5% noise rows, as re-id features look; cameras 0..cams-1."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((ids, dim))
    shifts = rng.standard_normal((ids, cams, dim)) * 0.5
    pid, cam = rng.integers(0, ids, n), rng.integers(0, cams, n)
    x = centers[pid] + shifts[pid, cam] + rng.standard_normal((n, dim)) * 0.6
    x[: n // 20] = rng.standard_normal((n // 20, dim)) * 1.5
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), cam


def unit(n, dim, seed):
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.normalize(x, dim=1)


def test_kmeans_is_a_fixed_point_of_assign_and_average():
    x = unit(500, 16, 1)
    centroids = kmeans(x, 8, iters=30, sample=1000)
    assert torch.allclose(centroids.norm(dim=1), torch.ones(8), atol=1e-6)
    # after convergence each centroid is the normalised mean of the rows nearest to it
    assign = (x @ centroids.T).argmax(1)
    for cell in range(8):
        members = x[assign == cell]
        assert len(members) > 0
        assert torch.allclose(centroids[cell], torch.nn.functional.normalize(members.sum(0), dim=0), atol=1e-5)


def test_approx_search_is_exact_search_over_the_probed_cells():
    x = unit(700, 24, 2)
    search = KnnSearch("approx", nlist=12, nprobe=3, precision="float32")
    plan = search.plan(x, 15)
    centroids = plan.centroids
    rows = torch.arange(0, 700, 7)
    found = search.candidates(x, rows, 15, plan)
    # plain reference: every query compared with every row whose nearest centroid is among the
    # query's 3 nearest centroids
    cell_of = (x @ centroids.T).argmax(1)
    for query, got in zip(rows.tolist(), found):
        probed = (x[query] @ centroids.T).topk(3).indices
        pool = torch.nonzero(torch.isin(cell_of, probed)).flatten()
        sims = x[pool] @ x[query]
        expected = pool[sims.topk(min(15, pool.numel())).indices]
        assert set(got[got >= 0].tolist()) == set(expected.tolist()), query
        assert (got < 0).sum() == 15 - min(15, pool.numel())


def test_cell_counts_follow_n():
    assert KnnSearch("approx").cells(100_000) == 316
    assert KnnSearch("approx").cells(1_000_000) == 1000
    assert KnnSearch("approx").cells(300) == 4  # at least 64 rows per cell
    assert KnnSearch("approx", nlist=50).cells(10_000) == 50
    x = unit(400, 8, 0)
    assert KnnSearch("approx", nlist=5, nprobe=60, max_cell=0).plan(x, 10).nprobe == 5  # at most every cell


def skewed(n=3000, dim=32, seed=7):
    """Unit rows of which 60% gather around one centre (one identity seen thousands of times), the
    rest spread: unbalanced clusters; and 12 centroids, one of them that centre."""
    g = torch.Generator().manual_seed(seed)
    big = int(0.6 * n)
    centre = torch.randn(dim, generator=g)
    x = torch.randn(n, dim, generator=g)
    x[:big] = centre * 3 + torch.randn(big, dim, generator=g)
    centroids = torch.cat([centre[None], x[big:big + 11]])
    return torch.nn.functional.normalize(x, dim=1), torch.nn.functional.normalize(centroids, dim=1)


def test_large_cells_are_split_to_bounded_sizes():
    x, centroids = skewed()
    sizes = torch.bincount((x @ centroids.T).argmax(1), minlength=12)
    mean = len(x) / 12
    assert sizes.max() > 4 * mean  # the skew makes a giant cell
    split = lwtgpf.knn.split_large_cells(x, centroids, 2.0)
    split_sizes = torch.bincount((x @ split.T).argmax(1), minlength=len(split))
    assert len(split) > 12 and split_sizes.max() <= 2 * len(x) / len(split) * 2
    assert torch.equal(lwtgpf.knn.split_large_cells(x, centroids, 0), centroids)  # 0: never
    assert torch.equal(lwtgpf.knn.split_large_cells(x, centroids, 100.0), centroids)  # none that large
    # the probes of split cells scan a bounded share of the rows
    plan = KnnSearch("approx", nlist=12, nprobe=2, max_cell=2.0, recall_sample=300).plan(x, 10)
    assert torch.bincount((x @ plan.centroids.T).argmax(1)).max() <= 2 * len(x) / len(plan.centroids) * 2
    assert plan.scanned <= 2 * 2 * 2 / len(plan.centroids)


def plain_reciprocal_recall(x, centroids, rows, nprobe, k1):
    """The share of the k-reciprocal pairs (i, j) of `rows` (each in the other's exact top k1) that
    the inverted file finds from either side (j in i's top k1, or i in j's), each list being the
    float64 re-ranking of the best k1 + 10 members of the probed cells; and the mean share of rows
    the queries `rows` scan. Written from the definitions, one row at a time."""
    x64 = x.double()
    cell_of = (x @ centroids.T).argmax(1)
    exact, approx = {}, {}

    def exact_top(q):
        if q not in exact:
            exact[q] = set((x64 @ x64[q]).topk(k1).indices.tolist())
        return exact[q]

    def pool(q):
        return torch.nonzero(torch.isin(cell_of, (x[q] @ centroids.T).topk(nprobe).indices)).flatten()

    def approx_top(q):
        if q not in approx:
            members = pool(q)
            candidates = members[(x[members] @ x[q]).topk(min(k1 + 10, len(members))).indices]
            approx[q] = set(candidates[(x64[candidates] @ x64[q]).topk(min(k1, len(candidates))).indices].tolist())
        return approx[q]

    found = total = 0
    for i in rows.tolist():
        for j in exact_top(i):
            if i in exact_top(j):
                total += 1
                found += j in approx_top(i) or i in approx_top(j)
    return found / total, float(np.mean([len(pool(q)) / len(x) for q in rows.tolist()]))


def test_probes_are_the_fewest_that_reach_the_target_recall():
    x = torch.from_numpy(identities(n=1000, seed=8)[0])
    for target in (0.8, 0.97):
        search = KnnSearch("approx", nlist=16, nprobe=0, precision="float32", target_recall=target,
                           recall_sample=120, max_scan=1.0)
        plan = search.plan(x, 20)
        rows = torch.from_numpy(lwtgpf.knn.sample_rows(len(x), 120, 0))
        reached, scanned = plain_reciprocal_recall(x, plan.centroids, rows, plan.nprobe, 20)
        assert reached >= target and plan.sample_recall == pytest.approx(reached, abs=1e-9)
        assert plan.scanned == pytest.approx(scanned, rel=1e-6)
        if plan.nprobe > 1:  # half as many probes fall short
            assert plain_reciprocal_recall(x, plan.centroids, rows, plan.nprobe // 2, 20)[0] < target
        assert not plan.fallback and plan.stats()["knn_nprobe"] == plan.nprobe
    low = KnnSearch("approx", nlist=16, nprobe=0, target_recall=0.8, recall_sample=120, precision="float32")
    assert low.plan(x, 20).nprobe < plan.nprobe  # a lower target, fewer probes


def test_falls_back_to_exact_search_when_that_is_cheaper(caplog):
    x, cams = identities(n=800, seed=9)
    search = KnnSearch("approx", nlist=8, nprobe=0, target_recall=0.999, max_scan=0.05, recall_sample=200)
    with caplog.at_level("WARNING", logger="fastreid.lwtgpf.knn"):
        plan = search.plan(torch.from_numpy(x), 20)
    assert plan.fallback and "exact search is the cheaper here" in caplog.text and "MAX_SCAN" in caplog.text
    assert np.array_equal(clustering.knn(x, 20, search), clustering.knn(x, 20, "torch"))
    stats = {}
    labels = clustering.pseudo_labels(x, cams, knn_backend=search, stats=stats)
    assert np.array_equal(labels[0], clustering.pseudo_labels(x, cams, knn_backend="torch")[0])
    assert stats["knn_fallback"] == 1 and "knn_recall" not in stats


def test_bfloat16_scan_finds_what_float32_finds():
    # bfloat16 only chooses candidates (every backend re-ranks them in float64): near-ties at the
    # edge of the candidate list may swap, nothing else
    x = unit(900, 32, 5)
    lists = {dtype: clustering.knn(x, 10, KnnSearch("approx", nlist=10, nprobe=3, precision=dtype))
             for dtype in ("float32", "bfloat16")}
    assert recall(lists["bfloat16"], lists["float32"]) > 0.99
    assert KnnSearch(precision="bfloat16").scan_dtype(torch.device("cpu")) == torch.bfloat16
    assert KnnSearch(precision="float32").scan_dtype(torch.device("cpu")) == torch.float32


def test_add_reverse_against_a_plain_reference():
    rng = np.random.default_rng(6)
    n, k = 40, 5
    x = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((n, 8))), dim=1).numpy()
    sim_all = x @ x.T
    # each row's list: itself, then k - 1 rows drawn at random (a poor search), by decreasing cosine
    nbr = np.empty((n, k), dtype=np.int64)
    for i in range(n):
        others = rng.choice(np.delete(np.arange(n), i), k - 1, replace=False)
        nbr[i] = [i, *sorted(others, key=lambda j: (-sim_all[i, j], j))]
    sim = np.where(nbr == np.arange(n)[:, None], np.inf, sim_all[np.arange(n)[:, None], nbr])
    out, out_sim = add_reverse(nbr, sim)
    for i in range(n):
        pool = set(nbr[i]) | {j for j in range(n) if i in nbr[j]}
        best = sorted(pool, key=lambda j: (-np.inf if j == i else -sim_all[i, j], j))[:k]
        assert out[i].tolist() == best, i
        assert np.array_equal(out_sim[i], [np.inf if j == i else sim_all[i, j] for j in best])
    # exact lists come back unchanged
    exact = clustering.knn(x, k, backend="torch")
    exact_sim = np.where(exact == np.arange(n)[:, None], np.inf, sim_all[np.arange(n)[:, None], exact])
    assert np.array_equal(add_reverse(exact, exact_sim)[0], exact)


def test_approx_recall_and_labels_against_exact():
    x, cams = identities()
    exact = clustering.knn(x, 20, backend="torch")
    stats = {}
    approx_search = KnnSearch("approx", nlist=18, nprobe=6, recall_sample=300)  # a third of the rows per query
    found = clustering.knn(x, 20, backend=approx_search)
    assert (found[:, 0] == np.arange(len(x))).all()
    value = recall(found, exact)
    assert 0.95 < value < 0.99  # approximate, yet close
    labels, _ = clustering.pseudo_labels(x, cams, knn_backend="torch")
    approx_labels, _ = clustering.pseudo_labels(x, cams, knn_backend=approx_search, stats=stats)
    assert adjusted_rand_score(labels, approx_labels) > 0.97
    assert abs((labels < 0).sum() - (approx_labels < 0).sum()) <= 0.01 * len(x)
    # the logged recall is the recall of the sampled rows
    assert stats["knn_recall"] == pytest.approx(value, abs=0.02)
    # every probe scanned: approx becomes exact
    full = KnnSearch("approx", nlist=18, nprobe=1_000_000)
    assert np.array_equal(clustering.knn(x, 20, backend=full), exact)


def test_exact_backends_agree_and_stages_are_timed():
    x, cams = identities(n=400, seed=3)
    results = {}
    for backend in ("faiss", "torch", "auto"):
        stats = {}
        results[backend] = clustering.pseudo_labels(x, cams, eps=0.6, knn_backend=backend, stats=stats)[0]
        for stage in clustering.STAGES:
            assert stats[f"{stage}_seconds"] >= 0 and stats[f"{stage}_host_gb"] > 0, stage
        assert "knn_recall" not in stats
    assert results["faiss"].max() > 3
    assert np.array_equal(results["faiss"], results["torch"]) and np.array_equal(results["faiss"], results["auto"])


class FaissOnAGpu:
    """faiss as a GPU build shows itself, with the real CPU index behind the "GPU" one: records
    the options each index is cloned to the GPU with."""

    def __init__(self):
        import faiss

        self.IndexFlatIP = faiss.IndexFlatIP
        self.cloned = []

    class GpuClonerOptions:
        useFloat16 = None

    def StandardGpuResources(self):
        return object()

    def get_num_gpus(self):
        return 1

    def index_cpu_to_gpu(self, resources, gpu, index, options):
        self.cloned.append((gpu, options.useFloat16))
        return index


@pytest.mark.parametrize("fp16", [True, False])
def test_fp16_flag_reaches_the_gpu_index_and_changes_nothing_on_cpu(monkeypatch, fp16):
    """CLUSTER.KNN_FP16 acts only where faiss searches on a GPU: the flag must arrive in the GPU
    cloner's options there; the CPU search ignores it."""
    from fastreid.config import get_cfg
    from lwtgpf import knn
    from lwtgpf.config import add_lwtgpf_config

    x, _ = identities(n=300, seed=4)
    exact = clustering.knn(x, 10, "torch")
    cfg = add_lwtgpf_config(get_cfg())
    cfg.merge_from_list(["CLUSTER.KNN", "faiss", "CLUSTER.KNN_FP16", str(fp16)])
    search = KnnSearch.from_config(cfg.CLUSTER)
    assert np.array_equal(clustering.knn(x, 10, search), exact)  # on the CPU

    fake = FaissOnAGpu()
    monkeypatch.setattr(knn, "_faiss", lambda: fake)
    cpu_search = knn._faiss_flat_search  # the features stay on the CPU here: search as if they were on GPU 0
    monkeypatch.setattr(knn, "_faiss_flat_search", lambda base, queries, c, device, flag: cpu_search(
        base, queries, c, torch.device("cuda", 0), flag))
    assert np.array_equal(clustering.knn(x, 10, search), exact)
    assert fake.cloned == [(0, fp16)]


def test_split_rows_matches_fastreid_inference_sampler():
    assert [list(r) for r in split_rows(7, 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [len(r) for r in split_rows(2, 3)] == [1, 1, 0]


def test_bad_settings_name_the_key():
    with pytest.raises(ValueError, match="CLUSTER.KNN"):
        KnnSearch("hnsw")
    with pytest.raises(ValueError, match="CLUSTER.APPROX.NPROBE"):
        KnnSearch("approx", nprobe=-1)
    with pytest.raises(ValueError, match=r"CLUSTER.APPROX.TARGET_RECALL\) must lie in \(0, 1\]"):
        KnnSearch("approx", target_recall=1.5)
    with pytest.raises(ValueError, match="RECALL_SAMPLE"):
        KnnSearch("approx", nprobe=0, recall_sample=0)
    KnnSearch("approx", recall_sample=0, nprobe=4)  # fixed probes need no sample
