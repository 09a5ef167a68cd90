#!/usr/bin/env python
"""Search a gallery's features for each query's most similar images: a CSV of matches, and
optionally one rank-list picture per query.

    python tools/search.py --gallery gallery.npz --queries queries.npz --topk 10 --output matches.csv \\
        --gallery-images data/gallery --query-images data/query --ranklists ranklists/

The inputs are feature files (keys names, camids, features, meta; `lwtgpf.inference.feature_file`)
of the same model. Similarity is the inner product of the L2-normalised features (their cosine).
--index flat (the default) is exact; ivf, an inverted file, is faster on large galleries but may
miss some true neighbours, fewer with a larger --nprobe (`python tools/benchmark.py search`
measures speed and recall@10).

The CSV (default: <queries file without .npz>_matches.csv, next to the queries file) has one row per
query and rank: query, query_camid, rank (1-based), gallery, gallery_camid, similarity. It is
written to a temporary file in its folder, renamed when complete. A query gets fewer than --topk
rows when the gallery is smaller, when ivf's probed cells hold too few images, or when
--exclude-same-camera leaves too few.

--exclude-same-camera leaves out every gallery image of the query's camera (a query of unknown
camera, -1, keeps them all). The standard re-id protocol leaves out only the same-camera images of
the query's own identity; identities are unknown here, so this also drops other persons seen by
the query's camera.

--ranklists DIR writes a PNG for each of the first --num-ranklists queries: the query (grey frame),
then its matches with their similarity underneath, framed green where both names are Market-style
(0001_c1s1_000151_00.jpg) with the same person id, red where their ids differ, grey otherwise.
Images are read from --query-images / --gallery-images joined with the names (the names as
listed when these are not given).
"""
import argparse
import csv
import os
import sys
import time
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import cv2
import numpy as np

import lwtgpf  # noqa: F401  (fixes fastreid's imports before the rank-list code loads it)
from lwtgpf.atomic import atomic_write
from lwtgpf.analysis.ranklist import GREEN, GREY, RED, ranklist_picture
from lwtgpf.data.datasets.market_layout import parse_market_name
from lwtgpf.inference.feature_file import FeatureSet, read_features
from lwtgpf.inference.search import DEFAULT_NPROBE, INDEX_KINDS, GalleryIndex

CSV_HEADER = ("query", "query_camid", "rank", "gallery", "gallery_camid", "similarity")


def match_colour(query_name: str, gallery_name: str) -> Tuple[int, int, int]:
    """Frame colour of a match: green for the same Market-style person id, red for another, grey
    when either name does not parse or is a junk image (id -1)."""
    query, match = parse_market_name(query_name), parse_market_name(gallery_name)
    if query is None or match is None or query[0] < 0 or match[0] < 0:
        return GREY
    return GREEN if query[0] == match[0] else RED


def csv_rows(gallery: FeatureSet, queries: FeatureSet,
             chunks: Iterator[Tuple[int, np.ndarray, np.ndarray]], keep: int,
             kept: List[Tuple[int, np.ndarray, np.ndarray]]) -> Iterator[Tuple]:
    """The CSV rows of the search results, chunk by chunk; the results of the first `keep` queries
    are appended to `kept` (for the rank lists) on the way."""
    for start, sims, idx in chunks:
        for row in range(len(idx)):
            query = start + row
            if query < keep:
                kept.append((query, sims[row].copy(), idx[row].copy()))
            for rank, (similarity, g) in enumerate(zip(sims[row], idx[row]), start=1):
                if g < 0:  # fewer results than topk: the rest of the row is padding
                    break
                yield (queries.names[query], int(queries.camids[query]), rank, gallery.names[g],
                       int(gallery.camids[g]), f"{similarity:.6f}")


def write_csv_atomically(path: str, rows: Iterator[Tuple]) -> int:
    """Stream `rows` under CSV_HEADER into `path`, atomically (a reader never sees half a file);
    returns the number of rows."""
    count = 0

    def write(f) -> None:
        nonlocal count
        writer = csv.writer(f)  # buffered: a 10,000 x 100 result never exists as one string
        writer.writerow(CSV_HEADER)
        for row in rows:
            writer.writerow(row)
            count += 1

    atomic_write(path, write, text=True)
    return count


