"""LewinViT against timm's Swin where the geometries agree, local enhancement, SIE, config building.

LewinViT's window geometry is the original's (tests/modeling/test_window_geometry.py holds it to a
reference written from METHOD.md). timm's Swin computes the same only where no stage needs padding
or a smaller window: every map side a multiple of the window and larger than it (448x448 with
window 7: maps 112, 56, 28, 14; 256x256 with window 4). With LayerNorm eps set to the original's
1e-6 on timm's side, the two then agree; these tests hold the weight layout and the block
arithmetic to timm there.
"""
import copy
from functools import partial

import pytest
import timm
import torch

import lwtgpf  # noqa: F401  (fastreid compatibility first)
from fastreid.config import get_cfg
from fastreid.modeling.backbones import build_backbone
from lwtgpf.config import add_lwtgpf_config
from lwtgpf.modeling.backbones.lewinvit import LewinViT, LocalEnhancedMlp
from lwtgpf.modeling.backbones.pretrained import load_pretrained

SMALL = dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 1, 2, 2))


def timm_swin(img_size, **overrides):
    """timm's Swin with the original's LayerNorm eps."""
    kwargs = dict(SMALL, **overrides)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=img_size, num_classes=0,
                             norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), **kwargs).eval()


def lewinvit_from_timm(swin, img_size, tmp_path, **kwargs):
    path = tmp_path / "swin.pth"
    torch.save(swin.state_dict(), path)
    model = LewinViT(img_size, **kwargs).eval()
    report = load_pretrained(model, str(path), "timm")
    assert report.missing == [], report.missing
    assert report.adapted == [], report.adapted
    assert all(".mlp.local." in k for k in report.new)
    return model


@pytest.mark.parametrize("img_size,window", [((448, 448), 7), ((256, 256), 4), ((512, 256), 4)])
def test_zero_init_lewinvit_equals_timm_swin_where_geometries_agree(img_size, window, tmp_path):
    torch.manual_seed(0)
    swin = timm_swin(img_size, window_size=window)
    model = lewinvit_from_timm(swin, img_size, tmp_path, window_size=window, final_norm=True, **SMALL)
    x = torch.randn(2, 3, *img_size)
    with torch.no_grad():
        expected = swin.forward_features(x).permute(0, 3, 1, 2)
        trunk = model.forward_trunk(x)
        out = model.last_stage(trunk)
    assert trunk.shape == (2, img_size[0] // 32, img_size[1] // 32, 8 * SMALL["embed_dim"])
    assert out.shape == expected.shape == (2, model.num_features, img_size[0] // 32, img_size[1] // 32)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(model(x), out)


def test_geometry_differs_from_timm_at_384x128(tmp_path):
    """At 384x128 timm shrinks stage 4's windows to 7x4 (no width shift); even with 7x7 windows kept
    (`always_partition`) it rolls before padding. Neither is the method's model."""
    clamped = timm_swin((384, 128), depths=(1, 1, 2, 2)).layers[3].blocks[1]
    assert clamped.window_size == (7, 4) and clamped.shift_size == (3, 0)
    torch.manual_seed(0)
    swin = timm_swin((384, 128), always_partition=True)
    model = lewinvit_from_timm(swin, (384, 128), tmp_path, final_norm=True, **SMALL)
    assert all(block.window_size == (7, 7) and block.shift_size == ((0, 0) if i % 2 == 0 else (3, 3))
               for stage in (*model.layers, model.last_stage) for i, block in enumerate(stage.blocks))
    x = torch.randn(1, 3, 384, 128)
    with torch.no_grad():
        assert (model(x) - swin.forward_features(x).permute(0, 3, 1, 2)).abs().max() > 1e-3


def test_local_enhancement_changes_output_and_switches_off():
    torch.manual_seed(0)
    model = LewinViT((64, 32), **SMALL).eval()
    plain = LewinViT((64, 32), local_enhance=False, **SMALL).eval()
    assert not any("local" in n for n, _ in plain.named_parameters())
    assert sum(isinstance(m, LocalEnhancedMlp) for m in model.modules()) == sum(SMALL["depths"])
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if ".mlp.local." not in k})
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        before = model(x)
        torch.testing.assert_close(plain(x), before)
        for m in model.modules():
            if isinstance(m, LocalEnhancedMlp):
                m.local.weight.normal_(std=0.1)
        after = model(x)
    assert (after - before).abs().max() > 1e-3


