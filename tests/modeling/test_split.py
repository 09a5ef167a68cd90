"""Trunk / last-stage adapters of fast-reid's ResNet and ViT equal the backbones' own forward."""
import copy

import pytest
import torch

import lwtgpf  # noqa: F401  (fastreid compatibility first)
from fastreid.config import get_cfg
from fastreid.modeling.backbones import build_backbone
from fastreid.modeling.backbones.vision_transformer import VisionTransformer
from lwtgpf.config import add_lwtgpf_config
from lwtgpf.modeling.backbones.lewinvit import LewinViT
from lwtgpf.modeling.backbones.split import SplitResNet, SplitViT, split_backbone


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


def test_vit_split_equals_patch_tokens_with_camera_sie():
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=(64, 32), patch_size=16, stride_size=16, embed_dim=24, depth=3, num_heads=2,
                            camera=3, sie_xishu=3.0).eval()
    final = {}
    vit.norm.register_forward_hook(lambda module, args, output: final.setdefault("tokens", output))
    split = split_backbone(vit)
    assert isinstance(split, SplitViT) and split.num_features == 24
    x = torch.randn(2, 3, 64, 32)
    cams = torch.tensor([0, 2])
    with torch.no_grad():
        cls = vit(x, camera_id=cams)
        out = split.last_stage(split.forward_trunk(x, cams))
    tokens = final["tokens"]
    torch.testing.assert_close(cls.flatten(1), tokens[:, 0])
    expected = tokens[:, 1:].reshape(2, 4, 2, 24).permute(0, 3, 1, 2)
    assert out.shape == (2, 24, 4, 2)
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="NUM_CAMERAS is 3"):
        split.forward_trunk(x, torch.tensor([0, 3]))


def test_vit_sie_builder_adds_camera_table():
    cfg = add_lwtgpf_config(get_cfg())
    cfg.MODEL.BACKBONE.NAME = "build_vit_sie_backbone"
    cfg.MODEL.BACKBONE.DEPTH = "small"
    cfg.MODEL.BACKBONE.NUM_CAMERAS = 6
    cfg.MODEL.BACKBONE.PRETRAIN = False
    cfg.INPUT.SIZE_TRAIN = [64, 32]
    vit = build_backbone(cfg)
    assert vit.cam_num == 6 and vit.sie_embed.shape == (6, 1, vit.embed_dim)


def test_lewinvit_passes_through_and_unknown_fails():
    model = LewinViT((64, 32), embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 1, 2, 2))
    assert split_backbone(model) is model
    with pytest.raises(TypeError, match="Linear"):
        split_backbone(torch.nn.Linear(2, 2))
