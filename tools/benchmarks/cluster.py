"""Pseudo labels: sparse k-reciprocal Jaccard + DBSCAN (ours, per kNN backend) vs the dense N x N original style.

Features come from one of several distributions (`--dist`, see `DISTRIBUTIONS`): `generator`,
the default, is `make_features`, synthetic re-id-like clusters (about N / 16 identities seen by
2-6 of 6 cameras, plus 10% noise images) of width 768; `zipf`, `noise` and `camera` are harder
synthetic sets (Zipf-sized identities with camera offsets, mostly noise, strong camera offsets;
`mixture`), and `model` the demo model's features of augmented training images (`model_features`,
cached under `--cache`). Each implementation runs in its own subprocess, which
reports its wall time and its peak resident memory during the call (/proc VmHWM, reset after
the data are built), so the measurements never mix; ours also reports every stage (kNN,
Jaccard, DBSCAN, proxies: seconds, peak host memory, peak CUDA memory of torch's allocator,
which does not see faiss-gpu's). `--knn torch,approx` runs one subprocess per backend and
compares each one's labels with the first's (ARI with outliers as singletons, outlier counts).
A `--knn` entry `faiss_ivf:NPROBE` runs faiss's own IndexIVFFlat as the kNN stage only (build
and search of every row's k1 + 10 neighbours, recall@k1 against exact search), printed in a table
of its own next to our kNN stages.
The dense baseline is run last; it needs about 3 N^2 x 4 bytes (13 GB at N = 32,621) and is
skipped when the machine lacks them.
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTIONS = ("generator", "zipf", "noise", "camera", "model")
# Parameters of the synthetic distributions built by `mixture` (generator is `make_features`).
# Scales are norms: identity centres have norm ~1, `shift` is the per-(identity, camera) shift,
# `spread` the within-identity noise of every image, `camera_offset` the per-camera offset
# vector shared by all images of a camera; `noise` is the share of noise images.
MIXTURES = {
    # Zipf-sized identities (most of 1-5 images, a few of thousands), per-camera offsets, 10% noise:
    # the within-identity spread leaves most points outliers, as early epochs on hard data do
    "zipf": dict(sizes="zipf", exponent=2.0, max_size=2000, min_cams=1, noise=0.1, shift=0.6, spread=3.1,
                 camera_offset=0.5),
    # 60% of the images uniform on the sphere, the rest in small identities
    "noise": dict(sizes="uniform", min_size=2, max_size=6, min_cams=1, noise=0.6, shift=0.6, spread=0.7,
                  camera_offset=0.0),
    # identities as the generator's (16 images on average, 2-6 cameras) under camera offsets as
    # large as the spread of the identity centres: cross-camera pairs of one identity lie as far
    # apart as same-camera pairs of two, so nearest neighbours tend to share the camera
    "camera": dict(sizes="uniform", min_size=8, max_size=24, min_cams=2, noise=0.1, shift=0.6, spread=0.7,
                   camera_offset=1.0),
}
# model: the demo model of `make demo` on its training images
DEMO_CONFIG = ROOT / "logs/demo/lwtgpf/config.yaml"
DEMO_WEIGHTS = ROOT / "logs/demo/lwtgpf/model_final.pth"
DEMO_IMAGES = ROOT / "datasets/SyntheticReID/c6_tr200_te100_n20_s0/bounding_box_train"
DEFAULT_CACHE = "~/.cache/lwtgpf/cluster_bench"
# augmentation of the model distribution: crop area share, crop aspect (relative to the image's),
# brightness / contrast / saturation factors, rotation in degrees
AUGMENT = dict(crop_scale=(0.7, 1.0), crop_ratio=(3 / 4, 4 / 3), flip=0.5, brightness=0.2, contrast=0.2,
               saturation=0.2, degrees=5.0)
_ROWS = 4096  # rows per generated block
_IDS = 1024  # identities per generated block (their per-camera shifts are drawn together)
_BATCH = 64  # images per forward pass of the model distribution


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=12936, help="number of features N")
    parser.add_argument("--dim", type=int, default=768, help="feature width D (synthetic distributions)")
    parser.add_argument("--cameras", type=int, default=6, help="cameras (synthetic distributions)")
    parser.add_argument("--dist", default="generator", choices=DISTRIBUTIONS,
                        help="feature distribution: generator (make_features, the default), zipf, noise, camera "
                             "(harder synthetic sets), model (the demo model on augmented training images)")
    parser.add_argument("--cache", default=DEFAULT_CACHE, help="model: folder of the cached features")
    parser.add_argument("--eps", type=float, default=0.5, help="DBSCAN radius")
    parser.add_argument("--min-samples", type=int, default=4, help="DBSCAN min_samples")
    parser.add_argument("--k1", type=int, default=20, help="k-reciprocal neighbourhood")
    parser.add_argument("--k2", type=int, default=6, help="query-expansion neighbourhood")
    parser.add_argument("--knn", default="auto",
                        help="comma-separated kNN backends (auto, faiss, torch, approx, or approx:NPROBE), "
                             "each run on its own, with +camera: the camera-aware Jaccard distance "
                             "(CLUSTER.CAMERA_JACCARD at its defaults); faiss_ivf:NPROBE times faiss's "
                             "IndexIVFFlat as the kNN stage only")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the kNN search runs")
    parser.add_argument("--fp16", action="store_true", help="faiss on a GPU keeps the features in float16")
    parser.add_argument("--nlist", type=int, default=0, help="approx, faiss_ivf: k-means cells (0: derived from N)")
    parser.add_argument("--nprobe", type=int, default=32,
                        help="approx: cells scanned per query (0: chosen for --target-recall; approx:NPROBE "
                             "overrides it per entry); faiss_ivf: the probes of an entry without :NPROBE")
    parser.add_argument("--target-recall", type=float, default=0.95,
                        help="approx with 0 probes: the share of k-reciprocal pairs to find")
    parser.add_argument("--max-scan", type=float, default=0.25,
                        help="approx with 0 probes: above this share of rows scanned, search exactly")
    parser.add_argument("--recall-sample", type=int, default=1000, help="approx: rows whose recall@k1 is measured")
    parser.add_argument("--skip-naive", action="store_true", help="time ours only")
    parser.add_argument("--threads", type=int, default=0, help="torch / faiss CPU threads (0: leave as is)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the features")
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


def _unit(block: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm in float64 (as lwtgpf.clustering normalises), as float32."""
    block = block.astype(np.float64)
    return (block / np.linalg.norm(block, axis=1, keepdims=True)).astype(np.float32)