def test_local_branch_is_a_depthwise_residual():
    torch.manual_seed(0)
    mlp = LocalEnhancedMlp(4, 8).eval()
    torch.nn.init.normal_(mlp.local.weight)
    torch.nn.init.normal_(mlp.local.bias)
    x = torch.randn(2, 5, 3, 4)  # NHWC
    hidden = torch.nn.functional.gelu(x @ mlp.fc1.weight.T + mlp.fc1.bias)  # [B, H, W, 8]
    padded = torch.nn.functional.pad(hidden, (0, 0, 1, 1, 1, 1))
    conv = torch.zeros_like(hidden)
    for dy in range(3):
        for dx in range(3):
            conv += padded[:, dy:dy + 5, dx:dx + 3, :] * mlp.local.weight[:, 0, dy, dx]
    expected = (hidden + conv + mlp.local.bias) @ mlp.fc2.weight.T + mlp.fc2.bias
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), expected, atol=1e-5, rtol=1e-5)


def test_camera_embedding():
    torch.manual_seed(0)
    model = LewinViT((64, 32), num_cameras=3, sie_coef=3.0, **SMALL).eval()
    x = torch.randn(1, 3, 64, 32).expand(3, -1, -1, -1)
    with torch.no_grad():
        out = model(x, torch.tensor([0, 1, 2]))
        no_sie = model(x[:1])
        embedded = model.patch_embed(x[:1]) + 3.0 * model.sie_embed[1]
        expected_trunk = model.last_downsample(model.layers(embedded))
        torch.testing.assert_close(model.forward_trunk(x[:1], torch.tensor([1])), expected_trunk)
    assert (out[0] - out[1]).abs().max() > 1e-4 and (out[1] - out[2]).abs().max() > 1e-4
    assert (out[0] - no_sie[0]).abs().max() > 1e-4
    assert model.sie_embed.shape == (3, 16) and 0.005 < model.sie_embed.std() < 0.05
    with pytest.raises(ValueError, match=r"camera id 3 .*NUM_CAMERAS is 3"):
        model(x, torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match="camera id -2"):
        model(x, torch.tensor([-2, 1, 2]))


def test_unknown_camera_gets_the_mean_embedding():
    """Camera -1: the mean of the table's rows (per view with a camera-view table), in a mixed batch."""
    torch.manual_seed(0)
    model = LewinViT((64, 32), num_cameras=3, sie_coef=3.0, **SMALL).eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        expected = model.last_downsample(model.layers(model.patch_embed(x[:1]) + 3.0 * model.sie_embed.mean(0)))
        mixed = model.forward_trunk(x, torch.tensor([-1, 2]))
        torch.testing.assert_close(mixed[:1], expected)
        torch.testing.assert_close(mixed[1:], model.forward_trunk(x[1:], torch.tensor([2])))
    pairs = LewinViT((64, 32), num_cameras=3, num_views=2, sie_coef=2.0, **SMALL).eval()
    with torch.no_grad():
        mean_of_view_1 = pairs.sie_embed.view(3, 2, -1)[:, 1].mean(0)
        embedded = pairs.patch_embed(x[:1]) + 2.0 * mean_of_view_1
        torch.testing.assert_close(pairs.forward_trunk(x[:1], torch.tensor([-1]), torch.tensor([1])),
                                   pairs.last_downsample(pairs.layers(embedded)))


def test_camera_view_embedding_is_one_row_per_pair():
    """As the original: with cameras and views, row camera * num_views + view of one table."""
    torch.manual_seed(0)
    model = LewinViT((64, 32), num_cameras=3, num_views=2, sie_coef=2.0, **SMALL).eval()
    assert model.sie_embed.shape == (6, 16)
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        for cam in range(3):
            for view in range(2):
                embedded = model.patch_embed(x) + 2.0 * model.sie_embed[cam * 2 + view]
                torch.testing.assert_close(model.forward_trunk(x, torch.tensor([cam]), torch.tensor([view])),
                                           model.last_downsample(model.layers(embedded)))
    with pytest.raises(ValueError, match="view ids"):
        model(x, torch.tensor([0]))
    with pytest.raises(ValueError, match=r"view id 2 .*NUM_VIEWS is 2"):
        model(x, torch.tensor([0]), torch.tensor([2]))
    views_only = LewinViT((64, 32), num_views=4, **SMALL)
    assert views_only.sie_embed.shape == (4, 16)


def test_last_stage_deepcopy_and_autocast():
    torch.manual_seed(0)
    model = LewinViT((64, 32), **SMALL).eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        trunk = model.forward_trunk(x)
        branch = copy.deepcopy(model.last_stage)
        torch.testing.assert_close(branch(trunk), model.last_stage(trunk))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert torch.isfinite(low).all() and (low.float() - model(x)).abs().max() < 0.5


