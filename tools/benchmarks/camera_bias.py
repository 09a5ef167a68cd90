"""Camera bias at the start of training: neighbours and clusters of the demo model before training.

For each synthetic grid point of tools/sweep.py, the training-set features of the model of
configs/LWTGPF/synthetic.yml before training (--start pretrained: its pretrained weights; random:
random init, torch seed 0), from the images as they are and
white-balanced (INPUT.GRAY_WORLD False / True), are clustered as in the first epoch, once as they
are (CLUSTER.CAMERA_NORM none, the published recipe) and once centred per camera (center).
Reported: the share of each image's k nearest neighbours that show the same person in another
camera (what the clustering must find), and how many clusters join two cameras or more.
Identities are used for these measurements only.
"""
import argparse
import itertools
import time

import numpy as np
import torch

from lwtgpf.camera_norm import camera_normalise
from lwtgpf.clustering import knn, pseudo_labels
from lwtgpf.data.build import load_train_items
from lwtgpf.engine import Trainer
from lwtgpf.engine.cli import load_config
from lwtgpf.engine.features import extract_features
from lwtgpf.engine.hooks import ClusterHook
from sweep import GRID, START_OPTS, UNSUPERVISED, point_opts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--points", default="default,cast6,bg1,bn3", help=f"comma-separated subset of {', '.join(GRID)}")
    parser.add_argument("--seed", type=int, default=0, help="DATASETS.SYNTHETIC.SEED")
    parser.add_argument("--k", type=int, default=10, help="nearest neighbours per image")
    parser.add_argument("--start", choices=sorted(START_OPTS), default="pretrained",
                        help="the demo's pretrained weights or random init")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides of the config")


def main(args: argparse.Namespace) -> None:
    rows = []
    for point, gray_world in itertools.product(args.points.split(","), (False, True)):
        cfg = load_config(str(UNSUPERVISED), point_opts(point, args.seed) + START_OPTS[args.start] + list(args.opts)
                          + ["INPUT.GRAY_WORLD", str(gray_world)])
        torch.manual_seed(0)
        model = Trainer.build_model(cfg)
        hook = ClusterHook(cfg, load_train_items(cfg))
        features = extract_features(model.eval(), hook.loader, len(hook.items)).global_all
        for mode in ("none", "center"):
            start = time.perf_counter()
            x = camera_normalise(features, hook.cams, mode)
            seconds = time.perf_counter() - start
            nbr = knn(x, args.k + 1)[:, 1:]
            other_cam = hook.cams[nbr] != hook.cams[:, None]
            same_person = hook.gt[nbr] == hook.gt[:, None]
            c = cfg.CLUSTER
            clusters, proxies = pseudo_labels(x, hook.cams, eps=c.EPS, min_samples=c.MIN_SAMPLES, k1=c.K1, k2=c.K2,
                                              knn_backend=c.KNN)
            kept = proxies >= 0
            proxy_cluster = np.zeros(proxies.max() + 1, dtype=np.int64)
            proxy_cluster[proxies[kept]] = clusters[kept]
            joined = int((np.bincount(proxy_cluster) > 1).sum())
            rows.append(f"| {point} | {len(x)} | {'yes' if gray_world else 'no'} | {mode} | "
                        f"{100 * (same_person & other_cam).mean():.1f}% | "
                        f"{100 * same_person.mean():.1f}% | {100 * other_cam.mean():.1f}% | "
                        f"{joined} of {clusters.max() + 1} | {100 * (~kept).mean():.0f}% | {1000 * seconds:.1f} |")
            print(rows[-1], flush=True)
    print(f"\nShares of each training image's {args.k} nearest neighbours; clusters of the first epoch.\n")
    print("| point | images | grey world | CAMERA_NORM | same person, other camera | same person | other camera "
          "| clusters joining cameras | outliers | normalisation ms |")
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
