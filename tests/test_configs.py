"""Every shipped config loads, and the models of the baseline configs build (random weights)."""
from pathlib import Path

import pytest
import torch

import lwtgpf  # noqa: F401
from fastreid.config import get_cfg
from fastreid.modeling.meta_arch import build_model

from lwtgpf.config import add_lwtgpf_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.rglob("*.yml"))


def load(path, *opts):
    cfg = get_cfg()
    add_lwtgpf_config(cfg)
    cfg.merge_from_file(str(path))
    cfg.merge_from_list(list(opts))
    return cfg


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_loads(path):
    cfg = load(path)
    assert cfg.MODEL.META_ARCHITECTURE in ("GPO2CAP", "Baseline")


def test_published_recipe():
    cfg = load(CONFIG_DIR / "LWTGPF" / "market.yml")
    assert (cfg.SOLVER.OPT, cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_EPOCH, cfg.SOLVER.ITERS_PER_EPOCH) == ("SGD", 3.5e-4, 50, 200)
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_INSTANCE, list(cfg.SOLVER.STEPS)) == (32, 4, [20, 40])
    assert list(cfg.INPUT.SIZE_TRAIN) == [384, 128] and cfg.MODEL.BACKBONE.NUM_CAMERAS == 6
    cams = {"duke": 8, "msmt17": 15, "cuhk03": 2, "occduke": 8}
    for name, n in cams.items():
        assert load(CONFIG_DIR / "LWTGPF" / f"{name}.yml").MODEL.BACKBONE.NUM_CAMERAS == n


@pytest.mark.parametrize("name,opts", [
    ("O2CAP/market.yml", ["MODEL.BACKBONE.DEPTH", "18x", "MODEL.BACKBONE.FEAT_DIM", "512"]),
    ("TMGF/market.yml", []),
])
def test_baseline_models_build_and_run(name, opts):
    path = CONFIG_DIR / name
    cfg = load(path, "MODEL.DEVICE", "cpu", "MODEL.BACKBONE.PRETRAIN", "False", *opts)
    model = build_model(cfg).eval()
    batch = {"images": torch.rand(2, 3, *cfg.INPUT.SIZE_TEST) * 255, "camids": torch.tensor([0, 5])}
    with torch.no_grad():
        feats = model.extract_features(batch)
    assert feats.shape[:2] == (6, 2)
    assert torch.allclose(feats.norm(dim=-1), torch.ones(6, 2), atol=1e-5)
