"""Image check before training: every image header of a folder, one process vs several.

`lwtgpf.data.io.find_unreadable` opens each file with PIL (`verify`), as the trainer does for every
split before training (DATALOADER.CHECK_IMAGES), in DATALOADER.NUM_WORKERS processes. The baseline
is the same check in one process; both must report the same files. Cold runs need a dropped page cache
(`echo 3 > /proc/sys/vm/drop_caches`); this reports warm runs.
"""
import argparse
import os
import time

from lwtgpf.data.datasets.market_layout import IMAGE_EXTENSIONS
from lwtgpf.data.io import find_unreadable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="a folder of images (searched recursively), e.g. datasets/SyntheticReID")
    parser.add_argument("--workers", type=int, default=8, help="processes of the parallel check")
    parser.add_argument("--decode", action="store_true", help="decode every image fully (slower)")


def main(args: argparse.Namespace) -> None:
    paths = sorted(os.path.join(root, name) for root, _, names in os.walk(args.folder)
                   for name in names if name.lower().endswith(IMAGE_EXTENSIONS))
    if not paths:
        raise SystemExit(f"no image under {args.folder}")
    find_unreadable(paths[:64])  # imports and first opens out of the timing
    results = {}
    for workers in (1, args.workers):
        start = time.perf_counter()
        bad = find_unreadable(paths, decode=args.decode, workers=workers)
        results[workers] = (time.perf_counter() - start, bad)
    (serial, bad1), (parallel, bad_n) = results[1], results[args.workers]
    if bad1 != bad_n:
        raise SystemExit("the serial and parallel checks disagree")
    print(f"{len(paths)} images ({'decoded' if args.decode else 'headers'}), {len(bad1)} unreadable")
    print(f"  1 process    {serial:7.2f} s  {len(paths) / serial:9.0f} images/s")
    print(f"  {args.workers} processes {parallel:7.2f} s  {len(paths) / parallel:9.0f} images/s  "
          f"({serial / parallel:.2f}x)")
