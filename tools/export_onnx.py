#!/usr/bin/env python
"""Export a trained model to ONNX and check it against PyTorch with ONNX Runtime.

    python tools/export_onnx.py --config-file configs/LWTGPF/synthetic.yml --output lwtgpf.onnx \\
        MODEL.WEIGHTS logs/LWTGPF/synthetic/model_final.pth

The graph takes `images` float [B, 3, H, W] in 0-255 (INPUT.SIZE_TEST, as fast-reid's loaders
give them, normalisation inside) and `camids` int64 [B] (0-based; a model without camera
embeddings ignores them), and returns `features`, the retrieval
feature of evaluation; B is dynamic. Then ONNX Runtime and PyTorch run the same images (the first
queries of DATASETS.TESTS[0], or random ones with --random-inputs) at --batch-size and at batch 1;
the largest absolute difference is printed and the exit status is 1 when it exceeds --tolerance
(default 1e-4 in fp32, 5e-3 with --half, where both run in fp16).
"""
import argparse
import logging
import sys

import lwtgpf  # noqa: F401  (fixes fastreid's imports, registers our modules)
import torch
from fastreid.utils.logger import setup_logger

from lwtgpf.analysis.cli import add_overrides, parse_args
from lwtgpf.cli import load_config
from lwtgpf.analysis.export import export_onnx, onnx_session, parity
from lwtgpf.analysis.inputs import load_batch
from lwtgpf.analysis.retrieval import build_eval_model
from lwtgpf.data.build import build_dataset

logger = logging.getLogger("lwtgpf.export_onnx")


def parity_inputs(cfg, batch_size: int, random_inputs: bool):
    if random_inputs:
        generator = torch.Generator().manual_seed(0)
        images = torch.rand(batch_size, 3, *cfg.INPUT.SIZE_TEST, generator=generator) * 255
        cams = max(cfg.MODEL.BACKBONE.NUM_CAMERAS, 1)
        return images, torch.randint(0, cams, (batch_size,), generator=generator)
    query = build_dataset(cfg, cfg.DATASETS.TESTS[0]).query[:batch_size]
    batch, _ = load_batch(cfg, [path for path, _, _ in query], [cam for _, _, cam in query])
    return batch["images"], batch["camids"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--output", required=True, help="the .onnx file to write")
    parser.add_argument("--batch-size", type=int, default=4, help="images of the parity check (and the export's example)")
    parser.add_argument("--half", action="store_true", help="export fp16 weights and images")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--tolerance", type=float, default=None, help="largest absolute difference accepted")
    parser.add_argument("--random-inputs", action="store_true", help="check parity on random images")
    add_overrides(parser)
    args = parse_args(parser, argv)
    setup_logger(name="fastreid")
    setup_logger(name="lwtgpf", abbrev_name="lwtgpf")
    cfg = load_config(args.config_file, args.opts)
    tolerance = args.tolerance if args.tolerance is not None else (5e-3 if args.half else 1e-4)

    model = build_eval_model(cfg)
    exported = export_onnx(model, args.output, tuple(cfg.INPUT.SIZE_TEST), args.batch_size, args.half, args.opset)
    logger.info(f"wrote {args.output}")
    session = onnx_session(args.output)
    images, camids = parity_inputs(cfg, args.batch_size, args.random_inputs)
    worst = max(parity(session, exported, images, camids), parity(session, exported, images[:1], camids[:1]))
    precision = "fp16" if args.half else "fp32"
    print(f"ONNX Runtime vs PyTorch ({precision}, batch {len(images)} and 1): max abs difference {worst:.3g} "
          f"(tolerance {tolerance:g})")
    if worst > tolerance:
        print(f"PARITY FAILED: {worst:.3g} > {tolerance:g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
