"""The demo's LWTGPF run (published recipe at demo size, pretrained start) learns without labels:
the floors of docs/BENCHMARKS.md's demo section, on the demo's own set."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lwtgpf  # noqa: F401

from lwtgpf.engine import Trainer
from lwtgpf.cli import load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs/LWTGPF/synthetic.yml"
WEIGHTS = ["MODEL.BACKBONE.PRETRAIN_PATH", str(ROOT / "pretrained/lewinvit_demo_synthetic.pth")]


@pytest.mark.slow
def test_unsupervised_training_beats_its_start(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTREID_DATASETS", str(tmp_path / "data"))
    before = {}
    for name, opts in (("direct transfer", WEIGHTS), ("random init", ["MODEL.BACKBONE.PRETRAIN", "False"])):
        cfg = load_config(str(CONFIG), opts)
        torch.manual_seed(0)
        before[name] = Trainer.test(cfg, Trainer.build_model(cfg))["mAP"]

    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "tools/train_net.py"), "--config-file", str(CONFIG), *WEIGHTS,
           "OUTPUT_DIR", str(out)]
    result = subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    trained = [r for r in rows if "mAP" in r][-1]["mAP"]
    assert trained >= 1.3 * before["direct transfer"] and trained >= 2 * before["random init"], (before, trained)
