"""Pseudo labels: sparse k-reciprocal Jaccard + DBSCAN (ours, per kNN backend) vs the dense N x N original style.

Features are synthetic re-id-like clusters (about N / 16 identities seen by 2-6 of 6 cameras,
plus 10% noise images) of width 768. Each implementation runs in its own subprocess, which
reports its wall time and its peak resident memory during the call (/proc VmHWM, reset after
the data are built), so the measurements never mix; ours also reports every stage (kNN,
Jaccard, DBSCAN, proxies: seconds, peak host memory, peak CUDA memory of torch's allocator,
which does not see faiss-gpu's). `--knn torch,approx` runs one subprocess per backend and
compares each one's labels with the first's (ARI with outliers as singletons, outlier counts).
The dense baseline is run last; it needs about 3 N^2 x 4 bytes (13 GB at N = 32,621) and is
skipped when the machine lacks them.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=12936, help="number of features N")
    parser.add_argument("--dim", type=int, default=768, help="feature width D")
    parser.add_argument("--cameras", type=int, default=6, help="cameras")
    parser.add_argument("--eps", type=float, default=0.5, help="DBSCAN radius")
    parser.add_argument("--min-samples", type=int, default=4, help="DBSCAN min_samples")
    parser.add_argument("--k1", type=int, default=20, help="k-reciprocal neighbourhood")
    parser.add_argument("--k2", type=int, default=6, help="query-expansion neighbourhood")
    parser.add_argument("--knn", default="auto",
                        help="comma-separated kNN backends (auto, faiss, torch, approx, or approx:NPROBE), "
                             "each run on its own")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the kNN search runs")
    parser.add_argument("--fp16", action="store_true", help="faiss on a GPU keeps the features in float16")
    parser.add_argument("--nlist", type=int, default=0, help="approx: k-means cells (0: derived from N)")
    parser.add_argument("--nprobe", type=int, default=0, help="approx: cells scanned per query (0: derived)")
    parser.add_argument("--recall-sample", type=int, default=1000, help="approx: rows whose recall@k1 is measured")
    parser.add_argument("--skip-naive", action="store_true", help="time ours only")
    parser.add_argument("--threads", type=int, default=0, help="torch / faiss CPU threads (0: leave as is)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)


def make_features(n: int, dim: int, cameras: int, seed: int):
    """Unit features of ~n/16 identities, each seen by 2..cameras cameras with a per-camera shift."""
    rng = np.random.default_rng(seed)
    ids = max(n // 16, 1)
    centers = rng.standard_normal((ids, dim), dtype=np.float32) / np.sqrt(dim)
    shifts = rng.standard_normal((ids, cameras, dim), dtype=np.float32) * (0.6 / np.sqrt(dim))
    seen = np.argsort(rng.random((ids, cameras)), axis=1)
    num_seen = rng.integers(2, cameras + 1, ids)
    noise = n // 10
    pid = rng.integers(0, ids, n - noise)
    cams = seen[pid, (rng.random(n - noise) * num_seen[pid]).astype(np.int64)]
    x = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n - noise, 4096):
        stop = min(start + 4096, n - noise)
        p, c = pid[start:stop], cams[start:stop]
        x[start:stop] = centers[p] + shifts[p, c] + rng.standard_normal((stop - start, dim), dtype=np.float32) * (
            0.7 / np.sqrt(dim))
    x[n - noise:] = rng.standard_normal((noise, dim), dtype=np.float32)
    cams = np.concatenate([cams, rng.integers(0, cameras, noise)])
    for start in range(0, n, 4096):  # normalised in float64 as lwtgpf.clustering does, so it needs no copy
        block = x[start:start + 4096].astype(np.float64)
        x[start:start + 4096] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return x, cams


def naive_pseudo_labels(x: np.ndarray, cams: np.ndarray, eps: float, min_samples: int, k1: int, k2: int):
    """Dense float32 N x N matrices and per-row Python loops, the way the original faiss_rerank.py
    and clustering.py work, then DBSCAN on the dense matrix and a per-cluster camera loop."""
    import faiss
    from sklearn.cluster import DBSCAN

    n = x.shape[0]
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    _, rank = index.search(x, k1)

    def reciprocal(i: int, m: int) -> np.ndarray:
        forward = rank[i, :m]
        return forward[np.where(rank[forward, :m] == i)[0]]

    r_sets = [reciprocal(i, k1) for i in range(n)]
    h_sets = [reciprocal(i, int(np.around(k1 / 2)) + 1) for i in range(n)]
    v = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        expanded = r_sets[i]
        for j in r_sets[i]:
            if len(np.intersect1d(h_sets[j], r_sets[i])) > 2 / 3 * len(h_sets[j]):
                expanded = np.append(expanded, h_sets[j])
        expanded = np.unique(expanded)
        logits = -(2 - 2 * x[expanded] @ x[i])
        weights = np.exp(logits - logits.max())
        v[i, expanded] = weights / weights.sum()
    del r_sets, h_sets
    v_qe = np.zeros_like(v)
    for i in range(n):
        v_qe[i] = v[rank[i, :k2]].mean(0)
    v = v_qe
    del v_qe
    inverted = [np.where(v[:, k] != 0)[0] for k in range(n)]
    dist = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        overlap = np.zeros((1, n), dtype=np.float32)
        for k in np.where(v[i] != 0)[0]:
            overlap[0, inverted[k]] += np.minimum(v[i, k], v[inverted[k], k])
        dist[i] = 1 - overlap / (2 - overlap)
    del v, inverted
    dist[dist < 0] = 0
    labels = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(dist)
    del dist
    proxies = np.full(n, -1)
    next_id = 0
    for c in range(labels.max() + 1):
        for cam in np.unique(cams[labels == c]):
            proxies[(labels == c) & (cams == cam)] = next_id
            next_id += 1
    return labels, proxies


def _proc_status(field: str) -> float:
    """A memory field of /proc/self/status in GB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2 ** 20
    raise RuntimeError(f"/proc/self/status has no {field}")


