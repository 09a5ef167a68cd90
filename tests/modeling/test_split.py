"""The trunk / last-stage adapter of fast-reid's ResNet equals its own forward (the ViT's split: test_vit.py)."""
import copy

import pytest
import torch

import lwtgpf  # noqa: F401  (fastreid compatibility first)
from fastreid.config import get_cfg
from fastreid.modeling.backbones import build_backbone
from lwtgpf.config import add_lwtgpf_config
from lwtgpf.modeling.backbones.lewinvit import LewinViT
from lwtgpf.modeling.backbones.split import SplitResNet, split_backbone


def resnet_cfg(depth: str, ibn: bool = False, nl: bool = False):
    cfg = add_lwtgpf_config(get_cfg())
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    cfg.MODEL.BACKBONE.DEPTH = depth
    cfg.MODEL.BACKBONE.WITH_IBN = ibn
    cfg.MODEL.BACKBONE.WITH_NL = nl
    cfg.MODEL.BACKBONE.PRETRAIN = False
    return cfg


@pytest.mark.parametrize("depth,ibn,nl", [("18x", False, False), ("50x", True, True)])
def test_resnet_split_equals_forward(depth, ibn, nl):
    torch.manual_seed(0)
    resnet = build_backbone(resnet_cfg(depth, ibn, nl)).eval()
    split = split_backbone(resnet)
    assert isinstance(split, SplitResNet)
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        trunk = split.forward_trunk(x, torch.tensor([0, 1]))
        out = split.last_stage(trunk)
        expected = resnet(x)
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close(copy.deepcopy(split.last_stage)(trunk), expected)
    assert trunk.shape[1] * 2 == out.shape[1] == split.num_features


def test_lewinvit_passes_through_and_unknown_fails():
    model = LewinViT((64, 32), embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 1, 2, 2))
    assert split_backbone(model) is model
    with pytest.raises(TypeError, match="Linear"):
        split_backbone(torch.nn.Linear(2, 2))
