#!/usr/bin/env python
"""LWTGPF under camera bias: the untrained model, LWTGPF with the published recipe, LWTGPF with
the camera-bias remedies and the supervised reference (with the images as published and as the
remedies prepare them), over a grid of bias strengths.

    python tools/sweep.py --seed 1                                   # the whole grid
    python tools/sweep.py --points default,cast6 --methods published,improved
    python tools/sweep.py --seed 0 --output-dir logs/sweep_s0 DATASETS.SYNTHETIC.NUM_TRAIN_IDS 100

Methods (each run is `tools/train_net.py`, as in `make demo`):
  untrained   configs/LWTGPF/synthetic.yml's model, random init, evaluated without training (as published);
  published   configs/LWTGPF/synthetic.yml with every remedy key at its Base-LWTGPF.yml value;
  improved    configs/LWTGPF/synthetic.yml with the remedies of IMPROVED turned on;
  supervised  configs/Supervised/synthetic.yml (identity labels, same backbone and budget);
  supervised_improved  the same with IMPROVED (its input steps, e.g. INPUT.GRAY_WORLD, apply to it).
The published runs are compared with the supervised reference, the improved ones with
supervised_improved: each recipe with labels and the same images.
A grid point sets DATASETS.SYNTHETIC.COLOUR_CAST / BACKGROUND_CONTRAST / BLUR_NOISE; --seed sets
DATASETS.SYNTHETIC.SEED; KEY VALUE pairs after the options go to every run. A run whose
`result.json` records the same command is reused, so an interrupted sweep goes on where it
stopped (a run made with another command is moved aside). The markdown table goes to stdout and
to <output-dir>/table.md.
"""
import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lwtgpf  # noqa: E402,F401  (fastreid compatibility fixes before fastreid is imported)

from demo import ROOT, SUPERVISED, UNSUPERVISED, train, untrained  # noqa: E402
from lwtgpf.analysis.cli import parse_args  # noqa: E402
from lwtgpf.engine.cli import load_config  # noqa: E402

BASE = ROOT / "configs/LWTGPF/Base-LWTGPF.yml"

# The config keys of the camera-bias remedies (docs/METHOD.md, "Additions beyond the original").
REMEDY_KEYS = ("CLUSTER.CAMERA_NORM", "INPUT.GRAY_WORLD")
# The remedies the "improved" runs turn on (as configs/LWTGPF/synthetic.yml does; the benchmark
# configs keep them off).
IMPROVED = ["CLUSTER.CAMERA_NORM", "center", "INPUT.GRAY_WORLD", "True"]

# Grid points: DATASETS.SYNTHETIC.* strengths. One bias at a time at three strengths (the
# default set is the first strength of each), then all three at their strongest.
GRID: Dict[str, Dict[str, float]] = {
    "default": {},
    "cast3": {"COLOUR_CAST": 3.0},
    "cast6": {"COLOUR_CAST": 6.0},
    "bg0.5": {"BACKGROUND_CONTRAST": 0.5},
    "bg1": {"BACKGROUND_CONTRAST": 1.0},
    "bn2": {"BLUR_NOISE": 2.0},
    "bn3": {"BLUR_NOISE": 3.0},
    "all": {"COLOUR_CAST": 6.0, "BACKGROUND_CONTRAST": 1.0, "BLUR_NOISE": 3.0},
}
METHODS = ("untrained", "published", "improved", "supervised", "supervised_improved")
# The supervised reference each LWTGPF recipe is compared with.
REFERENCE = {"published": "supervised", "improved": "supervised_improved"}
EXTRA_OPTS = {"improved": IMPROVED, "supervised": [], "supervised_improved": IMPROVED}  # others: published


def published_opts() -> List[str]:
    """KEY VALUE pairs that put every remedy key back to the published recipe (Base-LWTGPF.yml)."""
    cfg = load_config(str(BASE))
    opts = []
    for key in REMEDY_KEYS:
        node = cfg
        for part in key.split("."):
            node = node[part]
        opts += [key, repr(node) if isinstance(node, str) else str(node)]
    return opts


def point_opts(point: str, seed: int) -> List[str]:
    opts = ["DATASETS.SYNTHETIC.SEED", str(seed)]
    for key, value in GRID[point].items():
        opts += [f"DATASETS.SYNTHETIC.{key}", repr(float(value))]
    return opts


