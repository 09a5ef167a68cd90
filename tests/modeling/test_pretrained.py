"""Pretrained Swin files (SOLIDER / timm layouts) into LewinViT."""
import hashlib
import re
import warnings
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn

import lwtgpf  # noqa: F401  (fastreid compatibility first)
from lwtgpf.cli import load_config
from lwtgpf.modeling.backbones.lewinvit import LewinViT, build_lewinvit_backbone
from lwtgpf.modeling.backbones.pretrained import (lewinvit_to_solider, load_pretrained, mmcls_merge_to_timm,
                                                  solider_to_timm, timm_to_lewinvit)
from lwtgpf.weights import adapt_rel_pos_table, read_state_dict

SMALL = dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 1, 2, 2))
ORDER = (0, 2, 1, 3)  # mmcls position g' holds timm's 2x2 group ORDER[g']


def timm_to_mmcls_merge(value: torch.Tensor) -> torch.Tensor:
    """timm merging input order (g*C + c) -> mmcls (c*4 + g'), written index by index."""
    four_c = value.shape[-1]
    c_dim = four_c // 4
    index = torch.empty(four_c, dtype=torch.long)
    for c in range(c_dim):
        for g_mm in range(4):
            index[c * 4 + g_mm] = ORDER[g_mm] * c_dim + c
    return value[..., index]


def to_solider_layout(swin: nn.Module, num_stages: int = 4) -> dict:
    """A timm Swin's tensors renamed the way SOLIDER's (mmcls) checkpoints name them."""
    out = {}
    for key, value in swin.state_dict().items():
        new = key
        m = re.match(r"layers\.(\d+)\.downsample\.(.*)$", key)
        if m:  # merging moves from the start of stage i to the end of stage i-1
            new = f"stages.{int(m.group(1)) - 1}.downsample.{m.group(2)}"
            value = timm_to_mmcls_merge(value)
        else:
            new = (new.replace("layers.", "stages.").replace(".attn.", ".attn.w_msa.")
                   .replace(".mlp.fc1.", ".ffn.layers.0.0.").replace(".mlp.fc2.", ".ffn.layers.1.")
                   .replace("patch_embed.proj.", "patch_embed.projection."))
            if new.startswith("norm."):
                new = f"norm{num_stages - 1}." + new[len("norm."):]
        out["backbone." + new] = value.clone()
    for name, buf in swin.named_buffers():
        if name.endswith("relative_position_index"):
            out["backbone." + name.replace("layers.", "stages.").replace(".attn.", ".attn.w_msa.")] = buf.clone()
    out["backbone.norm0.weight"] = torch.ones(16)
    out["backbone.semantic_embed_w.0.weight"] = torch.randn(32, 2)
    out["head.last_layer.weight"] = torch.randn(8, 4)
    return {"teacher": out, "student": {"x": torch.zeros(1)}}


def timm_swin(img_size):
    """A random timm Swin whose every stage has 7x7 windows and tables, as SOLIDER's checkpoints."""
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=img_size,
                             num_classes=0, always_partition=True, **SMALL).eval()


def loaded_from_timm_layout(swin: nn.Module, tmp_path, img_size, **kwargs) -> LewinViT:
    """LewinViT loaded from `swin`'s own (timm-layout) state dict: the reference for other layouts."""
    torch.save(swin.state_dict(), tmp_path / "timm_layout.pth")
    model = LewinViT(img_size, **kwargs).eval()
    load_pretrained(model, str(tmp_path / "timm_layout.pth"), "timm")
    return model


def assert_same_weights(model: nn.Module, expected: nn.Module) -> None:
    mine, theirs = model.state_dict(), expected.state_dict()
    assert mine.keys() == theirs.keys()
    for key in mine:
        assert torch.equal(mine[key], theirs[key]), key


