"""tools/pretrain.py: a deterministic run, written in SOLIDER's layout, read back whole by the demo's loader."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lwtgpf  # noqa: F401

from lwtgpf.cli import load_config
from lwtgpf.modeling.backbones.lewinvit import build_lewinvit_backbone
from lwtgpf.modeling.backbones.pretrained import load_pretrained

ROOT = Path(__file__).resolve().parents[2]
TINY = ["MODEL.BACKBONE.LEWINVIT.EMBED_DIM", "8", "MODEL.BACKBONE.LEWINVIT.NUM_HEADS", "[1,1,2,2]",
        "MODEL.BACKBONE.FEAT_DIM", "64", "DATASETS.POPULATION.NUM_IDS", "12", "DATASETS.POPULATION.NUM_TEST_IDS", "4",
        "DATASETS.POPULATION.NUM_CAMERAS", "6", "DATASETS.POPULATION.IMAGES_PER_ID", "4",
        "SOLVER.IMS_PER_BATCH", "16", "SOLVER.MAX_EPOCH", "2", "SOLVER.ITERS_PER_EPOCH", "3", "SOLVER.STEPS", "[1]",
        "SOLVER.WARMUP_EPOCHS", "1", "TEST.EVAL_PERIOD", "2", "DATALOADER.NUM_WORKERS", "0"]


@pytest.mark.slow
def test_pretraining_is_deterministic_and_its_file_loads_whole(tmp_path):
    env = dict(os.environ, FASTREID_DATASETS=str(tmp_path / "data"), OMP_NUM_THREADS="1")
    files = []
    for run in ("a", "b"):
        out = tmp_path / f"{run}.pth"
        result = subprocess.run([sys.executable, str(ROOT / "tools/pretrain.py"), "--output", str(out),
                                 "--output-dir", str(tmp_path / run), *TINY],
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        assert result.stdout.strip().splitlines()[-1].split()[1] == str(out)  # "<sha256>  <file>"
        files.append(out.read_bytes())
    assert files[0] == files[1]

    cfg = load_config(str(ROOT / "configs/LWTGPF/synthetic.yml"),
                      ["MODEL.BACKBONE.PRETRAIN", "False", "MODEL.BACKBONE.LEWINVIT.FINAL_NORM", "True", *TINY[:4]])
    model = build_lewinvit_backbone(cfg)
    report = load_pretrained(model, str(tmp_path / "a.pth"))
    assert report.missing == [] and report.unused == {}
    trained = torch.load(tmp_path / "a" / "model_final.pth", weights_only=True)["model"]
    state = model.state_dict()
    for key in report.loaded:
        assert torch.equal(state[key], trained["backbone." + key]), key
