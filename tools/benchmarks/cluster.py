"""Pseudo labels: sparse k-reciprocal Jaccard + DBSCAN (ours) vs the dense N x N original style.

Features are synthetic re-id-like clusters (about N / 16 identities seen by 2-6 of 6 cameras,
plus 10% noise images) of width 768. Each implementation runs in its own subprocess, which
reports its wall time and its peak resident memory during the call (/proc VmHWM, reset after
the data are built), so the two measurements never mix. The dense baseline is run last; it
needs about 3 N^2 x 4 bytes (13 GB at N = 32,621) and is skipped when the machine lacks them.
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
    parser.add_argument("--skip-naive", action="store_true", help="time ours only")
    parser.add_argument("--threads", type=int, default=0, help="torch / faiss CPU threads (0: leave as is)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=("ours", "naive"), help=argparse.SUPPRESS)
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
    x /= np.linalg.norm(x, axis=1, keepdims=True)
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
    from lwtgpf.clustering import pseudo_labels

    if args.threads:
        import faiss

        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    x, cams = make_features(args.n, args.dim, args.cameras, args.seed)
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM, so the peak covers the call only
        f.write("5")
    base = _proc_status("VmRSS")
    start = time.perf_counter()
    if args.worker == "ours":
        labels, proxies = pseudo_labels(x, cams, args.eps, args.min_samples, args.k1, args.k2)
    else:
        labels, proxies = naive_pseudo_labels(x, cams, args.eps, args.min_samples, args.k1, args.k2)
    seconds = time.perf_counter() - start
    np.save(args.out + ".npy", labels)
    result = dict(seconds=seconds, peak_gb=_proc_status("VmHWM"), base_gb=base,
                  clusters=int(labels.max()) + 1, outliers=int((labels < 0).sum()), proxies=int(proxies.max()) + 1)
    with open(args.out, "w") as f:
        json.dump(result, f)


def _run(name: str, args: argparse.Namespace, tmp: str) -> Dict[str, float]:
    out = os.path.join(tmp, name)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--out", out]
    for key in ("n", "dim", "cameras", "eps", "k1", "k2", "threads", "seed"):
        cmd += [f"--{key}", str(getattr(args, key))]
    cmd += ["--min-samples", str(args.min_samples)]
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


def main(args: argparse.Namespace) -> None:
    if args.worker:
        _worker(args)
        return
    from sklearn.metrics import adjusted_rand_score

    print(f"cluster: N={args.n} D={args.dim} cameras={args.cameras} eps={args.eps} "
          f"min_samples={args.min_samples} k1={args.k1} k2={args.k2} cpus={os.cpu_count()}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["ours (sparse)"] = _run("ours", args, tmp)
        need = 3 * args.n ** 2 * 4 / 2 ** 30 + 1.0
        if args.skip_naive:
            print("naive baseline skipped (--skip-naive)")
        elif _available_gb() < need:
            print(f"naive baseline skipped: needs about {need:.1f} GB, {_available_gb():.1f} GB available")
        else:
            results["naive (dense)"] = _run("naive", args, tmp)
    print(f"{'implementation':<16}{'seconds':>10}{'peak GB':>10}{'base GB':>10}{'clusters':>10}{'outliers':>10}{'proxies':>10}")
    for name, r in results.items():
        print(f"{name:<16}{r['seconds']:>10.1f}{r['peak_gb']:>10.2f}{r['base_gb']:>10.2f}"
              f"{r['clusters']:>10}{r['outliers']:>10}{r['proxies']:>10}")
    if len(results) == 2:
        ours, naive = results["ours (sparse)"], results["naive (dense)"]
        print(f"speed-up x{naive['seconds'] / ours['seconds']:.1f}, peak memory "
              f"x{naive['peak_gb'] / ours['peak_gb']:.1f} lower, "
              f"ARI(ours, naive) {adjusted_rand_score(naive['labels'], ours['labels']):.4f}")


if __name__ == "__main__":
    # Worker entry: `_run` starts this file in a fresh process for each implementation.
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    main(parser.parse_args())
