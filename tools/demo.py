#!/usr/bin/env python
"""The newcomer's demo: LWTGPF on the generated synthetic dataset, on CPU.

Prints Rank-1 and mAP of (1) the model at random init, (2) the pretrained model before any
training on the set (direct transfer), (3) LWTGPF after unsupervised training from those
weights, (4) the supervised reference from the same weights, with the same backbone and budget.
Each training run is the command a user would type:
`tools/train_net.py --config-file configs/.../synthetic.yml`.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Optional

import lwtgpf  # noqa: F401
import torch

from lwtgpf.engine import Trainer
from lwtgpf.cli import load_config, parse_args

ROOT = Path(__file__).resolve().parents[1]
UNSUPERVISED = ROOT / "configs/LWTGPF/synthetic.yml"
SUPERVISED = ROOT / "configs/Supervised/synthetic.yml"


def last_results(output_dir: Path) -> dict:
    """The last evaluation written to `metrics.json` by fast-reid's JSONWriter."""
    evals = [r for r in map(json.loads, (output_dir / "metrics.json").read_text().splitlines()) if "mAP" in r]
    if not evals:
        raise RuntimeError(f"No evaluation in {output_dir / 'metrics.json'}")
    return evals[-1]


def train(config: Path, output_dir: Path, opts, console: Optional[Path] = None) -> dict:
    """Run `tools/train_net.py` and return its last evaluation; `console`: a file for its output."""
    cmd = [sys.executable, str(ROOT / "tools/train_net.py"), "--config-file", str(config),
           "OUTPUT_DIR", str(output_dir), *opts]
    print("$", " ".join(cmd), flush=True)
    if console is None:
        subprocess.run(cmd, check=True, cwd=ROOT)
    else:
        console.parent.mkdir(parents=True, exist_ok=True)
        with open(console, "w") as out:
            subprocess.run(cmd, check=True, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    return last_results(output_dir)


def untrained(config: Path, opts) -> dict:
    """Evaluate the model `config` builds (its pretrained weights, if it has them) without training."""
    cfg = load_config(str(config), opts)
    torch.manual_seed(0)
    return Trainer.test(cfg, Trainer.build_model(cfg))


RANDOM_INIT = ["MODEL.BACKBONE.PRETRAIN", "False"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="logs/demo", type=Path)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for both configs")
    args = parse_args(parser=parser)  # --output-dir may also follow the overrides
    rows = [
        ("random init", untrained(UNSUPERVISED, args.opts + RANDOM_INIT)),
        ("pretrained, no training", untrained(UNSUPERVISED, args.opts)),
        ("LWTGPF (no labels)", train(UNSUPERVISED, args.output_dir / "lwtgpf", args.opts)),
        ("supervised fine-tuning", train(SUPERVISED, args.output_dir / "supervised", args.opts)),
    ]
    print("\nSynthetic dataset, query vs gallery:")
    for name, r in rows:
        print(f"  {name:<24} Rank-1 {r['Rank-1']:6.2f}   mAP {r['mAP']:6.2f}")


if __name__ == "__main__":
    main()
