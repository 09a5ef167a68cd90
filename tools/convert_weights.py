#!/usr/bin/env python
"""Convert a checkpoint of the original LWTGPF code into a fast-reid checkpoint of this package.

    python tools/convert_weights.py runs/logs/market/50.pt pretrained/lwtgpf_market.pth
    python tools/train_net.py --config-file configs/LWTGPF/market.yml --eval-only \\
        MODEL.WEIGHTS pretrained/lwtgpf_market.pth

The input is what the original's `Csu/utils/checkpoint_io.py` saves (`{'model': ..., 'optimizer': ...,
'lr_scheduler': ..., 'epoch': ...}`, or the bare state dict), read with `weights_only=True`; the
optimizer and scheduler are ignored. The output (`{'model': state_dict}`) loads into
`build_model(cfg)` with every tensor used. Passing the original file straight as MODEL.WEIGHTS works
too: it is converted on load.
"""
import argparse
import os
import sys

import torch

import lwtgpf  # noqa: F401  (fastreid compatibility first)
from lwtgpf.atomic import atomic_write
from lwtgpf.modeling.original import convert_original, original_state_dict
from lwtgpf.weights import WeightsError, read_weights


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="checkpoint written by the original LWTGPF code (.pt / .pth)")
    parser.add_argument("output", help="fast-reid checkpoint to write")
    parser.add_argument("--num-views", type=int, default=0,
                        help="views the original model was trained with (its camera table then has cameras x "
                             "views rows); 0 for the Re-ID benchmarks")
    parser.add_argument("--no-local-enhance", action="store_true",
                        help="write no zero local-enhancement tensors (for MODEL.BACKBONE.LEWINVIT.LOCAL_ENHANCE False)")
    parser.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    args = parser.parse_args(argv)

    if not os.path.isfile(args.input):
        parser.error(f"{args.input} is not a file")
    if os.path.abspath(args.input) == os.path.abspath(args.output):
        parser.error("OUTPUT must differ from INPUT: the original checkpoint is kept")
    if os.path.exists(args.output) and not args.force:
        parser.error(f"{args.output} exists; pass --force to overwrite it")
    try:
        checkpoint = read_weights(args.input)
    except WeightsError as err:
        parser.error(str(err))
    state = original_state_dict(checkpoint)
    if state is None:
        keys = list(checkpoint.get("model", checkpoint))[:5] if isinstance(checkpoint, dict) else type(checkpoint)
        parser.error(f"{args.input} is not a checkpoint of the original LWTGPF code (no base.patch_embed / b1 "
                     f"tensors; first keys: {keys})")
    try:
        converted, info = convert_original(state, args.num_views, local_enhance=not args.no_local_enhance)
    except ValueError as err:
        parser.error(f"{args.input}: {err}")
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("epoch"), int):
        info.epoch = checkpoint["epoch"]

    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    atomic_write(args.output, lambda f: torch.save({"model": converted}, f))
    ignored = sorted(k for k in checkpoint if k != "model") if isinstance(checkpoint, dict) and "model" in checkpoint \
        else []
    print(f"Read {args.input}: {len(state)} tensors of {info.summary()}.")
    if ignored:
        print(f"Ignored entries: {', '.join(ignored)}.")
    if info.num_views == 0 and info.sie_rows:
        print(f"The camera table has {info.sie_rows} rows, read as {info.sie_rows} cameras; if the model was "
              "trained with views, convert again with --num-views.")
    if info.local_enhance:
        print("Local-enhancement branches written at zero: with LOCAL_ENHANCE True (the default) the model computes "
              "exactly the original's features.")
    if info.num_parts != 5:
        print(f"{info.num_parts} part features: set MODEL.HEADS.PART_GRANULARITIES to two stripe counts summing "
              f"to {info.num_parts}.")
    print(f"Wrote {args.output} ({len(converted)} tensors).")
    print("Config overrides this checkpoint needs (the input size is not stored; the original configs use "
          "384x128):")
    print("  " + " ".join(info.config_overrides()))
    print("Evaluate with:")
    print(f"  python tools/train_net.py --config-file configs/LWTGPF/<dataset>.yml --eval-only "
          f"MODEL.WEIGHTS {args.output} " + " ".join(info.config_overrides()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
