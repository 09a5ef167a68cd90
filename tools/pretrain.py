#!/usr/bin/env python
"""Pretrain the demo's LewinViT on the synthetic population and write it as a SOLIDER teacher file.

    python tools/pretrain.py                          # rebuilds pretrained/lewinvit_demo_synthetic.pth
    python tools/pretrain.py --output /tmp/w.pth SOLVER.MAX_EPOCH 2

Runs `tools/train_net.py --config-file configs/Pretrain/synthetic.yml` (identity classification on
lwtgpf.data.population's people, disjoint from every SyntheticReID set), then writes the backbone
of its `model_final.pth` in the layout of SOLIDER's LUPerson Swin teachers (`teacher` ->
`backbone.stages.i.blocks.j...`), so that the demo reads it through MODEL.BACKBONE.PRETRAIN_PATH
with the loader, conversion and report that SOLIDER files get. The file is written atomically and
its SHA-256 printed; on the same machine and thread count the run is bit for bit the same, and
`pretrained/SHA256SUMS` records the shipped file's.
"""
import argparse
import io
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lwtgpf  # noqa: E402,F401  (fastreid compatibility fixes before fastreid is imported)
import torch  # noqa: E402

from demo import ROOT, train  # noqa: E402
from lwtgpf.cli import parse_args  # noqa: E402
from lwtgpf.modeling.backbones.pretrained import lewinvit_to_solider  # noqa: E402
from lwtgpf.weights import file_sha256  # noqa: E402

CONFIG = ROOT / "configs/Pretrain/synthetic.yml"
DEFAULT_OUTPUT = ROOT / "pretrained/lewinvit_demo_synthetic.pth"


def export_backbone(checkpoint: Path, output: Path) -> None:
    """Write the backbone of a fast-reid checkpoint of configs/Pretrain as a SOLIDER teacher file."""
    model = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    backbone = {k[len("backbone."):]: v for k, v in model.items() if k.startswith("backbone.")}
    if not backbone:
        raise ValueError(f"{checkpoint} holds no backbone.* tensors")
    # Saved through a buffer: torch.save names the archive's folder after the file, which would put
    # the temporary name (and so the process id) into the bytes and change the checksum.
    buffer = io.BytesIO()
    torch.save({"teacher": lewinvit_to_solider(backbone)}, buffer)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp{os.getpid()}")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the SOLIDER-layout weights file")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "logs/pretrain", help="the training run's folder")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides of configs/Pretrain/synthetic.yml")
    args = parse_args(parser=parser)
    start = time.time()
    result = train(CONFIG, args.output_dir, args.opts)
    export_backbone(args.output_dir / "model_final.pth", args.output)
    print(f"\nPretrained in {(time.time() - start) / 60:.1f} min; population test split: "
          f"Rank-1 {result['Rank-1']:.2f}  mAP {result['mAP']:.2f}")
    print(f"{file_sha256(args.output)}  {args.output}")


if __name__ == "__main__":
    main()