def _worker(args: argparse.Namespace) -> None:
    import torch

    import lwtgpf  # noqa: F401
    from lwtgpf.clustering import STAGES, pseudo_labels
    from lwtgpf.knn import KnnSearch

    if args.threads:
        import faiss

        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    x, cams = make_features(args.n, args.dim, args.cameras, args.seed)
    if args.worker != "naive" and args.device == "cuda":
        x = torch.from_numpy(x).cuda()
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM, so the peak covers the call only
        f.write("5")
    base = _proc_status("VmRSS")
    start = time.perf_counter()
    stats = {}
    if args.worker == "naive":
        labels, proxies = naive_pseudo_labels(x, cams, args.eps, args.min_samples, args.k1, args.k2)
    else:
        backend, _, nprobe = args.worker.partition(":")
        search = KnnSearch(backend, fp16=args.fp16, nlist=args.nlist, nprobe=int(nprobe or args.nprobe),
                           recall_sample=args.recall_sample)
        labels, proxies = pseudo_labels(x, cams, args.eps, args.min_samples, args.k1, args.k2, search, stats)
        stats["describe"] = search.describe(args.n)
    seconds = time.perf_counter() - start
    np.save(args.out + ".npy", labels)
    # pseudo_labels restarts the peak at every stage: the call's peak is the largest of them
    peak = max([_proc_status("VmHWM")] + [v for k, v in stats.items() if k.endswith("_host_gb")])
    result = dict(seconds=seconds, peak_gb=peak, base_gb=base,
                  clusters=int(labels.max()) + 1, outliers=int((labels < 0).sum()), proxies=int(proxies.max()) + 1,
                  stats={k: v for k, v in stats.items() if k.split("_")[0] in STAGES + ("knn", "describe")})
    with open(args.out, "w") as f:
        json.dump(result, f)


