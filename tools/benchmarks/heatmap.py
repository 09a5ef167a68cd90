"""Where heat maps look: the share of heat inside the person's box on the synthetic queries.

For each method, the mean over the query images of (heat inside the person's box) / (all heat),
the heat as drawn (scaled to [0, 1], at the image's size; all-zero maps are counted apart), for a
trained model (MODEL.WEIGHTS) and for the same architecture untrained (seed 0, as the demo's
untrained model). Chance level is the mean share of the image the box covers.
"""
import argparse
import statistics
import time

import numpy as np
import torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-file", default="configs/LWTGPF/synthetic.yml")
    parser.add_argument("--weights", required=True, help="the trained model (fast-reid checkpoint)")
    parser.add_argument("--methods", default="rollout,rollout:max:0.9,gradcam,gradcam++,layercam",
                        help="comma-separated; rollout:FUSION:DISCARD_RATIO sets ANALYSIS.ROLLOUT.*")
    parser.add_argument("--num-images", type=int, default=0, help="queries used (0: all)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")


def main(args: argparse.Namespace) -> None:
    from lwtgpf.cli import load_config
    from lwtgpf.analysis.heatmap import heat_maps, heat_share_in_box
    from lwtgpf.analysis.inputs import load_batch
    from lwtgpf.analysis.retrieval import build_eval_model
    from lwtgpf.data.build import build_dataset
    from lwtgpf.data.synthetic import person_box

    cfg = load_config(args.config_file, args.opts)
    query = build_dataset(cfg, cfg.DATASETS.TESTS[0]).query
    query = query[:args.num_images] if args.num_images else query
    boxes = [person_box(path) for path, _, _ in query]
    height, width = cfg.INPUT.SIZE_TEST
    torch.manual_seed(0)
    untrained = build_eval_model(cfg)
    trained = build_eval_model(load_config(args.config_file, list(args.opts) + ["MODEL.WEIGHTS", args.weights]))
    print(f"{len(query)} queries of {cfg.DATASETS.TESTS[0]}, heat at {height}x{width}; weights {args.weights}")
    chance = []
    print("| method | untrained | trained | seconds / image (trained) | all-zero maps (untrained / trained) |")
    print("|---|---:|---:|---:|---:|")
    for spec in args.methods.split(","):
        method, *rollout = spec.split(":")
        cfg.defrost()
        cfg.ANALYSIS.ROLLOUT.HEAD_FUSION = rollout[0] if rollout else "mean"
        cfg.ANALYSIS.ROLLOUT.DISCARD_RATIO = float(rollout[1]) if len(rollout) > 1 else 0.0
        cfg.freeze()
        shares, seconds, empty = {}, 0.0, {"untrained": 0, "trained": 0}
        for name, model in (("untrained", untrained), ("trained", trained)):
            shares[name] = []
            start = time.perf_counter()
            for i in range(0, len(query), args.batch):
                chunk = query[i:i + args.batch]
                batch, originals = load_batch(cfg, [p for p, _, _ in chunk], [c for _, _, c in chunk])
                heats = heat_maps(cfg, model, batch, method)
                for heat, original, box in zip(heats, originals, boxes[i:i + args.batch]):
                    sy, sx = heat.shape[0] / original.shape[0], heat.shape[1] / original.shape[1]
                    scaled = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
                    if heat.sum() > 0:  # a CAM whose every weighted activation is negative is all zero
                        shares[name].append(heat_share_in_box(heat, scaled))
                    else:
                        empty[name] += 1
                    if len(chance) < len(query):
                        chance.append((scaled[2] - scaled[0]) * (scaled[3] - scaled[1]) / heat.size)
            seconds = (time.perf_counter() - start) / len(query)
        print(f"| {spec} | {statistics.mean(shares['untrained']):.3f} | {statistics.mean(shares['trained']):.3f} "
              f"| {seconds:.3f} | {empty['untrained']} / {empty['trained']} |", flush=True)
    print(f"chance (share of the image inside the box): {np.mean(chance):.3f}")
