"""Ranking metrics on a Market-1501-sized problem: ours vs fast-reid's pure-Python evaluate_rank.

Random but seeded: 3,368 queries x 15,913 gallery images of 751 identities in 6 cameras (the
Market-1501 test split sizes), float32 distances drawn from N(1, 0.1) for false and N(0.5, 0.15)
for true matches, so the metrics land near a trained model's. Both implementations rank the same matrix; the
run fails if their CMC, AP or INP differ by more than 1e-6.
"""
import argparse
import time

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-query", type=int, default=3368)
    parser.add_argument("--num-gallery", type=int, default=15913)
    parser.add_argument("--num-ids", type=int, default=751)
    parser.add_argument("--num-cams", type=int, default=6)
    parser.add_argument("--max-rank", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="runs of ours; the best is reported")
    parser.add_argument("--skip-baseline", action="store_true",
                        help="do not run fast-reid's evaluate_rank (about 2 minutes at full size)")


def _problem(args: argparse.Namespace):
    rng = np.random.default_rng(args.seed)
    q_pids = rng.integers(0, args.num_ids, args.num_query)
    g_pids = rng.integers(0, args.num_ids, args.num_gallery)
    q_cams = rng.integers(0, args.num_cams, args.num_query)
    g_cams = rng.integers(0, args.num_cams, args.num_gallery)
    distmat = rng.normal(1.0, 0.1, (args.num_query, args.num_gallery)).astype(np.float32)
    same = q_pids[:, None] == g_pids[None, :]
    distmat[same] = rng.normal(0.5, 0.15, int(same.sum()))
    return distmat, q_pids, g_pids, q_cams, g_cams


def _max_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))) for x, y in zip(a, b))


def main(args: argparse.Namespace) -> None:
    from fastreid.evaluation.rank import evaluate_rank as fastreid_evaluate_rank

    from lwtgpf.evaluation import evaluate_rank

    problem = _problem(args)
    print(f"problem: {args.num_query} queries x {args.num_gallery} gallery, {args.num_ids} ids, "
          f"{args.num_cams} cameras, seed {args.seed}")

    ours_s = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours = evaluate_rank(*problem, max_rank=args.max_rank)
        ours_s = min(ours_s, time.perf_counter() - start)
    cmc, all_ap, all_inp = ours
    print(f"Rank-1 {cmc[0] * 100:.2f}  mAP {np.mean(all_ap) * 100:.2f}  mINP {np.mean(all_inp) * 100:.2f}  "
          f"({len(all_ap)} valid queries)")

    rows = [("lwtgpf evaluate_rank", ours_s)]
    if not args.skip_baseline:
        start = time.perf_counter()
        ref = fastreid_evaluate_rank(*problem, max_rank=args.max_rank, use_cython=False)
        rows.append(("fastreid evaluate_rank (python)", time.perf_counter() - start))
        if ours[0].shape != ref[0].shape or len(ours[1]) != len(ref[1]):
            raise SystemExit("results differ in shape from fast-reid's")
        diff = _max_diff(ours, ref)
        if diff > 1e-6:
            raise SystemExit(f"results differ from fast-reid's by {diff:.3g} (> 1e-6)")
        print(f"equal to fast-reid's within 1e-6 (max abs difference {diff:.2g})")

    print("\n| implementation | time (s) | ratio |\n|---|---:|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} | {seconds / ours_s:.1f}x |")
