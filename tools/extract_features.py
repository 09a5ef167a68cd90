#!/usr/bin/env python
"""Extract the re-id features of a folder or a list of images with a trained model, into one feature
file (`lwtgpf.inference.feature_file`: names, camids, L2-normalised float32 features, meta).

    python tools/extract_features.py --config-file configs/LWTGPF/synthetic.yml --images crops/ \\
        --output feats.npz MODEL.WEIGHTS logs/LWTGPF/synthetic/model_final.pth

--images is a folder (every .jpg, .jpeg, .png and .bmp under it, any case, recursively, sorted;
names relative to it) or a list file (one image a line, optionally followed by whitespace and a
0-based camera id; relative paths are relative to the list's folder; blank lines and lines starting
with # are skipped; names as listed). The camera of an image is, in this order: the one on its line
of the list; the one of a Market-style name (`0001_c3s1_...`: camera 3, id 2); --camera N; else
-1, unknown (a model with camera embeddings then uses their mean).

Features are the evaluation's (`lwtgpf.inference.FeatureExtractor`). They are computed chunk by chunk
(--chunk-size images) and kept in `<output>.partial/` until the end, so memory stays at one chunk
and an interrupted run (or one stopped by an unreadable image) continues where it stopped when the
same command is run again. A work folder of other images, cameras, model or settings is refused:
--restart discards it. An existing output is replaced only with --overwrite.
"""
import argparse
import hashlib
import logging
import os
import sys
from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence, Tuple

import lwtgpf  # noqa: F401  (fixes fastreid's imports, registers our modules)
import numpy as np
import torch
from fastreid.utils.logger import setup_logger
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from lwtgpf.analysis.cli import add_overrides, parse_args
from lwtgpf.cli import ConfigError, load_config
from lwtgpf.data.datasets.market_layout import IMAGE_EXTENSIONS, parse_market_name
from lwtgpf.data.io import UnreadableImageError, read_image
from lwtgpf.inference.extractor import BACKENDS, FeatureExtractor
from lwtgpf.inference.feature_file import Chunk, ChunkedFeatureWriter, FeatureFileError
from lwtgpf.modeling.backbones.side_info import UNKNOWN_CAMERA
from lwtgpf.weights import file_sha256

logger = logging.getLogger("lwtgpf.extract_features")

# config keys that do not change the features: left out of the config's hash, so that a run may be
# resumed with other values (the weights are hashed themselves, the device is recorded on its own)
_NOT_FEATURES = ("MODEL.WEIGHTS", "MODEL.DEVICE", "DATALOADER.NUM_WORKERS", "OUTPUT_DIR")


class ImageListError(ValueError):
    """The images argument is not a folder of images or a well-formed list file."""


class Images(NamedTuple):
    """The images to extract: `paths` to read, `names` to store, 0-based `camids` (-1: unknown)."""
    paths: List[str]
    names: List[str]
    camids: List[int]


def _camera(name: str, listed: Optional[int], fallback: Optional[int], num_cameras: int, where: str) -> int:
    """The 0-based camera of an image: listed, else from its Market-style name, else `fallback`, else -1;
    checked against the model's cameras (`num_cameras`, 0: no camera embeddings)."""
    parsed = parse_market_name(name)
    if listed is not None:
        camid, origin = listed, "its listed camera"
    elif parsed is not None:
        camid, origin = parsed[1] - 1, f"its name's camera c{parsed[1]}"
    else:
        camid, origin = (UNKNOWN_CAMERA, "") if fallback is None else (fallback, "--camera")
    if num_cameras and camid >= num_cameras:
        raise ImageListError(f"{where}: {origin} is camera id {camid} (0-based) but the model has "
                             f"MODEL.BACKBONE.NUM_CAMERAS = {num_cameras}: ids 0..{num_cameras - 1}, or -1 for "
                             f"unknown (a list file may give each image's camera)")
    return camid


