"""A tiny LewinViT model as the tools read it: a config file and a checkpoint."""
from pathlib import Path

import lwtgpf  # noqa: F401  (fastreid compatibility fixes first)
import pytest
import torch
from fastreid.modeling.meta_arch import build_model

from lwtgpf.cli import load_config

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "MODEL.DEVICE", "cpu", "MODEL.BACKBONE.PRETRAIN", "False", "MODEL.BACKBONE.NUM_CAMERAS", "3",
    "MODEL.BACKBONE.DROP_PATH_RATIO", "0.0", "MODEL.BACKBONE.LEWINVIT.EMBED_DIM", "8",
    "MODEL.BACKBONE.LEWINVIT.DEPTHS", "[1, 1, 1, 1]", "MODEL.BACKBONE.LEWINVIT.NUM_HEADS", "[1, 2, 2, 4]",
    "MODEL.BACKBONE.LEWINVIT.WINDOW_SIZE", "3", "INPUT.SIZE_TRAIN", "[64, 32]", "INPUT.SIZE_TEST", "[64, 32]",
    "MODEL.HEADS.PART_GRANULARITIES", "[1, 2]", "DATALOADER.NUM_WORKERS", "0",
]


@pytest.fixture(scope="module")
def tiny_model_files(tmp_path_factory):
    """(config file holding the tiny model's whole config, its checkpoint, their folder); the
    BNNeck statistics are random, so that eval-mode features are not the pooled ones."""
    folder = tmp_path_factory.mktemp("model")
    cfg = load_config(str(ROOT / "configs/LWTGPF/Base-LWTGPF.yml"), TINY)
    config = folder / "tiny.yml"
    config.write_text(cfg.dump())
    torch.manual_seed(0)
    model = build_model(cfg)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    weights = folder / "model.pth"
    torch.save({"model": model.state_dict()}, weights)
    return config, weights, folder