def _identity_sizes(rng: np.random.Generator, total: int, sizes: str, exponent: float = 2.0, min_size: int = 1,
                    max_size: int = 2000) -> np.ndarray:
    """Images per identity, summing to `total`: Zipf(exponent) truncated at max_size, or uniform in
    min_size..max_size; the last identity takes what is left."""
    if sizes not in ("zipf", "uniform"):
        raise ValueError(f"identity sizes are 'zipf' or 'uniform', got {sizes!r}")
    if total <= 0:
        return np.zeros(0, dtype=np.int64)
    drawn, count = [], 0
    while count < total:
        if sizes == "zipf":
            part = rng.zipf(exponent, _ROWS)
            part = part[part <= max_size]  # truncated, not clipped: no pile of identities at max_size
        else:
            part = rng.integers(min_size, max_size + 1, _ROWS)
        drawn.append(part)
        count += int(part.sum())
    out = np.concatenate(drawn).astype(np.int64)
    ends = np.cumsum(out)
    last = int(np.searchsorted(ends, total))  # the identity that reaches the total
    out = out[:last + 1]
    if len(out):
        out[-1] -= int(ends[last]) - total
    return out


def mixture(n: int, dim: int, cameras: int, seed: int, sizes: str = "zipf", exponent: float = 2.0,
            min_size: int = 1, max_size: int = 2000, min_cams: int = 1, noise: float = 0.1, shift: float = 0.6,
            spread: float = 0.7, camera_offset: float = 0.0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit features [n, dim] float32, cameras [n] int64 and identities [n] int64 (-1: noise).

    Identity sizes come from `_identity_sizes`; each identity is seen by a random subset of
    min_cams..cameras cameras (at most one per image), each image by one camera of that subset.
    An image of identity p in camera c is centre_p + shift_(p,c) + spread * g + offset_c (g a
    Gaussian of norm ~1), a noise image a uniform direction of the same typical norm plus offset_c
    (uniform on the sphere without offsets). Identities are generated one block after the other
    and their images written to rows in random order, so memory stays at the output plus blocks
    of at most _IDS identities or _ROWS images."""
    if not 0 <= noise <= 1:
        raise ValueError(f"the noise share must lie in [0, 1], got {noise}")
    layout, vectors = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    scale = 1 / np.sqrt(dim)
    num_noise = int(round(noise * n))
    count = _identity_sizes(layout, n - num_noise, sizes, exponent, min_size, max_size)
    ids = len(count)
    seen = np.argsort(layout.random((ids, cameras)), axis=1)  # each identity's cameras, in random order
    num_seen = np.minimum(layout.integers(min_cams, cameras + 1, ids), np.maximum(count, 1))
    pid = np.repeat(np.arange(ids), count)  # the identity of each generated image, identity by identity
    cams_of = seen[pid, (layout.random(len(pid)) * num_seen[pid]).astype(np.int64)]
    row = layout.permutation(n)  # where each generated image lands (identities first, then noise)
    noise_cams = layout.integers(0, cameras, num_noise)
    offsets = vectors.standard_normal((cameras, dim), dtype=np.float32) * np.float32(camera_offset * scale)

    x = np.empty((n, dim), dtype=np.float32)
    ends = np.cumsum(count)
    first = 0
    while first < ids:
        start = int(ends[first - 1]) if first else 0
        last = min(max(first + 1, int(np.searchsorted(ends, start + _ROWS, side="right"))), first + _IDS, ids)
        stop = int(ends[last - 1])
        centres = vectors.standard_normal((last - first, dim), dtype=np.float32) * np.float32(scale)
        shifts = vectors.standard_normal((last - first, cameras, dim), dtype=np.float32) * np.float32(shift * scale)
        for lo in range(start, stop, _ROWS):  # a single identity may hold more than _ROWS images
            hi = min(lo + _ROWS, stop)
            p, c = pid[lo:hi] - first, cams_of[lo:hi]
            block = centres[p] + shifts[p, c] + offsets[c]
            block += vectors.standard_normal((hi - lo, dim), dtype=np.float32) * np.float32(spread * scale)
            x[row[lo:hi]] = _unit(block)
        first = last
    radius = np.float32(np.sqrt(1 + shift ** 2 + spread ** 2))
    base = n - num_noise
    for lo in range(0, num_noise, _ROWS):
        hi = min(lo + _ROWS, num_noise)
        block = _unit(vectors.standard_normal((hi - lo, dim), dtype=np.float32)) * radius + offsets[noise_cams[lo:hi]]
        x[row[base + lo:base + hi]] = _unit(block)
    cams = np.empty(n, dtype=np.int64)
    cams[row[:base]], cams[row[base:]] = cams_of, noise_cams
    labels = np.full(n, -1, dtype=np.int64)
    labels[row[:base]] = pid
    return x, cams, labels


def _camera_of(path: Path) -> int:
    """The 0-based camera of a Market-style name `PPPP_cC_...`."""
    match = re.search(r"_c(\d+)", path.name)
    if match is None:
        raise ValueError(f"{path}: not a Market-style image name (PPPP_cC_...), so its camera is unknown")
    return int(match.group(1)) - 1


def model_cache_paths(n: int, seed: int, cache, weights) -> Tuple[Path, Path]:
    """The cached features and cameras of the model distribution: keyed by N, the seed and the
    weights file's size and modification time."""
    info = os.stat(weights)
    stem = f"model_n{n}_seed{seed}_w{info.st_size}_{info.st_mtime_ns}"
    folder = Path(os.path.expanduser(str(cache)))
    return folder / f"{stem}.npy", folder / f"{stem}_cams.npy"


def augment(image, draws: np.ndarray):
    """`image` (PIL) under one augmentation, from 9 uniform draws in [0, 1): a resized crop of
    AUGMENT's area share and aspect (relative to the image's) back to the image's size, a
    horizontal flip, brightness / contrast / saturation jitter, a small rotation."""
    import torchvision.transforms.v2.functional as TF

    a = AUGMENT
    width, height = image.size
    area = a["crop_scale"][0] + draws[0] * (a["crop_scale"][1] - a["crop_scale"][0])
    ratio = math.exp(math.log(a["crop_ratio"][0]) + draws[1] * math.log(a["crop_ratio"][1] / a["crop_ratio"][0]))
    w = min(width, max(1, round(width * math.sqrt(area * ratio))))
    h = min(height, max(1, round(height * math.sqrt(area / ratio))))
    top, left = int(draws[2] * (height - h + 1)), int(draws[3] * (width - w + 1))
    image = TF.resized_crop(image, top, left, h, w, [height, width])
    if draws[4] < a["flip"]:
        image = TF.horizontal_flip(image)
    image = TF.adjust_brightness(image, 1 + a["brightness"] * (2 * draws[5] - 1))
    image = TF.adjust_contrast(image, 1 + a["contrast"] * (2 * draws[6] - 1))
    image = TF.adjust_saturation(image, 1 + a["saturation"] * (2 * draws[7] - 1))
    return TF.rotate(image, a["degrees"] * (2 * draws[8] - 1), interpolation=TF.InterpolationMode.BILINEAR)


def model_features(n: int, seed: int, cache=DEFAULT_CACHE, config=DEMO_CONFIG, weights=DEMO_WEIGHTS,
                   images=DEMO_IMAGES) -> Tuple[np.ndarray, np.ndarray]:
    """Features [n, D] float32 (unit rows) and cameras [n] int64 of the model `config` + `weights`
    (lwtgpf.FeatureExtractor) on the training images in `images`, scaled up to n rows by
    augmentation: row i is one image (every image about n / count times, in an order drawn with
    `seed`) under its own random augmentation (`augment`, drawn with `seed`), with that image's
    camera. Cached in `cache` (`model_cache_paths`) and read from there when present."""
    import torch

    import lwtgpf
    from lwtgpf.data.io import read_image

    for path in (config, weights, images):
        if not os.path.exists(path):
            raise FileNotFoundError(f"the model distribution needs {path}: run `make demo` first")
    feature_path, cams_path = model_cache_paths(n, seed, cache, weights)
    if feature_path.exists() and cams_path.exists():
        return np.load(feature_path), np.load(cams_path)
    files = sorted(p for p in Path(images).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise FileNotFoundError(f"no images in {images}: run `make demo` first")
    cameras = np.array([_camera_of(p) for p in files], dtype=np.int64)
    order_rng, augment_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    order = order_rng.permutation(np.arange(n) % len(files))
    extractor = lwtgpf.FeatureExtractor(str(config), str(weights))
    cams = cameras[order]
    extractor.camera_ids(cams, n)  # checks the cameras against the model's
    x = np.empty((n, extractor.feature_dim), dtype=np.float32)
    for start in range(0, n, _BATCH):
        stop = min(start + _BATCH, n)
        draws = augment_rng.random((stop - start, 9))
        batch = torch.stack([extractor.transform(augment(read_image(str(files[i]), "RGB"), d)).float()
                             for i, d in zip(order[start:stop], draws)])
        x[start:stop] = extractor.embed(batch, torch.from_numpy(cams[start:stop]))
    feature_path.parent.mkdir(parents=True, exist_ok=True)
    for path, value in ((cams_path, cams), (feature_path, x)):  # the features last: they mark the entry done
        partial = path.with_name(path.name + ".partial.npy")
        np.save(partial, value)
        os.replace(partial, path)
    return x, cams


def make_distribution(name: str, n: int, dim: int, cameras: int, seed: int, cache=DEFAULT_CACHE,
                      **model_files) -> Tuple[np.ndarray, np.ndarray]:
    """Unit features [n, D] float32 and cameras [n] int64 of distribution `name` (DISTRIBUTIONS);
    `dim` and `cameras` apply to the synthetic ones, `cache` and `model_files` (config, weights,
    images of `model_features`) to the model."""
    if name == "generator":
        return make_features(n, dim, cameras, seed)
    if name in MIXTURES:
        return mixture(n, dim, cameras, seed, **MIXTURES[name])[:2]
    if name == "model":
        return model_features(n, seed, cache, **model_files)
    raise ValueError(f"unknown distribution {name!r}: one of {', '.join(DISTRIBUTIONS)}")


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, tuple):
        return "-".join(map(_format, value))
    return str(value)


def describe_distribution(name: str, args: argparse.Namespace) -> str:
    """The distribution and its parameters, for the header line."""
    if name == "generator":
        return (f"generator (make_features: N/16 identities, 2-{args.cameras} cameras each, shift 0.6, "
                f"spread 0.7, noise 0.1)")
    if name in MIXTURES:
        return f"{name} (" + ", ".join(f"{k} {_format(v)}" for k, v in MIXTURES[name].items()) + ")"
    augmentation = ", ".join(f"{k} {_format(v)}" for k, v in AUGMENT.items())
    return (f"model ({os.path.relpath(DEMO_WEIGHTS, ROOT)} on the images of {os.path.relpath(DEMO_IMAGES, ROOT)}, "
            f"augmented: {augmentation}; cache {os.path.expanduser(args.cache)})")


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


def _reset_peak() -> float:
    """Restarts the peak resident memory (VmHWM) from the current size, which it returns in GB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _proc_status("VmRSS")


def _describe(backend: str, stats: Dict[str, float]) -> str:
    """How the kNN stage searched, from pseudo_labels' statistics (knn_cells ... of the approx plan)."""
    if "knn_cells" not in stats:
        return backend
    cells = int(stats["knn_cells"])
    scanned = stats.get("knn_scanned", float("nan"))
    if stats.get("knn_fallback"):
        return f"approx fell back to exact search ({cells} cells would scan {scanned:.0%} of the rows)"
    text = f"approx (inverted file, {cells} cells, {int(stats['knn_nprobe'])} probed"
    if "knn_sample_recall" in stats:
        text += f" for sample recall {stats['knn_sample_recall']:.3f}"
    if not math.isnan(scanned):
        text += f", {scanned:.1%} of the rows scanned per query"
    return text + ", reverse neighbours)"


def _ivf_probes(entry: str, args: argparse.Namespace) -> int:
    """The probes of a `faiss_ivf[:NPROBE]` entry of --knn."""
    name, _, nprobe = entry.partition(":")
    probes = int(nprobe) if nprobe.isdigit() else args.nprobe if not nprobe else 0
    if name != "faiss_ivf" or probes < 1:
        raise ValueError(f"--knn entry {entry!r}: write faiss_ivf:NPROBE (NPROBE >= 1), or give --nprobe")
    return probes


def faiss_ivf_stage(x: np.ndarray, k1: int, nprobe: int, nlist: int = 0, recall_sample: int = 1000) -> Dict:
    """faiss's IndexIVFFlat (inner product, on the CPU) as the clustering's kNN stage: build (spherical
    k-means cells, nlist 0 as lwtgpf.knn.KnnSearch derives it, trained on 64 rows per cell drawn with
    seed 0, as lwtgpf.knn.kmeans samples, then every row added) and search of every row's k1 + 10
    best rows. Returns the seconds of each, recall@k1 against exact search (faiss flat) on
    `recall_sample` rows drawn with seed 1 (NaN for none), and a description."""
    import faiss

    from lwtgpf.knn import RERANK_MARGIN, KnnSearch, recall, sample_rows

    n, dim = x.shape
    nlist = KnnSearch(nlist=nlist).cells(n)
    start = time.perf_counter()
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed, index.cp.spherical = 0, True
    sample = min(n, 64 * nlist)
    train = x if sample == n else x[np.sort(np.random.default_rng(0).choice(n, sample, replace=False))]
    index.train(train)
    index.add(x)
    build = time.perf_counter() - start
    index.nprobe = min(nprobe, nlist)
    start = time.perf_counter()
    found = index.search(x, min(k1 + RERANK_MARGIN, n))[1]
    search = time.perf_counter() - start
    reached = float("nan")
    if recall_sample:
        rows = sample_rows(n, recall_sample, 1)
        exact = faiss.IndexFlatIP(dim)
        exact.add(x)
        reached = recall(found[rows, :min(k1, n)], exact.search(x[rows], min(k1, n))[1])
    return dict(build_seconds=build, search_seconds=search, seconds=build + search, recall=reached,
                describe=f"faiss IndexIVFFlat (CPU, {nlist} cells, {index.nprobe} probed, spherical k-means "
                         f"on {sample} rows)")


def _worker(args: argparse.Namespace) -> None:
    import torch

    import lwtgpf  # noqa: F401
    from lwtgpf.clustering import STAGES, CameraAwareK, NoClustersError, pseudo_labels
    from lwtgpf.knn import KnnSearch

    if args.threads:
        import faiss

        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    x, cams = make_distribution(args.dist, args.n, args.dim, args.cameras, args.seed, args.cache)
    if args.worker.startswith("faiss_ivf"):
        base = _reset_peak()
        result = faiss_ivf_stage(x, args.k1, _ivf_probes(args.worker, args), args.nlist, args.recall_sample)
        result.update(peak_gb=_proc_status("VmHWM"), base_gb=base)
        with open(args.out, "w") as f:
            json.dump(result, f)
        return
    if args.worker != "naive" and args.device == "cuda":
        x = torch.from_numpy(x).cuda()
    base = _reset_peak()  # the peak covers the call only
    start = time.perf_counter()
    stats, no_cluster = {}, False
    if args.worker == "naive":
        labels, proxies = naive_pseudo_labels(x, cams, args.eps, args.min_samples, args.k1, args.k2)
    else:
        entry, _, variant = args.worker.partition("+")
        if variant not in ("", "camera"):
            raise ValueError(f"--knn entry {args.worker!r}: the only variant is +camera")
        backend, _, nprobe = entry.partition(":")
        search = KnnSearch(backend, fp16=args.fp16, nlist=args.nlist, nprobe=int(nprobe or args.nprobe),
                           recall_sample=args.recall_sample, target_recall=args.target_recall, max_scan=args.max_scan)
        try:
            labels, proxies = pseudo_labels(x, cams, args.eps, args.min_samples, args.k1, args.k2, search, stats,
                                            camera_aware=CameraAwareK() if variant else None)
            stats["describe"] = _describe(backend, stats) + (", camera-aware Jaccard" if variant else "")
        except NoClustersError as e:  # hard sets at small N: every point an outlier
            print(f"ours ({args.worker}): {e}", file=sys.stderr)
            labels = proxies = np.full(len(cams), -1, dtype=np.int64)
            no_cluster = True
    seconds = time.perf_counter() - start
    np.save(args.out + ".npy", labels)
    # pseudo_labels restarts the peak at every stage: the call's peak is the largest of them
    peak = max([_proc_status("VmHWM")] + [v for k, v in stats.items() if k.endswith("_host_gb")])
    result = dict(seconds=seconds, peak_gb=peak, base_gb=base, no_cluster=no_cluster,
                  clusters=int(labels.max()) + 1, outliers=int((labels < 0).sum()), proxies=int(proxies.max()) + 1,
                  stats={k: v for k, v in stats.items() if k.split("_")[0] in STAGES + ("knn", "describe")})
    with open(args.out, "w") as f:
        json.dump(result, f)


def _run(name: str, args: argparse.Namespace, tmp: str) -> Dict[str, float]:
    out = os.path.join(tmp, name.replace(":", "_").replace("+", "_"))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--out", out]
    for key in ("n", "dim", "cameras", "dist", "cache", "eps", "k1", "k2", "threads", "seed", "device", "nlist",
                "nprobe"):
        cmd += [f"--{key}", str(getattr(args, key))]
    cmd += ["--min-samples", str(args.min_samples), "--recall-sample", str(args.recall_sample),
            "--target-recall", str(args.target_recall), "--max-scan", str(args.max_scan)]
    if args.fp16:
        cmd.append("--fp16")
    subprocess.run(cmd, check=True)
    with open(out) as f:
        result = json.load(f)
    if os.path.exists(out + ".npy"):
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


def _prepare(args: argparse.Namespace) -> Tuple[int, int]:
    """(D, cameras) of the distribution; the model's features are computed (or found) and cached
    here, so that no worker times them."""
    if args.dist != "model":
        return args.dim, args.cameras
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    x, cams = make_distribution("model", args.n, args.dim, args.cameras, args.seed, args.cache)
    print(f"model features [{x.shape[0]}, {x.shape[1]}] ready in {time.perf_counter() - start:.1f} s "
          f"({model_cache_paths(args.n, args.seed, args.cache, DEMO_WEIGHTS)[0]})")
    return x.shape[1], int(cams.max()) + 1


def main(args: argparse.Namespace) -> None:
    if args.worker:
        _worker(args)
        return
    from sklearn.metrics import adjusted_rand_score

    entries = [entry for entry in args.knn.split(",") if entry]
    stage_only = [entry for entry in entries if entry.startswith("faiss_ivf")]
    backends = [entry for entry in entries if entry not in stage_only]
    for entry in stage_only:
        _ivf_probes(entry, args)  # a bad entry fails before anything runs
    dim, cameras = _prepare(args)
    print(f"cluster: dist={describe_distribution(args.dist, args)} seed={args.seed} N={args.n} D={dim} "
          f"cameras={cameras} eps={args.eps} min_samples={args.min_samples} k1={args.k1} k2={args.k2} "
          f"device={args.device} cpus={os.cpu_count()}")
    results, stages = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            results[f"ours ({backend})"] = _run(backend, args, tmp)
        for entry in stage_only:
            stages[entry] = _run(entry, args, tmp)
        need = 3 * args.n ** 2 * 4 / 2 ** 30 + 1.0
        if args.skip_naive:
            print("naive baseline skipped (--skip-naive)")
        elif _available_gb() < need:
            print(f"naive baseline skipped: needs about {need:.1f} GB, {_available_gb():.1f} GB available")
        else:
            results["naive (dense)"] = _run("naive", args, tmp)
    print(f"{'implementation':<20}{'seconds':>10}{'peak GB':>10}{'base GB':>10}{'clusters':>10}{'outliers':>10}"
          f"{'outlier %':>10}{'proxies':>10}")
    for name, r in results.items():
        print(f"{name:<20}{r['seconds']:>10.1f}{r['peak_gb']:>10.2f}{r['base_gb']:>10.2f}"
              f"{r['clusters']:>10}{r['outliers']:>10}{100 * r['outliers'] / args.n:>10.1f}{r['proxies']:>10}")
    print("stages (seconds / peak host GB [/ peak torch CUDA GB]):")
    for name, r in results.items():
        stats = r["stats"]
        if r.get("no_cluster"):
            print(f"  {name}: no cluster formed, every point an outlier (outlier ratio 1.000)")
        if "knn_seconds" not in stats:  # the naive baseline, or no cluster formed
            continue
        cells = []
        for stage in ("knn", "jaccard", "dbscan", "proxies"):
            cell = f"{stage} {stats[stage + '_seconds']:.1f}s / {stats[stage + '_host_gb']:.2f}"
            if stage + "_device_gb" in stats:
                cell += f" / {stats[stage + '_device_gb']:.2f}"
            if stage == "knn" and "knn_plan_seconds" in stats:  # where the kNN stage's time goes
                cell += (f" (plan {stats['knn_plan_seconds']:.1f}s, search and re-rank "
                         f"{stats['knn_search_seconds']:.1f}s, reverse {stats['knn_reverse_seconds']:.1f}s)")
            cells.append(cell)
        recall = f"; recall@{args.k1} {stats['knn_recall']:.4f} on {args.recall_sample} rows" if "knn_recall" in stats else ""
        print(f"  {name}: {stats['describe']}: " + ", ".join(cells) + recall +
              f"; outlier ratio {r['outliers'] / args.n:.3f}")
    if stage_only:
        print(f"kNN stage only (seconds, peak host GB, recall@{args.k1} on {args.recall_sample} rows against exact "
              f"search; ours: the same stage of the runs above):")
        print(f"{'backend':<20}{'seconds':>10}{'peak GB':>10}{'recall':>10}  search")
        for name, r in stages.items():
            print(f"{name:<20}{r['seconds']:>10.1f}{r['peak_gb']:>10.2f}{r['recall']:>10.4f}  {r['describe']}: "
                  f"build {r['build_seconds']:.1f}s, search {r['search_seconds']:.1f}s")
        for name, r in results.items():
            stats = r["stats"]
            if "knn_seconds" in stats:
                recall = f"{stats['knn_recall']:>10.4f}" if "knn_recall" in stats else f"{'-':>10}"
                print(f"{name:<20}{stats['knn_seconds']:>10.1f}{stats['knn_host_gb']:>10.2f}{recall}  "
                      f"{stats['describe']}")
    names = list(results)
    for name in names[1:]:
        first, r = results[names[0]], results[name]
        print(f"{name} vs {names[0]}: time x{first['seconds'] / r['seconds']:.2f} faster, peak memory "
              f"x{first['peak_gb'] / r['peak_gb']:.2f} lower, ARI (outliers as singletons) "
              f"{adjusted_rand_score(_singletons(first['labels']), _singletons(r['labels'])):.4f}, outliers "
              f"{r['outliers']} vs {first['outliers']} ({100 * (r['outliers'] - first['outliers']) / max(first['outliers'], 1):+.1f}%)")


if __name__ == "__main__":
    # Worker entry: `_run` starts this file in a fresh process for each implementation.
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    main(parser.parse_args())