def write_ranklists(folder: str, gallery: FeatureSet, queries: FeatureSet,
                    kept: List[Tuple[int, np.ndarray, np.ndarray]], gallery_images: Optional[str],
                    query_images: Optional[str]) -> List[str]:
    """One PNG per kept query in `folder`: the query then its matches; returns the files written."""
    os.makedirs(folder, exist_ok=True)
    written = []
    for query, sims, idx in kept:
        found = idx >= 0
        names = [str(gallery.names[g]) for g in idx[found]]
        query_name = str(queries.names[query])
        picture = ranklist_picture(
            os.path.join(query_images or "", query_name),
            [os.path.join(gallery_images or "", name) for name in names],
            [match_colour(query_name, name) for name in names],
            title=f"{os.path.basename(query_name)}  (camid {int(queries.camids[query])})",
            captions=[f"{s:.3f}" for s in sims[found]])
        path = os.path.join(folder, f"{query:04d}_{Path(query_name).stem}.png")
        if not cv2.imwrite(path, np.ascontiguousarray(picture[..., ::-1])):
            raise OSError(f"cannot write {path}")
        written.append(path)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gallery", required=True, help="feature file (.npz) of the gallery")
    parser.add_argument("--queries", required=True, help="feature file (.npz) of the queries")
    parser.add_argument("--topk", type=int, default=10, help="matches per query (default %(default)s)")
    parser.add_argument("--index", choices=INDEX_KINDS, default="flat", help="flat: exact; ivf: inverted file")
    parser.add_argument("--nlist", type=int, default=None, help="ivf: k-means cells (default about 4 sqrt(N))")
    parser.add_argument("--nprobe", type=int, default=DEFAULT_NPROBE,
                        help="ivf: cells scanned per query (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="ivf: seed of the k-means sample and initialisation")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (the CPU where faiss sees no GPU)")
    parser.add_argument("--output", help="CSV to write (default: <queries>_matches.csv next to the queries file)")
    parser.add_argument("--exclude-same-camera", action="store_true",
                        help="leave out every gallery image of the query's camera")
    parser.add_argument("--ranklists", help="folder of rank-list PNGs to write")
    parser.add_argument("--num-ranklists", type=int, default=10,
                        help="rank lists of the first N queries (default %(default)s)")
    parser.add_argument("--gallery-images", help="folder the gallery names are relative to (rank lists)")
    parser.add_argument("--query-images", help="folder the query names are relative to (rank lists)")
    args = parser.parse_args(argv)

    if args.topk < 1:
        parser.error(f"--topk must be >= 1, got {args.topk}")
    if args.num_ranklists < 0:
        parser.error(f"--num-ranklists must be >= 0, got {args.num_ranklists}")
    if args.index == "flat" and args.nlist is not None:
        parser.error("--nlist applies to --index ivf only")
    if not args.ranklists and (args.gallery_images or args.query_images):
        parser.error("--gallery-images and --query-images are read for --ranklists only; add --ranklists DIR")
    try:
        gallery, queries = read_features(args.gallery), read_features(args.queries)
    except (OSError, ValueError) as err:
        parser.error(str(err))
    if gallery.dim != queries.dim:
        parser.error(f"the queries ({args.queries}) have features of dimension {queries.dim} but the gallery "
                     f"({args.gallery}) has {gallery.dim}: extract both with the same model")
    output = args.output or os.path.join(os.path.dirname(args.queries),
                                         f"{os.path.basename(args.queries).removesuffix('.npz')}_matches.csv")

    start = time.perf_counter()
    kept: List[Tuple[int, np.ndarray, np.ndarray]] = []
    try:
        index = GalleryIndex(gallery.features, args.index, args.nlist, args.nprobe, args.device, args.seed,
                             camids=gallery.camids, name=args.gallery)
        chunks = index.iter_search(queries.features, args.topk,
                                   queries.camids if args.exclude_same_camera else None, name=args.queries)
        if os.path.dirname(output):
            os.makedirs(os.path.dirname(output), exist_ok=True)
        rows = write_csv_atomically(output, csv_rows(gallery, queries, chunks, args.num_ranklists, kept))
    except (OSError, ValueError) as err:
        parser.error(str(err))
    described = f"ivf, nlist {index.nlist}, nprobe {index.nprobe}" if args.index == "ivf" else "flat, exact"
    print(f"Searched {len(queries)} queries ({args.queries}) in {len(gallery)} gallery images ({args.gallery}; "
          f"{described}, {'GPU' if index.on_gpu else 'CPU'}) in {time.perf_counter() - start:.2f} s "
          "(building the index and writing the CSV included).")
    print(f"Wrote {output} ({rows} matches).")
    if args.ranklists:
        try:
            pictures = write_ranklists(args.ranklists, gallery, queries, kept, args.gallery_images,
                                       args.query_images)
        except OSError as err:  # includes an unreadable image, named in the message
            parser.error(f"rank lists: {err}")
        print(f"Wrote {len(pictures)} rank lists to {args.ranklists}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