def test_merge_order_matches_mmcls_unfold():
    """mmcls merges with nn.Unfold; timm with reshape/permute: converted weights agree."""
    torch.manual_seed(0)
    c, b, h, w = 3, 2, 4, 6
    timm_merge = timm.models.swin_transformer.PatchMerging(c).eval()
    nn.init.normal_(timm_merge.norm.weight)
    nn.init.normal_(timm_merge.norm.bias)
    mm_norm = nn.LayerNorm(4 * c)
    mm_reduction = nn.Linear(4 * c, 2 * c, bias=False)
    with torch.no_grad():
        mm_norm.weight.copy_(timm_to_mmcls_merge(timm_merge.norm.weight))
        mm_norm.bias.copy_(timm_to_mmcls_merge(timm_merge.norm.bias))
        mm_reduction.weight.copy_(timm_to_mmcls_merge(timm_merge.reduction.weight))
        x = torch.randn(b, h, w, c)
        unfolded = nn.Unfold(kernel_size=2, stride=2)(x.permute(0, 3, 1, 2)).transpose(1, 2)
        mm_out = mm_reduction(mm_norm(unfolded)).reshape(b, h // 2, w // 2, 2 * c)
        torch.testing.assert_close(timm_merge(x), mm_out)
        # and our converter inverts the test's layout rewrite
        torch.testing.assert_close(mmcls_merge_to_timm(mm_reduction.weight), timm_merge.reduction.weight)


@pytest.mark.parametrize("fmt", ["solider", "auto"])
def test_solider_layout_loads_the_same_weights(fmt, tmp_path):
    """SOLIDER's mmcls names and merge order give exactly the tensors timm's layout gives."""
    torch.manual_seed(0)
    img_size = (96, 64)
    swin = timm_swin(img_size)
    path = tmp_path / "solider_swin.pth"
    torch.save(to_solider_layout(swin), path)
    model = LewinViT(img_size, num_cameras=2, final_norm=True, **SMALL).eval()
    report = load_pretrained(model, str(path), fmt)
    assert report.format == "solider"
    assert report.missing == []
    assert set(report.new) == {"sie_embed"} | {k for k in model.state_dict() if ".mlp.local." in k}
    assert "backbone.norm0.weight" not in report.unused  # prefixes are gone from the report keys
    assert "norm0.weight" in report.unused and "semantic_embed_w.0.weight" in report.unused
    assert "head.last_layer.weight" in report.unused
    assert any(k.endswith("relative_position_index") for k in report.unused)
    expected = loaded_from_timm_layout(swin, tmp_path, img_size, num_cameras=2, final_norm=True, **SMALL)
    expected.sie_embed.data.copy_(model.sie_embed)
    assert_same_weights(model, expected)


def test_final_norm_is_reported_unused_by_default(tmp_path):
    """The branches end without a LayerNorm (the original drops SOLIDER's norm3): the file's is reported."""
    torch.manual_seed(0)
    swin = timm_swin((64, 32))
    torch.save(to_solider_layout(swin), tmp_path / "solider.pth")
    model = LewinViT((64, 32), **SMALL)
    report = load_pretrained(model, str(tmp_path / "solider.pth"))
    assert report.missing == []
    assert "FINAL_NORM" in report.unused["last_stage.norm.weight"]


def lwtgpf_style_file(swin: nn.Module, cameras: int) -> dict:
    """A whole re-id model in mmcls names under `base.` (SOLIDER-REID, original LWTGPF), `module.`-prefixed."""
    teacher = to_solider_layout(swin)["teacher"]
    state = {"module.base." + k[len("backbone."):]: v for k, v in teacher.items() if k.startswith("backbone.")}
    state["module.base.sie_embed"] = torch.randn(cameras, 1, 16)
    state["module.b1.blocks.0.attn.w_msa.qkv.weight"] = torch.randn(384, 128)
    state["module.bottleneck.weight"] = torch.ones(128)
    state["module.part_bns.0.running_mean"] = torch.zeros(128)
    state["module.classifier.weight"] = torch.zeros(10, 128)
    return {"model": state, "optimizer": {"state": {}}, "epoch": 49}


def test_whole_reid_model_file_as_backbone_initialisation(tmp_path):
    """SOLIDER-REID / original LWTGPF files (`base.` prefix) initialise the backbone; heads are reported."""
    torch.manual_seed(0)
    swin = timm_swin((64, 32))
    file = lwtgpf_style_file(swin, cameras=6)
    torch.save(file, tmp_path / "lwtgpf.pt")
    model = LewinViT((64, 32), num_cameras=6, local_enhance=False, **SMALL).eval()
    report = load_pretrained(model, str(tmp_path / "lwtgpf.pt"))
    assert report.format == "solider" and report.missing == [] and report.new == []
    for key in ("b1.blocks.0.attn.w_msa.qkv.weight", "bottleneck.weight", "part_bns.0.running_mean",
                "classifier.weight"):
        assert "MODEL.WEIGHTS" in report.unused[key], key
    torch.testing.assert_close(model.sie_embed, file["model"]["module.base.sie_embed"][:, 0])
    expected = loaded_from_timm_layout(swin, tmp_path, (64, 32), num_cameras=6, local_enhance=False, **SMALL)
    expected.sie_embed.data.copy_(model.sie_embed)
    assert_same_weights(model, expected)


def test_module_prefix_state_dict_nesting_and_microsoft_layout(tmp_path):
    torch.manual_seed(0)
    img_size = (64, 64)
    swin = timm_swin(img_size)
    microsoft = {}
    for key, value in swin.state_dict().items():
        m = re.match(r"layers\.(\d+)\.downsample\.(.*)$", key)
        key = f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}" if m else key
        microsoft["module." + key] = value
    microsoft["module.head.weight"] = torch.zeros(10, 128)
    path = tmp_path / "ms.pth"
    torch.save({"state_dict": microsoft}, path)
    model = LewinViT(img_size, local_enhance=False, final_norm=True, **SMALL).eval()
    report = load_pretrained(model, str(path))
    assert report.format == "timm" and report.missing == [] and report.new == []
    assert report.unused == {"head.weight": "classifier head"}
    assert_same_weights(model, loaded_from_timm_layout(swin, tmp_path, img_size, local_enhance=False,
                                                       final_norm=True, **SMALL))


