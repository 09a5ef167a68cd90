"""Unknown cameras: mAP of trained models with camera embeddings when the camera is not given.

Every query and gallery image of the run's test set gets, instead of its true camera's embedding:
the mean embedding (`side_info.UNKNOWN_CAMERA`, what `FeatureExtractor` does for camera -1), no
embedding, camera 0's, a random camera's, or the average of the features over every camera (one
forward pass per camera). mAP as the evaluator computes it, with the true cameras in the protocol.
A meta-architecture that does not pass camera ids to its backbone (fast-reid's `Baseline`) gives
the same mAP in every column.
"""
import argparse
import json
import os

import numpy as np
import torch
import torch.nn.functional as F

POLICIES = ("true", "mean", "none", "camera0", "random", "average")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="training output folders (config.yaml and model_final.pth)")
    parser.add_argument("--threads", type=int, default=2)


@torch.no_grad()
def _features(model, loader, policy: str, num_cameras: int):
    feats, pids, cams = [], [], []
    for step, batch in enumerate(loader):
        images, true = batch["images"], batch["camids"]

        def run(ids):  # a copy of the images each time: fast-reid's Baseline normalises them in place
            return model({"images": images.clone()} if ids is None else {"images": images.clone(), "camids": ids})

        if policy == "none":
            out = run(None)
        elif policy == "average":
            out = sum(F.normalize(run(torch.full_like(true, c)), dim=1) for c in range(num_cameras))
        else:
            out = run({"true": true, "mean": torch.full_like(true, -1), "camera0": torch.zeros_like(true),
                       "random": torch.randint(0, num_cameras, true.shape,
                                               generator=torch.Generator().manual_seed(step))}[policy])
        feats.append(F.normalize(out, dim=1))
        pids.append(batch["targets"])
        cams.append(true)
    return torch.cat(feats), torch.cat(pids).numpy(), torch.cat(cams).numpy()


def main(args: argparse.Namespace) -> None:
    from lwtgpf.analysis.retrieval import build_eval_model
    from lwtgpf.cli import load_config
    from lwtgpf.data.build import build_test_loader
    from lwtgpf.evaluation.rank import evaluate_rank

    torch.set_num_threads(args.threads)
    print("| run | " + " | ".join(POLICIES) + " |")
    print("|---|" + "---:|" * len(POLICIES))
    for run in args.runs:
        cfg = load_config(os.path.join(run, "config.yaml"),
                          ["MODEL.WEIGHTS", os.path.join(run, "model_final.pth"), "MODEL.DEVICE", "cpu"])
        num_cameras = cfg.MODEL.BACKBONE.NUM_CAMERAS
        if not num_cameras:
            print(f"| {run} | no camera embeddings |")
            continue
        model = build_eval_model(cfg)
        loader, nq = build_test_loader(cfg, cfg.DATASETS.TESTS[0])
        maps = {}
        for policy in POLICIES:
            f, p, c = _features(model, loader, policy, num_cameras)
            dist = (2 - 2 * f[:nq] @ f[nq:].T).numpy()
            _, ap, _ = evaluate_rank(dist, p[:nq], p[nq:], c[:nq], c[nq:])
            maps[policy] = float(np.mean(ap)) * 100
        print(f"| {run} | " + " | ".join(f"{maps[p]:.2f}" for p in POLICIES) + " |", flush=True)