def folder_images(folder: str, camera: Optional[int] = None, num_cameras: int = 0) -> Images:
    """Every image file under `folder` (recursively, sorted by relative path)."""
    names = sorted(os.path.relpath(os.path.join(root, f), folder).replace(os.sep, "/")
                   for root, _, files in os.walk(folder) for f in files if f.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise ImageListError(f"no images under {folder} (files ending in {', '.join(IMAGE_EXTENSIONS)}, any case)")
    paths = [os.path.join(folder, n) for n in names]
    return Images(paths, names, [_camera(n, None, camera, num_cameras, p) for n, p in zip(names, paths)])


def list_images(list_file: str, camera: Optional[int] = None, num_cameras: int = 0) -> Images:
    """The images of a list file: `path [camera]` a line, paths relative to the list's folder."""
    base = os.path.dirname(os.path.abspath(list_file))
    images = Images([], [], [])
    with open(list_file, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            where = f"{list_file}:{number}"
            parts = line.rsplit(None, 1)
            listed = None
            if len(parts) == 2 and parts[1].lstrip("-").isdigit():
                line, listed = parts[0], int(parts[1])
                if listed < UNKNOWN_CAMERA:
                    raise ImageListError(f"{where}: camera id {listed} must be 0-based, or -1 for unknown")
            path = os.path.join(base, line)
            if not os.path.isfile(path):
                raise ImageListError(f"{where}: no such image {path}")
            images.paths.append(path)
            images.names.append(line)
            images.camids.append(_camera(line, listed, camera, num_cameras, where))
    if not images.names:
        raise ImageListError(f"{list_file} lists no images (one path a line, optionally followed by a 0-based "
                             f"camera id)")
    return images


def collect_images(source: str, camera: Optional[int] = None, num_cameras: int = 0) -> Images:
    """The images of a folder or a list file, with their cameras checked against the model's
    `num_cameras` (0: a model without camera embeddings takes any id)."""
    if os.path.isdir(source):
        return folder_images(source, camera, num_cameras)
    if os.path.isfile(source):
        return list_images(source, camera, num_cameras)
    raise ImageListError(f"--images {source}: no such folder or list file")


def feature_meta(extractor: FeatureExtractor, weights: str, device: str, source: str) -> dict:
    """The extractor's meta, and what identifies the features for resuming: hashes of the weights and
    of the config (without the keys that do not change features), the device and the images' source."""
    cfg = extractor.cfg.clone()
    cfg.defrost()
    for key in _NOT_FEATURES:
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = None
    return dict(extractor.meta, weights_sha256=file_sha256(weights),
                config_sha256=hashlib.sha256(cfg.dump().encode()).hexdigest(), device=device,
                images=os.path.abspath(source))


class _ImageFiles(Dataset):
    """The test transform of each image; an unreadable file gives its error instead, so that the main
    process can stop with a message that names it (a worker's exception arrives wrapped)."""

    def __init__(self, paths: Sequence[str], transform):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int) -> Tuple[int, Optional[torch.Tensor], Optional[str]]:
        try:
            return row, self.transform(read_image(self.paths[row], "RGB")), None
        except UnreadableImageError as err:
            return row, None, str(err)


def _collate(items) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[str]]:
    rows = torch.tensor([row for row, _, _ in items])
    errors = [error for _, _, error in items if error is not None]
    if errors:
        return rows, None, errors[0]
    return rows, torch.stack([image for _, image, _ in items]).float(), None