def lewinvit_cfg(**opts):
    cfg = add_lwtgpf_config(get_cfg())
    cfg.MODEL.BACKBONE.NAME = "build_lewinvit_backbone"
    cfg.MODEL.BACKBONE.LEWINVIT.EMBED_DIM = 16
    cfg.MODEL.BACKBONE.LEWINVIT.DEPTHS = [1, 1, 2, 1]
    cfg.MODEL.BACKBONE.LEWINVIT.NUM_HEADS = [1, 1, 2, 2]
    cfg.INPUT.SIZE_TRAIN = [128, 64]
    for key, value in opts.items():
        node = cfg
        *path, last = key.split(".")
        for part in path:
            node = getattr(node, part)
        setattr(node, last, value)
    return cfg


def test_build_from_config():
    model = build_backbone(lewinvit_cfg(**{"MODEL.BACKBONE.NUM_CAMERAS": 6}))
    assert isinstance(model, LewinViT)
    assert model.num_features == 128 and model.sie_embed.shape == (6, 16) and model.img_size == (128, 64)
    assert isinstance(model.last_stage.norm, torch.nn.Identity)
    assert isinstance(build_backbone(lewinvit_cfg(**{"MODEL.BACKBONE.LEWINVIT.FINAL_NORM": True})).last_stage.norm,
                      torch.nn.LayerNorm)
    assert [len(s.blocks) for s in model.layers] + [len(model.last_stage.blocks)] == [1, 1, 2, 1]
    with pytest.raises(ValueError, match="INPUT.SIZE_TRAIN"):
        build_backbone(lewinvit_cfg(**{"INPUT.SIZE_TRAIN": [100, 64]}))
    with pytest.raises(ValueError, match="LEWINVIT.SIZE"):
        build_backbone(lewinvit_cfg(**{"MODEL.BACKBONE.LEWINVIT.SIZE": "huge"}))
    with pytest.raises(ValueError, match="built for 128x64"):
        model(torch.randn(1, 3, 64, 64))
    tiny = lewinvit_cfg(**{"MODEL.BACKBONE.LEWINVIT.EMBED_DIM": 0, "MODEL.BACKBONE.LEWINVIT.DEPTHS": [],
                           "MODEL.BACKBONE.LEWINVIT.NUM_HEADS": []})
    from lwtgpf.modeling.backbones.lewinvit import lewinvit_kwargs_from_config

    kwargs = lewinvit_kwargs_from_config(tiny)
    assert (kwargs["embed_dim"], kwargs["depths"], kwargs["num_heads"]) == (96, (2, 2, 6, 2), (3, 6, 12, 24))


def test_build_with_pretrained_file(tmp_path):
    torch.manual_seed(0)
    swin = timm_swin((448, 448))
    path = tmp_path / "imagenet_swin.pth"
    torch.save({"model": swin.state_dict()}, path)
    cfg = lewinvit_cfg(**{"MODEL.BACKBONE.PRETRAIN": True, "MODEL.BACKBONE.PRETRAIN_PATH": str(path),
                          "INPUT.SIZE_TRAIN": [448, 448], "MODEL.BACKBONE.LEWINVIT.FINAL_NORM": True})
    model = build_backbone(cfg).eval()
    x = torch.randn(1, 3, 448, 448)
    with torch.no_grad():
        torch.testing.assert_close(model(x), swin.forward_features(x).permute(0, 3, 1, 2), atol=2e-5, rtol=1e-5)


def test_fastreid_baseline_runs_on_lewinvit():
    from fastreid.modeling.meta_arch import build_model

    cfg = lewinvit_cfg(**{"MODEL.META_ARCHITECTURE": "Baseline", "MODEL.HEADS.NUM_CLASSES": 5,
                          "MODEL.BACKBONE.FEAT_DIM": 128, "MODEL.DEVICE": "cpu"})
    model = build_model(cfg).eval()
    assert isinstance(model.backbone, LewinViT)
    images = torch.rand(2, 3, 128, 64, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        feats = model({"images": images.clone()})  # Baseline normalises the batch in place
        # fastreid's head pools LewinViT's NCHW map over its rows and columns, then its BNNeck
        feature_map = model.backbone((images - model.pixel_mean) / model.pixel_std)
        expected = model.heads.bottleneck(feature_map.mean((2, 3), keepdim=True))[..., 0, 0]
    assert feats.shape == (2, 128)
    torch.testing.assert_close(feats, expected)
    assert not torch.allclose(feats[0], feats[1], atol=1e-3)  # each image's own feature


def test_no_graph_break():
    torch._dynamo.reset()
    model = LewinViT((64, 32), num_cameras=2, **SMALL).eval()
    x = torch.randn(2, 3, 64, 32)
    explained = torch._dynamo.explain(model.forward_trunk)(x, torch.tensor([0, 1]))
    assert explained.graph_break_count == 0, explained.break_reasons
    explained = torch._dynamo.explain(model.last_stage)(model.forward_trunk(x))
    assert explained.graph_break_count == 0, explained.break_reasons