def run(method: str, run_dir: Path, opts: Sequence[str]) -> dict:
    """The last evaluation of one run (reused when `result.json` records the same command)."""
    config = SUPERVISED if method.startswith("supervised") else UNSUPERVISED
    command = {"method": method, "config": str(config.relative_to(ROOT)), "opts": list(opts)}
    record = run_dir / "result.json"
    if record.is_file():
        done = json.loads(record.read_text())
        if done["command"] == command:
            return done["result"]
    if run_dir.exists():  # another command's run: keep it aside, never mix two runs' logs
        stale = run_dir.with_name(f"{run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir.rename(stale)
        print(f"[sweep] {run_dir} held another run; moved to {stale}", flush=True)
    start = time.time()
    if method == "untrained":
        result = {k: float(v) for k, v in untrained(config, opts).items()}
    else:
        result = dict(train(config, run_dir, opts, console=run_dir / "console.txt"))
        ari = [r["cluster/ari"] for r in map(json.loads, (run_dir / "metrics.json").read_text().splitlines())
               if "cluster/ari" in r]
        if ari:
            result["last_ari"] = ari[-1]
    result["minutes"] = (time.time() - start) / 60
    run_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"command": command, "result": result}, indent=1) + "\n")
    return result


def table(results: Dict[str, Dict[str, dict]], points: Sequence[str]) -> str:
    def cell(point: str, method: str, key: str = "mAP", fmt: str = "{:.1f}") -> str:
        r = results.get(point, {}).get(method)
        return fmt.format(r[key]) if r and key in r else "-"

    def ratios(point: str, method: str) -> str:
        r, res = results.get(point, {}), results.get(point, {}).get(method)
        if not res:
            return "- | -"
        sup, raw = r.get(REFERENCE[method]), r.get("untrained")
        vs_sup = f"{100 * res['mAP'] / sup['mAP']:.0f}%" if sup else "-"
        vs_raw = f"{res['mAP'] / raw['mAP']:.1f}x" if raw else "-"
        return f"{vs_sup} | {vs_raw}"

    lines = [
        "| point | colour cast | background | blur/noise | untrained | published | (ARI) | vs sup. | vs untr. "
        "| improved | (ARI) | vs sup. | vs untr. | supervised | supervised, improved inputs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for point in points:
        strengths = GRID[point]
        lines.append(" | ".join([
            f"| {point}", f"{strengths.get('COLOUR_CAST', 1.0):g}", f"{strengths.get('BACKGROUND_CONTRAST', 0.15):g}",
            f"{strengths.get('BLUR_NOISE', 1.0):g}", cell(point, "untrained"),
            cell(point, "published"), cell(point, "published", "last_ari", "{:.2f}"), ratios(point, "published"),
            cell(point, "improved"), cell(point, "improved", "last_ari", "{:.2f}"), ratios(point, "improved"),
            cell(point, "supervised"), cell(point, "supervised_improved")]) + " |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1, help="DATASETS.SYNTHETIC.SEED of every grid point")
    parser.add_argument("--points", default=",".join(GRID), help=f"comma-separated subset of {', '.join(GRID)}")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {', '.join(METHODS)}")
    parser.add_argument("--output-dir", type=Path, default=None, help="default: logs/sweep_s<seed>")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every run")
    args = parse_args(parser, argv)  # KEY VALUE overrides checked for pairs there
    points = [p for p in args.points.split(",") if p]
    methods = [m for m in args.methods.split(",") if m]
    for name, chosen, known in (("--points", points, GRID), ("--methods", methods, METHODS)):
        unknown = [c for c in chosen if c not in known]
        if unknown:
            parser.error(f"{name}: unknown {', '.join(unknown)}; expected some of {', '.join(known)}")
    out = args.output_dir or ROOT / f"logs/sweep_s{args.seed}"
    published = published_opts()

    results: Dict[str, Dict[str, dict]] = {}
    for point in points:
        for method in methods:
            opts = point_opts(point, args.seed) + list(args.opts) + EXTRA_OPTS.get(method, published)
            results.setdefault(point, {})[method] = res = run(method, out / point / method, opts)
            print(f"[sweep] {point:8s} {method:10s} mAP {res['mAP']:6.2f}  Rank-1 {res['Rank-1']:6.2f}  "
                  f"({res['minutes']:.1f} min)", flush=True)
    text = table(results, points)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