class ChunkBatches:
    """Batches of the rows of `chunks` that never cross a chunk's end, so that a resumed run feeds the
    model the same batches (and gets the same bits) as an uninterrupted one."""

    def __init__(self, chunks: Sequence[Chunk], batch_size: int):
        self.chunks, self.batch_size = chunks, batch_size

    def __iter__(self):
        for chunk in self.chunks:
            for start in range(chunk.start, chunk.stop, self.batch_size):
                yield list(range(start, min(start + self.batch_size, chunk.stop)))

    def __len__(self) -> int:
        return sum(-(-(chunk.stop - chunk.start) // self.batch_size) for chunk in self.chunks)


def extract(extractor: FeatureExtractor, images: Images, writer: ChunkedFeatureWriter, batch_size: int,
            num_workers: int) -> None:
    """Compute the pending chunks of `writer`, reading images in `num_workers` processes while the model runs."""
    loader = DataLoader(_ImageFiles(images.paths, extractor.transform),
                        batch_sampler=ChunkBatches(writer.pending(), batch_size), num_workers=num_workers,
                        collate_fn=_collate, pin_memory=extractor.device.type == "cuda")
    camids = torch.as_tensor(images.camids, dtype=torch.long)
    current, buffer = None, None
    with tqdm(total=len(images.names), initial=writer.rows_done(), unit="img", desc="features") as progress:
        for rows, batch, error in loader:
            if error is not None:
                raise UnreadableImageError(error)
            first, last = int(rows[0]), int(rows[-1])
            chunk = writer.chunks[first // writer.chunk_size]
            if chunk is not current:
                current, buffer = chunk, np.empty((chunk.stop - chunk.start, writer.dim), np.float32)
            buffer[first - chunk.start:last + 1 - chunk.start] = extractor.embed(batch, camids[rows])
            if last + 1 == chunk.stop:
                writer.write(chunk.index, buffer)
            progress.update(len(rows))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="the training config")
    parser.add_argument("--images", required=True, help="a folder of images, or a list file")
    parser.add_argument("--output", required=True, help="the feature file (.npz) to write")
    parser.add_argument("--camera", type=int, default=None,
                        help="0-based camera id of the images whose camera is neither listed nor in their name")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--chunk-size", type=int, default=8192, help="images per chunk kept on disk while running")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--backend", default="torch", choices=BACKENDS)
    parser.add_argument("--restart", action="store_true", help="discard the chunks of an interrupted run")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    add_overrides(parser)
    args = parse_args(parser, argv)
    if args.batch_size < 1 or args.chunk_size < 1:
        parser.error(f"--batch-size and --chunk-size must be at least 1, got {args.batch_size} and {args.chunk_size}")
    if args.camera is not None and args.camera < UNKNOWN_CAMERA:
        parser.error(f"--camera {args.camera}: camera ids are 0-based, or -1 for unknown")
    setup_logger(name="fastreid")
    setup_logger(name="lwtgpf", abbrev_name="lwtgpf")
    writer = None
    try:
        if os.path.exists(args.output) and not args.overwrite:  # before the model is built
            raise FileExistsError(f"{args.output} exists; pass --overwrite to replace it")
        cfg = load_config(args.config_file, args.opts)
        if not cfg.MODEL.WEIGHTS:
            raise ConfigError("no weights: give the trained model as MODEL.WEIGHTS path/to/model_final.pth")
        images = collect_images(args.images, args.camera, cfg.MODEL.BACKBONE.NUM_CAMERAS)
        extractor = FeatureExtractor(args.config_file, cfg.MODEL.WEIGHTS, device=args.device, backend=args.backend,
                                     opts=args.opts, batch_size=args.batch_size)
        writer = ChunkedFeatureWriter(args.output, images.names, images.camids,
                                      feature_meta(extractor, cfg.MODEL.WEIGHTS, args.device, args.images),
                                      extractor.feature_dim, chunk_size=args.chunk_size, restart=args.restart,
                                      overwrite=args.overwrite)
        known = sum(c != UNKNOWN_CAMERA for c in images.camids)
        logger.info(f"{len(images.names)} images from {args.images} ({known} of known camera), "
                    f"{len(writer.pending())} of {len(writer.chunks)} chunks to compute")
        extract(extractor, images, writer, args.batch_size, cfg.DATALOADER.NUM_WORKERS)
        writer.finish()
    except (ConfigError, ImageListError, FeatureFileError, FileExistsError, FileNotFoundError,
            UnreadableImageError) as err:
        kept = f"\n{writer.rows_done()} images' features are kept in {writer.work_dir}: run the same command " \
               f"again to continue" if writer is not None and writer.work_dir.exists() else ""
        print(f"error: {err}{kept}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        kept = f": {writer.rows_done()} images' features are kept in {writer.work_dir}, run the same command " \
               f"again to continue" if writer is not None else ""
        print(f"interrupted{kept}", file=sys.stderr)
        return 130
    print(f"wrote {len(images.names)} features of dimension {extractor.feature_dim} to {Path(args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