def _run(name: str, args: argparse.Namespace, tmp: str) -> Dict[str, float]:
    out = os.path.join(tmp, name)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--out", out]
    for key in ("n", "dim", "cameras", "eps", "k1", "k2", "threads", "seed", "device", "nlist", "nprobe"):
        cmd += [f"--{key}", str(getattr(args, key))]
    cmd += ["--min-samples", str(args.min_samples), "--recall-sample", str(args.recall_sample)]
    if args.fp16:
        cmd.append("--fp16")
    subprocess.run(cmd, check=True)
    with open(out) as f:
        result = json.load(f)
    result["labels"] = np.load(out + ".npy")
    return result


def _available_gb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2 ** 20
    return 0.0


def _singletons(labels: np.ndarray) -> np.ndarray:
    """Outliers as clusters of their own, so that leaving images out does not look like agreement."""
    return np.where(labels < 0, labels.max() + 1 + np.arange(len(labels)), labels)


def main(args: argparse.Namespace) -> None:
    if args.worker:
        _worker(args)
        return
    from sklearn.metrics import adjusted_rand_score

    backends = args.knn.split(",")
    print(f"cluster: N={args.n} D={args.dim} cameras={args.cameras} eps={args.eps} "
          f"min_samples={args.min_samples} k1={args.k1} k2={args.k2} device={args.device} cpus={os.cpu_count()}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            results[f"ours ({backend})"] = _run(backend, args, tmp)
        need = 3 * args.n ** 2 * 4 / 2 ** 30 + 1.0
        if args.skip_naive:
            print("naive baseline skipped (--skip-naive)")
        elif _available_gb() < need:
            print(f"naive baseline skipped: needs about {need:.1f} GB, {_available_gb():.1f} GB available")
        else:
            results["naive (dense)"] = _run("naive", args, tmp)
    print(f"{'implementation':<20}{'seconds':>10}{'peak GB':>10}{'base GB':>10}{'clusters':>10}{'outliers':>10}{'proxies':>10}")
    for name, r in results.items():
        print(f"{name:<20}{r['seconds']:>10.1f}{r['peak_gb']:>10.2f}{r['base_gb']:>10.2f}"
              f"{r['clusters']:>10}{r['outliers']:>10}{r['proxies']:>10}")
    print("stages (seconds / peak host GB [/ peak torch CUDA GB]):")
    for name, r in results.items():
        stats = r["stats"]
        if not stats:
            continue
        cells = []
        for stage in ("knn", "jaccard", "dbscan", "proxies"):
            cell = f"{stage} {stats[stage + '_seconds']:.1f}s / {stats[stage + '_host_gb']:.2f}"
            if stage + "_device_gb" in stats:
                cell += f" / {stats[stage + '_device_gb']:.2f}"
            cells.append(cell)
        recall = f"; recall@{args.k1} {stats['knn_recall']:.4f} on {args.recall_sample} rows" if "knn_recall" in stats else ""
        print(f"  {name}: {stats['describe']}: " + ", ".join(cells) + recall)
    names = list(results)
    first = results[names[0]]
    for name in names[1:]:
        r = results[name]
        print(f"{name} vs {names[0]}: time x{first['seconds'] / r['seconds']:.2f} faster, peak memory "
              f"x{first['peak_gb'] / r['peak_gb']:.2f} lower, ARI (outliers as singletons) "
              f"{adjusted_rand_score(_singletons(first['labels']), _singletons(r['labels'])):.4f}, outliers "
              f"{r['outliers']} vs {first['outliers']} ({100 * (r['outliers'] - first['outliers']) / max(first['outliers'], 1):+.1f}%)")


if __name__ == "__main__":
    # Worker entry: `_run` starts this file in a fresh process for each implementation.
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    main(parser.parse_args())
