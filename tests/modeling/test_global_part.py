"""GlobalPartHead: shapes, stripe pooling, BNNeck, branch copies, eval features, config."""
import lwtgpf  # noqa: F401  (fastreid compatibility fixes first)
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastreid.config import get_cfg
from fastreid.modeling.heads import REID_HEADS_REGISTRY
from lwtgpf.config import add_lwtgpf_config
from lwtgpf.modeling.heads import GlobalPartHead, stripe_pool


class NHWCToNCHW(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)


def fake_last_stage(c_in: int = 6, c_out: int = 8) -> nn.Module:
    """A last stage taking a channels-last trunk output, as a transformer's would."""
    return nn.Sequential(NHWCToNCHW(), nn.Conv2d(c_in, c_out, 1), nn.BatchNorm2d(c_out), nn.GELU())


def make_head(**kwargs) -> GlobalPartHead:
    torch.manual_seed(0)
    return GlobalPartHead(last_stage=fake_last_stage(), feat_dim=8, **kwargs)


def stripe_rows(height: int, g: int):
    """Row ranges of the stripes, written out: stripe i spans floor(i*H/g) .. ceil((i+1)*H/g)."""
    return [((i * height) // g, -((-(i + 1) * height) // g)) for i in range(g)]


def reference_features(head: GlobalPartHead, x: torch.Tensor, global_feat: str = "mean") -> torch.Tensor:
    """The head's training output from the formulas: loops, explicit batch norm, explicit norm."""
    globals_, parts = [], []
    for branch, g in zip(head.branches, head.granularities):
        fmap = branch(x)
        b, c, h, w = fmap.shape
        glob = torch.zeros(b, c)
        for i in range(h):
            for j in range(w):
                glob += fmap[:, :, i, j] / (h * w)
        globals_.append(glob)
        for top, bottom in stripe_rows(h, g):
            parts.append(fmap[:, :, top:bottom, :].sum((2, 3)) / ((bottom - top) * w))
    glob = {"mean": (globals_[0] + globals_[1]) / 2, "b1": globals_[0], "b2": globals_[1]}[global_feat]
    out = []
    for bn, f in zip(head.bnnecks, [glob] + parts):
        var = f.var(0, unbiased=False)
        y = (f - f.mean(0)) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias
        out.append(y / y.norm(dim=1, keepdim=True))
    return torch.stack(out)


@pytest.mark.parametrize("height,g", [(12, 1), (12, 2), (12, 3), (16, 3), (7, 2), (7, 5), (5, 5)])
def test_stripe_pool_matches_loop(height, g):
    """Adaptive average pooling bins, as the original's AdaptiveAvgPool2d((g, 1)): 7 rows in 2 stripes are
    rows 0-3 and 3-6 (the middle row in both)."""
    fmap = torch.randn(3, 4, height, 2)
    out = stripe_pool(fmap, g)
    assert out.shape == (g, 3, 4)
    for i, (top, bottom) in enumerate(stripe_rows(height, g)):
        torch.testing.assert_close(out[i], fmap[:, :, top:bottom].mean((2, 3)))
    if (height, g) == (7, 2):
        assert stripe_rows(7, 2) == [(0, 4), (3, 7)]


def test_stripe_pool_rejects_too_many_stripes():
    with pytest.raises(ValueError, match="PART_GRANULARITIES"):
        stripe_pool(torch.randn(2, 4, 3, 2), 4)


@pytest.mark.parametrize("granularities", [(2, 3), (3, 2), (1, 4)])
def test_training_output_matches_reference(granularities):
    head = make_head(granularities=granularities).train()
    x = torch.randn(5, 12, 4, 6)
    out = head(x)
    assert out.shape == (1 + sum(granularities), 5, 8)
    torch.testing.assert_close(out, reference_features(head, x))
    torch.testing.assert_close(out.norm(dim=2), torch.ones(out.shape[:2]))


@pytest.mark.parametrize("global_feat", ["mean", "b1", "b2"])
def test_global_feat_options(global_feat):
    head = make_head(global_feat=global_feat).train()
    x = torch.randn(4, 12, 4, 6)
    torch.testing.assert_close(head(x), reference_features(head, x, global_feat))


def test_non_divisible_height():
    head = make_head(granularities=(3, 5)).train()
    x = torch.randn(4, 7, 3, 6)
    torch.testing.assert_close(head(x), reference_features(head, x))


def test_eval_features():
    head = make_head().train()
    x = torch.randn(6, 12, 4, 6)
    head(x)  # move the BNNeck running statistics away from their initial values
    head.eval()
    feats = head.forward_features(x)
    assert feats.shape == (6, 6, 8)
    torch.testing.assert_close(feats.norm(dim=2), torch.ones(6, 6))
    torch.testing.assert_close(head(x), feats[0])
    assert head.num_features == 8

    head.eval_feat = "global_parts"
    both = head(x)
    assert both.shape == (6, 6 * 8) and head.num_features == 48
    for b in range(6):
        torch.testing.assert_close(both[b], torch.cat([feats[level, b] for level in range(6)]))


def test_bnneck_frozen_bias_and_init():
    head = make_head()
    assert len(head.bnnecks) == 6
    for bn in head.bnnecks:
        assert isinstance(bn, nn.BatchNorm1d)
        assert not bn.bias.requires_grad and bn.weight.requires_grad
        torch.testing.assert_close(bn.weight.detach(), torch.ones(8))
        torch.testing.assert_close(bn.bias.detach(), torch.zeros(8))
    head.train()(torch.randn(4, 12, 4, 6)).sum().backward()
    for bn in head.bnnecks:
        assert bn.bias.grad is None and bn.weight.grad is not None


def test_branches_are_independent_copies_of_last_stage():
    torch.manual_seed(1)
    last_stage = fake_last_stage()
    head = GlobalPartHead(last_stage=last_stage, feat_dim=8)
    source = last_stage.state_dict()
    for branch in head.branches:
        for key, value in branch.state_dict().items():
            torch.testing.assert_close(value, source[key])
            assert value.data_ptr() != source[key].data_ptr()
    with torch.no_grad():
        head.branches[0][1].weight.add_(1.0)
    torch.testing.assert_close(head.branches[1][1].weight, last_stage[1].weight)
    torch.testing.assert_close(last_stage.state_dict()["1.weight"], source["1.weight"])
    assert not torch.equal(head.branches[0][1].weight, head.branches[1][1].weight)


def test_branch_output_shape_is_checked():
    head = GlobalPartHead(last_stage=nn.Sequential(NHWCToNCHW(), nn.Conv2d(6, 5, 1)), feat_dim=8)
    with pytest.raises(ValueError, match=r"\[B, 8, h, w\]"):
        head(torch.randn(2, 12, 4, 6))


@pytest.mark.parametrize("kwargs,match", [
    (dict(global_feat="max"), "GLOBAL_FEAT"),
    (dict(global_feat="b2", granularities=(2,)), "GLOBAL_FEAT"),
    (dict(eval_feat="parts"), "EVAL_FEAT"),
    (dict(granularities=(2, 0)), "PART_GRANULARITIES"),
    (dict(granularities=()), "PART_GRANULARITIES"),
])
def test_bad_config_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GlobalPartHead(last_stage=fake_last_stage(), feat_dim=8, **kwargs)


def test_from_config_and_registry():
    cfg = add_lwtgpf_config(get_cfg())
    cfg.MODEL.HEADS.PART_GRANULARITIES = [3, 4]
    cfg.MODEL.HEADS.GLOBAL_FEAT = "b2"
    cfg.MODEL.HEADS.EVAL_FEAT = "global_parts"
    assert REID_HEADS_REGISTRY.get("GlobalPartHead") is GlobalPartHead
    head = GlobalPartHead(cfg, last_stage=fake_last_stage(), feat_dim=8)
    assert head.granularities == [3, 4] and head.num_parts == 7
    assert head.global_feat == "b2" and head.eval_feat == "global_parts"
    with pytest.raises(ValueError, match="both last_stage and feat_dim"):
        GlobalPartHead(cfg, last_stage=fake_last_stage())


def tiny_lewinvit_cfg():
    cfg = add_lwtgpf_config(get_cfg())
    cfg.MODEL.BACKBONE.NAME = "build_lewinvit_backbone"
    cfg.MODEL.BACKBONE.PRETRAIN = False
    cfg.MODEL.BACKBONE.LEWINVIT.EMBED_DIM = 8
    cfg.MODEL.BACKBONE.LEWINVIT.DEPTHS = [1, 1, 1, 1]
    cfg.MODEL.BACKBONE.LEWINVIT.NUM_HEADS = [1, 1, 1, 1]
    cfg.MODEL.BACKBONE.NUM_CAMERAS = 3
    cfg.INPUT.SIZE_TRAIN = [96, 32]  # a 3 x 1 map at 1/32: 2 stripes of 2 and 1 rows, 3 of 1
    return cfg


def check_head_on_backbone(cfg, backbone, x, cam_ids):
    """Both branches start as the backbone's last stage, so before training they compute it."""
    backbone.eval()
    head = GlobalPartHead(cfg, last_stage=backbone.last_stage, feat_dim=backbone.num_features).eval()
    trunk = backbone.forward_trunk(x, cam_ids)
    fmap = backbone.last_stage(trunk)
    for branch in head.branches:
        torch.testing.assert_close(branch(trunk), fmap)
    feats = head.forward_features(trunk)
    assert feats.shape == (6, x.shape[0], backbone.num_features)
    torch.testing.assert_close(feats[0], F.normalize(head.bnnecks[0](fmap.mean((2, 3))), dim=1))
    h = fmap.shape[2]
    for level, (top, bottom) in enumerate(stripe_rows(h, 2) + stripe_rows(h, 3), start=1):
        part = fmap[:, :, top:bottom].mean((2, 3))
        torch.testing.assert_close(feats[level], F.normalize(head.bnnecks[level](part), dim=1))


def test_with_lewinvit():
    from fastreid.modeling.backbones import build_backbone

    cfg = tiny_lewinvit_cfg()
    torch.manual_seed(0)
    backbone = build_backbone(cfg)
    check_head_on_backbone(cfg, backbone, torch.randn(2, 3, 96, 32), torch.tensor([0, 2]))


def test_build_heads_builds_the_backbone_to_copy_its_last_stage():
    from fastreid.modeling.heads import build_heads

    cfg = tiny_lewinvit_cfg()
    cfg.MODEL.HEADS.NAME = "GlobalPartHead"
    head = build_heads(cfg)
    assert head.feat_dim == 64 and len(head.branches) == 2


def test_with_fastreid_resnet_through_split_backbone():
    from fastreid.modeling.backbones import build_backbone
    from lwtgpf.modeling.backbones.split import split_backbone

    cfg = add_lwtgpf_config(get_cfg())
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    cfg.MODEL.BACKBONE.DEPTH = "18x"
    cfg.MODEL.BACKBONE.PRETRAIN = False
    cfg.MODEL.BACKBONE.LAST_STRIDE = 1
    torch.manual_seed(0)
    backbone = split_backbone(build_backbone(cfg))
    # 64 x 32 images: a 4 x 2 layer4 map (last stride 1): 2 stripes of 2 rows, 3 of 2, 1, 1.
    check_head_on_backbone(cfg, backbone, torch.randn(2, 3, 64, 32), None)
