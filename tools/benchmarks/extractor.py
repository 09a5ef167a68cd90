"""FeatureExtractor throughput on CPU: images per second of the torch and ONNX Runtime backends.

For each config, a randomly initialised model (weights do not change the cost) is saved and loaded
by `lwtgpf.FeatureExtractor` with each backend; both embed the same batch of preprocessed 0-255
images (camera unknown, the mean embedding), in alternation so that both see the same machine load.
The median of `--repeats` timed batches gives images per second; the largest difference between
the two backends' features is printed as well. Preprocessing (image decoding and the test transform)
is timed on its own, per image, from PNG files of the model's input size.
"""
import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch
from PIL import Image


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--configs", default="configs/LWTGPF/synthetic.yml,configs/LWTGPF/market.yml",
                        help="comma-separated configs (the demo size and LewinViT-S by default)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="timed batches of each backend")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (ONNX Runtime uses its default)")


def _seconds(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main(args: argparse.Namespace) -> None:
    import lwtgpf
    from fastreid.modeling.meta_arch import build_model
    from lwtgpf.cli import load_config

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} torch threads, batch {args.batch_size}, "
          f"median of {args.repeats} batches")
    print("| config | model | input | torch img/s | ONNX Runtime img/s | ORT / torch | max abs diff | "
          "preprocess img/s |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for config in args.configs.split(","):
        opts = ["MODEL.BACKBONE.PRETRAIN", "False", "MODEL.DEVICE", "cpu"]
        torch.manual_seed(0)
        model = build_model(load_config(config, opts))
        params = sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6
        with tempfile.TemporaryDirectory() as tmp:
            weights = os.path.join(tmp, "model.pth")
            torch.save({"model": model.state_dict()}, weights)
            del model
            extractors = {backend: lwtgpf.FeatureExtractor(config, weights, backend=backend, opts=opts,
                                                           batch_size=args.batch_size)
                          for backend in ("torch", "onnxruntime")}
            size = extractors["torch"].image_size
            generator = torch.Generator().manual_seed(0)
            images = torch.rand(args.batch_size, 3, *size, generator=generator) * 255
            camids = torch.full((args.batch_size,), -1)
            outputs = {name: e.embed(images, camids) for name, e in extractors.items()}  # warm-up
            diff = float(np.abs(outputs["torch"] - outputs["onnxruntime"]).max())
            times = {name: [] for name in extractors}
            for _ in range(args.repeats):
                for name, extractor in extractors.items():
                    times[name].append(_seconds(lambda: extractor.embed(images, camids)))
            rate = {name: args.batch_size / statistics.median(t) for name, t in times.items()}
            paths = []
            for i in range(args.batch_size):
                path = os.path.join(tmp, f"{i:04d}.png")
                Image.fromarray(np.random.default_rng(i).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
                paths.append(path)
            prep = len(paths) / _seconds(lambda: extractors["torch"].preprocess(paths))
        name = os.path.splitext(os.path.basename(config))[0]
        print(f"| {name} | {params:.1f}M | {size[0]}x{size[1]} | {rate['torch']:.1f} | {rate['onnxruntime']:.1f} | "
              f"{rate['onnxruntime'] / rate['torch']:.2f} | {diff:.1e} | {prep:.0f} |", flush=True)
