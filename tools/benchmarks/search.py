"""Gallery search (lwtgpf.inference.search): exact flat vs IVF at several nprobe, speed and recall.

The gallery and the queries are clustered unit vectors of width --dim: identities with about
--images-per-id gallery images each, every image its identity's centre plus its camera's offset
(one of --cameras) plus noise, normalised; queries are further images of the gallery's
identities, so each has true neighbours to find. Identity centres come in appearance groups of
about --ids-per-group (people dressed alike), so that the neighbours after a query's own identity
are structured as in real features; with --ids-per-group 0 the centres are independent, and past
a query's own identity its exact top 10 is noise that no index routes to (recall then measures
how much of that noise an index finds).
Build is the wall time of constructing the index (IVF: k-means training and adding the gallery),
search the wall time of the --topk search of all queries. Recall@10 is the share of the exact
(flat) top 10 that a search returns too.
"""
import argparse
import time

import numpy as np

_ROWS = 4096  # rows generated at a time, so that temporaries stay small


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gallery", type=int, default=100_000, help="gallery features N")
    parser.add_argument("--queries", type=int, default=10_000, help="query features M")
    parser.add_argument("--dim", type=int, default=768, help="feature width D")
    parser.add_argument("--images-per-id", type=int, default=8, help="gallery images per identity")
    parser.add_argument("--cameras", type=int, default=6, help="cameras")
    parser.add_argument("--ids-per-group", type=int, default=50,
                        help="identities per appearance group (0: independent identity centres)")
    parser.add_argument("--topk", type=int, default=10, help="results per query (at least 10, for recall@10)")
    parser.add_argument("--nlist", type=int, default=None, help="IVF cells (default: about 4 sqrt(N))")
    parser.add_argument("--nprobe", default="1,4,16,64", help="comma-separated IVF cells scanned per query")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=0, help="faiss CPU threads (0: leave as is)")
    parser.add_argument("--seed", type=int, default=0)


def clustered_features(gallery: int, queries: int, dim: int, images_per_id: int, cameras: int, seed: int,
                       ids_per_group: int = 50):
    """Unit gallery [gallery, dim] and query [queries, dim] features (float32) of shared identities
    in appearance groups (none with `ids_per_group` 0), with per-camera offsets."""
    rng = np.random.default_rng(seed)
    ids = max(1, gallery // images_per_id)
    centres = rng.standard_normal((ids, dim), dtype=np.float32) / np.sqrt(dim)
    if ids_per_group:
        groups = rng.standard_normal((max(1, ids // ids_per_group), dim), dtype=np.float32) / np.sqrt(dim)
        centres += groups[rng.integers(0, len(groups), ids)]
    offsets = rng.standard_normal((cameras, dim), dtype=np.float32) * (0.5 / np.sqrt(dim))

    def draw(count: int) -> np.ndarray:
        x = np.empty((count, dim), np.float32)
        for start in range(0, count, _ROWS):
            rows = min(_ROWS, count - start)
            block = (centres[rng.integers(0, ids, rows)] + offsets[rng.integers(0, cameras, rows)]
                     + rng.standard_normal((rows, dim), dtype=np.float32) * (0.8 / np.sqrt(dim)))
            x[start:start + rows] = block / np.linalg.norm(block, axis=1, keepdims=True)
        return x
    return draw(gallery), draw(queries)


def _timed(call):
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start


def main(args: argparse.Namespace) -> None:
    import faiss

    from lwtgpf.inference.search import GalleryIndex

    if args.topk < 10:
        raise SystemExit(f"--topk must be at least 10 to measure recall@10, got {args.topk}")
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    gallery, queries = clustered_features(args.gallery, args.queries, args.dim, args.images_per_id, args.cameras,
                                          args.seed, args.ids_per_group)
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, device {args.device}; "
          f"gallery {args.gallery} x {args.dim}, queries {args.queries}, top {args.topk}, "
          f"{args.images_per_id} gallery images per identity, {args.cameras} cameras, "
          f"{args.ids_per_group or 'no'} identities per appearance group, seed {args.seed}")
    print("| index | nlist | nprobe | build s | search s | queries/s | speed-up vs flat | recall@10 vs exact |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    flat, build = _timed(lambda: GalleryIndex(gallery, "flat", device=args.device))
    (_, exact), flat_seconds = _timed(lambda: flat.search(queries, args.topk))
    del flat  # one index in memory at a time
    exact = exact[:, :10]
    print(f"| flat | - | - | {build:.2f} | {flat_seconds:.2f} | {args.queries / flat_seconds:,.0f} | 1.00 | 1.000 |",
          flush=True)
    ivf, build = _timed(lambda: GalleryIndex(gallery, "ivf", args.nlist, device=args.device, seed=args.seed))
    for nprobe in (int(p) for p in args.nprobe.split(",")):
        ivf.nprobe = nprobe
        (_, found), seconds = _timed(lambda: ivf.search(queries, args.topk))
        recall = (found[:, :10, None] == exact[:, None, :]).any(axis=2).mean()
        print(f"| ivf | {ivf.nlist} | {ivf.nprobe} | {build:.2f} | {seconds:.2f} | {args.queries / seconds:,.0f} "
              f"| {flat_seconds / seconds:.2f} | {recall:.3f} |", flush=True)