def test_file_that_fits_nothing(tmp_path):
    model = LewinViT((64, 32), **SMALL)
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 64)}, path)
    with pytest.raises(ValueError, match=r"resnet\.pth.*fit"):
        load_pretrained(model, str(path))
    with pytest.raises(ValueError, match=r"resnet\.pth fit nothing"):
        load_pretrained(model, str(path), "timm")
    other = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=(64, 32), num_classes=0,
                              embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 1, 2, 2))
    torch.save(other.state_dict(), tmp_path / "wide.pth")
    with pytest.raises(ValueError, match=r"wide\.pth.*do not fit.*EMBED_DIM"):
        load_pretrained(model, str(tmp_path / "wide.pth"))
    with pytest.raises(FileNotFoundError, match="PRETRAIN_PATH"):
        load_pretrained(model, str(tmp_path / "missing.pth"))


def test_camera_table_of_another_size_is_adapted(tmp_path):
    torch.manual_seed(0)
    source = LewinViT((64, 32), num_cameras=6, **SMALL)
    path = tmp_path / "market_model.pth"
    torch.save(source.state_dict(), path)
    for cams in (8, 4):
        target = LewinViT((64, 32), num_cameras=cams, **SMALL)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report = load_pretrained(target, str(path))
        assert any("sie_embed" in str(w.message) for w in caught)
        assert report.missing == [] and report.new == [] and "sie_embed" in report.loaded
        keep = min(cams, 6)
        torch.testing.assert_close(target.sie_embed[:keep], source.sie_embed[:keep])
        if cams > 6:
            torch.testing.assert_close(target.sie_embed[6:], source.sie_embed.mean(0).expand(cams - 6, -1))


@pytest.mark.filterwarnings("ignore::UserWarning")  # timm's interpolation warns about torch internals
def test_relative_position_table_crop_is_exact():
    """A 7x7-window table cropped for a smaller window (WINDOW_SIZE 4) gives every offset the bias it had."""
    torch.manual_seed(0)
    heads = 2
    table = torch.randn(13 * 13, heads)
    cropped = adapt_rel_pos_table(table, (4, 4), torch.Size((7 * 7, heads)))
    for dy in range(-3, 4):
        for dx in range(-3, 4):
            old = (dy + 6) * 13 + (dx + 6)
            new = (dy + 3) * 7 + (dx + 3)
            torch.testing.assert_close(cropped[new], table[old])
    grown = adapt_rel_pos_table(table, (9, 9), torch.Size((17 * 17, heads)))
    assert grown.shape == (17 * 17, heads)


