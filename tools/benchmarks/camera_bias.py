"""Camera bias at the start of training: neighbours and clusters of the demo model before training.

For each synthetic grid point of tools/sweep.py, the training-set features of the model of
configs/LWTGPF/synthetic.yml before training (--start pretrained: its pretrained weights; random:
random init, torch seed 0), from the images as they are and
white-balanced (INPUT.GRAY_WORLD False / True), are clustered as in the first epoch, once as they
are (CLUSTER.CAMERA_NORM none, the published recipe) and once centred per camera (center), each
with the plain Jaccard distance and, with --jaccard plain,camera, the camera-aware one
(CLUSTER.CAMERA_JACCARD). Reported: the share of each image's k nearest neighbours that show the
same person in another camera (what the clustering must find), how many clusters join two cameras
or more, and the ARI of the clusters against the identities (outliers as singletons, as the
training log counts them). Identities are used for these measurements only.
"""
import argparse
import itertools
import time

import numpy as np
import torch

from lwtgpf.camera_norm import camera_normalise
from sklearn.metrics import adjusted_rand_score

from lwtgpf.clustering import CameraAwareK, knn, pseudo_labels
from lwtgpf.data.build import build_inference_loader, load_train_items
from lwtgpf.engine import Trainer
from lwtgpf.cli import load_config
from lwtgpf.engine.cluster_report import cross_camera_share
from lwtgpf.engine.features import extract_features
from sweep import GRID, START_OPTS, UNSUPERVISED, point_opts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--points", default="default,cast6,bg1,bn3", help=f"comma-separated subset of {', '.join(GRID)}")
    parser.add_argument("--seed", type=int, default=0, help="DATASETS.SYNTHETIC.SEED")
    parser.add_argument("--k", type=int, default=10, help="nearest neighbours per image")
    parser.add_argument("--jaccard", default="plain", help="comma-separated: plain, camera (CLUSTER.CAMERA_JACCARD)")
    parser.add_argument("--gray-world", default="no,yes", help="comma-separated: no, yes (INPUT.GRAY_WORLD)")
    parser.add_argument("--modes", default="none,center", help="comma-separated CLUSTER.CAMERA_NORM modes")
    parser.add_argument("--eps", default="", help="comma-separated DBSCAN radii (default: the config's CLUSTER.EPS)")
    parser.add_argument("--start", choices=sorted(START_OPTS), default="pretrained",
                        help="the demo's pretrained weights or random init")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides of the config")


def main(args: argparse.Namespace) -> None:
    rows = []
    grey = [{"no": False, "yes": True}[g] for g in args.gray_world.split(",")]
    for point, gray_world in itertools.product(args.points.split(","), grey):
        cfg = load_config(str(UNSUPERVISED), point_opts(point, args.seed) + START_OPTS[args.start] + list(args.opts)
                          + ["INPUT.GRAY_WORLD", str(gray_world)])
        torch.manual_seed(0)
        model = Trainer.build_model(cfg)
        items = load_train_items(cfg)
        cams = np.asarray([cam for _, _, cam in items])
        identity = np.unique([str(pid) for _, pid, _ in items], return_inverse=True)[1]
        features = extract_features(model.eval(), build_inference_loader(cfg, items), len(items)).global_all
        radii = [float(e) for e in args.eps.split(",")] if args.eps else [cfg.CLUSTER.EPS]
        for mode, jaccard, eps in itertools.product(args.modes.split(","), args.jaccard.split(","), radii):
            start = time.perf_counter()
            x = camera_normalise(features, cams, mode)
            seconds = time.perf_counter() - start
            nbr = knn(x, args.k + 1)[:, 1:]
            other_cam = cams[nbr] != cams[:, None]
            same_person = identity[nbr] == identity[:, None]
            c = cfg.CLUSTER
            camera_aware = CameraAwareK(c.CAMERA_JACCARD.K1_INTRA, c.CAMERA_JACCARD.K1_INTER, c.CAMERA_JACCARD.K2_INTRA,
                                        c.CAMERA_JACCARD.K2_INTER) if jaccard == "camera" else None
            clusters, proxies = pseudo_labels(x, cams, eps=eps, min_samples=c.MIN_SAMPLES, k1=c.K1, k2=c.K2,
                                              knn_backend=c.KNN, camera_aware=camera_aware)
            kept = proxies >= 0
            joined = round(cross_camera_share(clusters, proxies) * (clusters.max() + 1))
            singleton = np.where(kept, clusters, clusters.max() + 1 + np.arange(len(clusters)))
            rows.append(f"| {point} | {len(x)} | {'yes' if gray_world else 'no'} | {mode} | {jaccard} | {eps:g} | "
                        f"{100 * (same_person & other_cam).mean():.1f}% | "
                        f"{100 * same_person.mean():.1f}% | {100 * other_cam.mean():.1f}% | "
                        f"{joined} of {clusters.max() + 1} | {100 * (~kept).mean():.0f}% | "
                        f"{adjusted_rand_score(identity, singleton):.3f} | {1000 * seconds:.1f} |")
            print(rows[-1], flush=True)
    print(f"\nShares of each training image's {args.k} nearest neighbours; clusters of the first epoch.\n")
    print("| point | images | grey world | CAMERA_NORM | Jaccard | eps | same person, other camera | same person "
          "| other camera | clusters joining cameras | outliers | ARI | normalisation ms |")
    print("|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
