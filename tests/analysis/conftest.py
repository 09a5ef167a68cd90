"""Tiny models of every kind the analysis tools accept, built from configs as the tools build them."""
from pathlib import Path

import lwtgpf  # noqa: F401  (fastreid compatibility fixes first)
import pytest
import torch
from fastreid.config import get_cfg
from fastreid.modeling.meta_arch import build_model

from lwtgpf.config import add_lwtgpf_config

REPO = Path(__file__).resolve().parents[2]

# A LewinViT whose maps (16x8, 8x4, 4x2, 2x1 at 64x32) need padding for 3x3 windows in every stage,
# with shifted blocks everywhere.
TINY_LEWINVIT = [
    "MODEL.DEVICE", "cpu", "MODEL.BACKBONE.PRETRAIN", "False", "MODEL.BACKBONE.NUM_CAMERAS", "3",
    "MODEL.BACKBONE.DROP_PATH_RATIO", "0.0", "MODEL.BACKBONE.LEWINVIT.EMBED_DIM", "8",
    "MODEL.BACKBONE.LEWINVIT.DEPTHS", "[2, 2, 2, 2]", "MODEL.BACKBONE.LEWINVIT.NUM_HEADS", "[1, 2, 2, 4]",
    "MODEL.BACKBONE.LEWINVIT.WINDOW_SIZE", "3", "INPUT.SIZE_TRAIN", "[64, 32]", "INPUT.SIZE_TEST", "[64, 32]",
    "MODEL.HEADS.PART_GRANULARITIES", "[1, 2]",
]
TINY_RESNET = [
    "MODEL.DEVICE", "cpu", "MODEL.BACKBONE.NAME", "build_resnet_backbone", "MODEL.BACKBONE.DEPTH", "18x",
    "MODEL.BACKBONE.FEAT_DIM", "512", "MODEL.BACKBONE.PRETRAIN", "False", "MODEL.BACKBONE.LAST_STRIDE", "1",
    "INPUT.SIZE_TRAIN", "[64, 32]", "INPUT.SIZE_TEST", "[64, 32]",
]
TINY_VIT = [
    "MODEL.DEVICE", "cpu", "MODEL.BACKBONE.NAME", "build_transreid_vit_backbone", "MODEL.BACKBONE.VIT.EMBED_DIM", "32",
    "MODEL.BACKBONE.VIT.DEPTH", "3", "MODEL.BACKBONE.VIT.NUM_HEADS", "2", "MODEL.BACKBONE.VIT.PATCH_SIZE", "8",
    "MODEL.BACKBONE.PRETRAIN", "False", "MODEL.BACKBONE.NUM_CAMERAS", "3", "MODEL.BACKBONE.DROP_PATH_RATIO", "0.0",
    "INPUT.SIZE_TRAIN", "[64, 32]", "INPUT.SIZE_TEST", "[64, 32]", "MODEL.HEADS.PART_GRANULARITIES", "[2, 4]",
]
BASELINE = [
    "MODEL.META_ARCHITECTURE", "Baseline", "MODEL.HEADS.NAME", "EmbeddingHead", "MODEL.HEADS.NORM", "BN",
    "MODEL.HEADS.WITH_BNNECK", "True", "MODEL.HEADS.POOL_LAYER", "GlobalAvgPool", "MODEL.HEADS.NUM_CLASSES", "5",
    "MODEL.HEADS.EMBEDDING_DIM", "0", "MODEL.HEADS.CLS_LAYER", "Linear",
]


def tiny_cfg(*opts):
    cfg = add_lwtgpf_config(get_cfg())
    cfg.merge_from_file(str(REPO / "configs/LWTGPF/Base-LWTGPF.yml"))
    cfg.merge_from_list([o for group in opts for o in group])
    return cfg


def tiny_model(*opts, seed: int = 0):
    cfg = tiny_cfg(*opts)
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    # random BNNeck statistics, so that eval-mode features are not the identity of the pooled ones
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return cfg, model


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(1)
    return {"images": torch.rand(2, 3, 64, 32, generator=g) * 255, "camids": torch.tensor([0, 2])}