def test_window7_tables_load_unchanged_at_every_stage_at_384x128(tmp_path):
    """With the original geometry every stage attends in 7x7 windows: SOLIDER / timm tables load as they are."""
    torch.manual_seed(0)
    big = timm_swin((224, 224))  # every stage has 7x7 windows and tables
    torch.save(to_solider_layout(big), tmp_path / "w7.pth")
    model = LewinViT((384, 128), **SMALL)
    report = load_pretrained(model, str(tmp_path / "w7.pth"))
    assert report.missing == [] and report.adapted == []
    stages = [*model.layers, model.last_stage]
    for i, stage in enumerate(stages):
        for j, block in enumerate(stage.blocks):
            torch.testing.assert_close(block.attn.relative_position_bias_table,
                                       big.layers[i].blocks[j].attn.relative_position_bias_table)


def test_solider_writer_matches_the_reference_layout(tmp_path):
    """A plain LewinViT written by `lewinvit_to_solider` has exactly the tensors and names the
    reference rewrite gives SOLIDER's layout, and reads back bit for bit."""
    torch.manual_seed(0)
    img_size = (64, 32)
    swin = timm_swin(img_size)
    plain = dict(local_enhance=False, final_norm=True, **SMALL)
    model = loaded_from_timm_layout(swin, tmp_path, img_size, **plain)
    written = lewinvit_to_solider(model.state_dict())
    reference = {k: v for k, v in to_solider_layout(swin)["teacher"].items()
                 if k.startswith("backbone.") and not k.endswith("relative_position_index")
                 and not k.startswith(("backbone.norm0.", "backbone.semantic_embed"))}
    assert written.keys() == reference.keys()
    for key in reference:
        assert torch.equal(written[key], reference[key]), key
    torch.save({"teacher": written}, tmp_path / "written.pth")
    again = LewinViT(img_size, **plain).eval()
    report = load_pretrained(again, str(tmp_path / "written.pth"))
    assert report.format == "solider" and report.missing == [] and report.new == [] and report.unused == {}
    assert_same_weights(again, model)


def test_solider_writer_refuses_lewinvit_own_tensors():
    model = LewinViT((64, 32), num_cameras=2, **SMALL)
    with pytest.raises(ValueError, match=r"sie_embed.*NUM_CAMERAS 0"):
        lewinvit_to_solider(model.state_dict())


REPO = Path(__file__).resolve().parents[2]
DEMO_WEIGHTS = REPO / "pretrained" / "lewinvit_demo_synthetic.pth"


@pytest.mark.parametrize("final_norm", [False, True])
def test_demo_weights_load_with_every_tensor_used(final_norm):
    """The shipped demo weights (tools/pretrain.py) are a SOLIDER-layout plain Swin of the demo's size:
    every file tensor loads into the demo's LewinViT unchanged, but the final norm it drops."""
    cfg = load_config(str(REPO / "configs/LWTGPF/synthetic.yml"),
                      ["MODEL.BACKBONE.PRETRAIN", "False", "MODEL.BACKBONE.LEWINVIT.FINAL_NORM", str(final_norm)])
    model = build_lewinvit_backbone(cfg)
    report = load_pretrained(model, str(DEMO_WEIGHTS))
    file_tensors = read_state_dict(str(DEMO_WEIGHTS))
    assert report.format == "solider" and report.missing == []
    assert set(report.new) == {"sie_embed"} | {k for k in model.state_dict() if ".mlp.local." in k}
    dropped = {"last_stage.norm.weight", "last_stage.norm.bias"}
    assert set(report.unused) == (set() if final_norm else dropped)
    assert len(report.loaded) + len(report.unused) == len(file_tensors) > 70
    timm_layout, _ = solider_to_timm(file_tensors)
    converted, _ = timm_to_lewinvit(timm_layout)
    state = model.state_dict()
    for key in report.loaded:
        assert torch.equal(state[key], converted[key]), key


def test_demo_weights_match_their_recorded_checksum():
    recorded = dict(line.split()[::-1] for line in (DEMO_WEIGHTS.parent / "SHA256SUMS").read_text().splitlines())
    assert hashlib.sha256(DEMO_WEIGHTS.read_bytes()).hexdigest() == recorded[DEMO_WEIGHTS.name]
