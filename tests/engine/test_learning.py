"""A shortened LWTGPF run on the default synthetic set learns without labels (docs/BENCHMARKS.md has the full run)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lwtgpf  # noqa: F401
from fastreid.config import get_cfg

from lwtgpf.config import add_lwtgpf_config
from lwtgpf.engine import Trainer

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs/LWTGPF/synthetic.yml"


@pytest.mark.slow
def test_unsupervised_training_beats_the_untrained_model(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTREID_DATASETS", str(tmp_path / "data"))
    cfg = get_cfg()
    add_lwtgpf_config(cfg)
    cfg.merge_from_file(str(CONFIG))
    torch.manual_seed(0)
    untrained = Trainer.test(cfg, Trainer.build_model(cfg))["mAP"]

    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "tools/train_net.py"), "--config-file", str(CONFIG),
           "SOLVER.MAX_EPOCH", "10", "SOLVER.STEPS", "[8]", "TEST.EVAL_PERIOD", "10", "OUTPUT_DIR", str(out)]
    result = subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    trained = [r for r in rows if "mAP" in r][-1]["mAP"]
    assert trained >= 2 * untrained, (untrained, trained)
