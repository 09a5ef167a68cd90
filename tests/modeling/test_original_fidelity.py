"""LewinViT + GlobalPartHead compute what the original LWTGPF code computes (METHOD.md sections 1, 2).

Everything is held to a plain reference written from METHOD.md, not to timm: window attention with
explicit per-window loops on the zero-padded, rolled map, and the whole original model evaluated
straight from an original-format state dict (mmcls names, `base.` / `b1.` / `b2.` / `bottleneck.` /
`part_bns.`). The original checkpoints go through `tools/convert_weights.py` or MODEL.WEIGHTS.
"""
import importlib.util
import logging
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import lwtgpf  # noqa: F401  (fastreid compatibility first)
from fastreid.config import get_cfg
from fastreid.modeling.meta_arch import build_model
from lwtgpf.config import add_lwtgpf_config
from lwtgpf.engine.checkpoint import AtomicCheckpointer
from lwtgpf.modeling import model_file
from lwtgpf.modeling.backbones.lewinvit import LewinBlock
from lwtgpf.modeling.original import convert_original, describe_original, original_state_dict

ROOT = Path(__file__).resolve().parents[2]
EPS = 1e-6  # the original's LayerNorm eps


def convert_weights(*argv) -> int:
    """tools/convert_weights.py, run in this process: its exit status (parser errors exit with 2)."""
    spec = importlib.util.spec_from_file_location("convert_weights", ROOT / "tools/convert_weights.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    try:
        return tool.main([str(a) for a in argv])
    except SystemExit as exit_:
        return exit_.code


# ---------------------------------------------------------------- reference, from METHOD.md

def ref_layer_norm(x, weight, bias):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + EPS) * weight + bias


def relative_index(window):
    """index[i, j] into the (2w-1)^2 table for window tokens i, j (row-major in the window)."""
    coords = [(r, c) for r in range(window) for c in range(window)]
    return torch.tensor([[(ri - rj + window - 1) * (2 * window - 1) + (ci - cj + window - 1)
                          for rj, cj in coords] for ri, ci in coords])


def ref_window_attention(x, qkv_w, qkv_b, proj_w, proj_b, table, heads, window, shift):
    """METHOD.md section 1: pad bottom/right to multiples of `window`, roll by -shift on the padded map,
    attend inside each window with the relative-position bias and, when shifted, -100 between tokens
    of different regions (slices (0, -w), (-w, -s), (-s, None) per axis), roll back, crop."""
    b, h, w, c = x.shape
    hp, wp = math.ceil(h / window) * window, math.ceil(w / window) * window
    padded = torch.zeros(b, hp, wp, c)
    padded[:, :h, :w] = x
    labels = torch.zeros(hp, wp)
    if shift:
        padded = torch.roll(padded, shifts=(-shift, -shift), dims=(1, 2))
        bands = [(0, hp - window), (hp - window, hp - shift), (hp - shift, hp)]
        cols = [(0, wp - window), (wp - window, wp - shift), (wp - shift, wp)]
        for i, (r0, r1) in enumerate(bands):
            for j, (c0, c1) in enumerate(cols):
                labels[r0:r1, c0:c1] = 3 * i + j
    index = relative_index(window)
    d = c // heads
    out = torch.zeros_like(padded)
    for n in range(b):
        for top in range(0, hp, window):
            for left in range(0, wp, window):
                tokens = padded[n, top:top + window, left:left + window].reshape(-1, c)
                lab = labels[top:top + window, left:left + window].reshape(-1)
                mask = torch.where(lab[:, None] == lab[None, :], 0.0, -100.0)
                # q, k, v: [heads, tokens, d]; channel s * C + head * d + j of the qkv projection
                q, k, v = (tokens @ qkv_w.T + qkv_b).reshape(-1, 3, heads, d).permute(1, 2, 0, 3)
                scores = q @ k.transpose(1, 2) / math.sqrt(d) + table[index].permute(2, 0, 1) + mask
                heads_out = torch.softmax(scores, dim=-1) @ v
                result = heads_out.permute(1, 0, 2).reshape(-1, c) @ proj_w.T + proj_b
                out[n, top:top + window, left:left + window] = result.reshape(window, window, c)
    if shift:
        out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
    return out[:, :h, :w]


def ref_block(x, state, prefix, heads, window, shifted):
    p = lambda name: state[f"{prefix}.{name}"]  # noqa: E731
    y = ref_layer_norm(x, p("norm1.weight"), p("norm1.bias"))
    x = x + ref_window_attention(y, p("attn.w_msa.qkv.weight"), p("attn.w_msa.qkv.bias"), p("attn.w_msa.proj.weight"),
                                 p("attn.w_msa.proj.bias"), p("attn.w_msa.relative_position_bias_table"), heads,
                                 window, window // 2 if shifted else 0)
    y = ref_layer_norm(x, p("norm2.weight"), p("norm2.bias"))
    y = F.gelu(y @ p("ffn.layers.0.0.weight").T + p("ffn.layers.0.0.bias"))
    return x + y @ p("ffn.layers.1.weight").T + p("ffn.layers.1.bias")


def ref_merge(x, state, prefix):
    """mmcls patch merging: the 2x2 neighbourhood unfolded channel-major, index c * 4 + dy * 2 + dx."""
    b, h, w, c = x.shape
    merged = torch.zeros(b, h // 2, w // 2, 4 * c)
    for dy in range(2):
        for dx in range(2):
            for ch in range(c):
                merged[..., ch * 4 + dy * 2 + dx] = x[:, dy::2, dx::2, ch]
    merged = ref_layer_norm(merged, state[f"{prefix}.norm.weight"], state[f"{prefix}.norm.bias"])
    return merged @ state[f"{prefix}.reduction.weight"].T


def ref_original_features(state, images, cams, heads, window=7, granularities=(2, 3)):
    """The original model's eval features from its state dict: global [B, D] and parts [P, B, D]."""
    depth = lambda prefix: len({k.split(".")[k.split(".").index("blocks") + 1]  # noqa: E731
                                for k in state if k.startswith(prefix + ".blocks.")})
    x = F.conv2d(images, state["base.patch_embed.projection.weight"], state["base.patch_embed.projection.bias"],
                 stride=4).permute(0, 2, 3, 1)
    x = ref_layer_norm(x, state["base.patch_embed.norm.weight"], state["base.patch_embed.norm.bias"])
    x = x + 3.0 * state["base.sie_embed"][cams][:, :, None, :]  # [B, 1, D] -> every token; SIE_COE 3
    for stage in range(3):
        for j in range(depth(f"base.stages.{stage}")):
            x = ref_block(x, state, f"base.stages.{stage}.blocks.{j}", heads[stage], window, j % 2 == 1)
        x = ref_merge(x, state, f"base.stages.{stage}.downsample")
    globals_, parts = [], []
    for branch, g in zip(("b1", "b2"), granularities):
        y = x
        for j in range(depth(branch)):
            y = ref_block(y, state, f"{branch}.blocks.{j}", heads[3], window, j % 2 == 1)
        globals_.append(y.mean((1, 2)))
        rows = y.shape[1]
        for i in range(g):  # AdaptiveAvgPool2d((g, 1)) bins
            top, bottom = (i * rows) // g, -((-(i + 1) * rows) // g)
            parts.append(y[:, top:bottom].mean((1, 2)))
    feats = [(globals_[0] + globals_[1]) / 2] + parts
    names = ["bottleneck"] + [f"part_bns.{k}" for k in range(len(parts))]
    out = []
    for name, f in zip(names, feats):
        bn = (f - state[f"{name}.running_mean"]) / torch.sqrt(state[f"{name}.running_var"] + 1e-5)
        bn = bn * state[f"{name}.weight"] + state[f"{name}.bias"]
        out.append(bn / bn.norm(dim=1, keepdim=True))
    return out[0], torch.stack(out[1:])


def random_original_checkpoint(embed=16, depths=(2, 2, 2, 2), heads=(1, 2, 2, 4), window=7, cameras=4, parts=5,
                               seed=0):
    """A checkpoint as the original code saves it, random everywhere (LayerNorms, tables, BN statistics,
    distinct branches), keys prefixed `module.` as under DataParallel."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape, scale=1.0: torch.randn(*shape, generator=g) * scale  # noqa: E731
    state = {"base.patch_embed.projection.weight": rnd(embed, 3, 4, 4, scale=0.1),
             "base.patch_embed.projection.bias": rnd(embed, scale=0.1),
             "base.patch_embed.norm.weight": 1 + rnd(embed, scale=0.2), "base.patch_embed.norm.bias": rnd(embed, scale=0.2),
             "base.sie_embed": rnd(cameras, 1, embed, scale=0.3)}

    def block(prefix, dim, nh):
        state.update({
            f"{prefix}.norm1.weight": 1 + rnd(dim, scale=0.2), f"{prefix}.norm1.bias": rnd(dim, scale=0.2),
            f"{prefix}.attn.w_msa.relative_position_bias_table": rnd((2 * window - 1) ** 2, nh),
            f"{prefix}.attn.w_msa.relative_position_index": relative_index(window),
            f"{prefix}.attn.w_msa.qkv.weight": rnd(3 * dim, dim, scale=dim ** -0.5),
            f"{prefix}.attn.w_msa.qkv.bias": rnd(3 * dim, scale=0.2),
            f"{prefix}.attn.w_msa.proj.weight": rnd(dim, dim, scale=dim ** -0.5),
            f"{prefix}.attn.w_msa.proj.bias": rnd(dim, scale=0.2),
            f"{prefix}.norm2.weight": 1 + rnd(dim, scale=0.2), f"{prefix}.norm2.bias": rnd(dim, scale=0.2),
            f"{prefix}.ffn.layers.0.0.weight": rnd(4 * dim, dim, scale=dim ** -0.5),
            f"{prefix}.ffn.layers.0.0.bias": rnd(4 * dim, scale=0.2),
            f"{prefix}.ffn.layers.1.weight": rnd(dim, 4 * dim, scale=(4 * dim) ** -0.5),
            f"{prefix}.ffn.layers.1.bias": rnd(dim, scale=0.2)})

    for stage in range(4):
        dim = embed * 2 ** stage
        for j in range(depths[stage]):
            block(f"base.stages.{stage}.blocks.{j}", dim, heads[stage])
        if stage < 3:
            state.update({f"base.stages.{stage}.downsample.norm.weight": 1 + rnd(4 * dim, scale=0.2),
                          f"base.stages.{stage}.downsample.norm.bias": rnd(4 * dim, scale=0.2),
                          f"base.stages.{stage}.downsample.reduction.weight": rnd(2 * dim, 4 * dim,
                                                                                  scale=(4 * dim) ** -0.5)})
        if stage > 0:  # out_indices (1, 2, 3): computed by the original, never used for features
            state[f"base.norm{stage}.weight"], state[f"base.norm{stage}.bias"] = rnd(dim), rnd(dim)
    last = embed * 8
    for branch in ("b1", "b2"):
        for j in range(depths[3]):
            block(f"{branch}.blocks.{j}", last, heads[3])
    for name in ["bottleneck"] + [f"part_bns.{k}" for k in range(parts)]:
        state.update({f"{name}.weight": 1 + rnd(last, scale=0.3), f"{name}.bias": rnd(last, scale=0.3),
                      f"{name}.running_mean": rnd(last, scale=0.5),
                      f"{name}.running_var": 0.5 + torch.rand(last, generator=g),
                      f"{name}.num_batches_tracked": torch.tensor(12345)})
    return {"model": {"module." + k: v for k, v in state.items()},
            "optimizer": {"state": {}, "param_groups": [{"lr": 3.5e-4, "params": [0, 1]}]},
            "lr_scheduler": {"last_epoch": 49}, "epoch": 49}


# ---------------------------------------------------------------- window geometry

@pytest.mark.parametrize("height,width,window", [
    (12, 4, 7),   # stage 4 at 384x128: padded to 14x7
    (24, 8, 7),   # stage 3: padded to 28x14
    (5, 3, 7),    # smaller than the window on both sides
    (14, 7, 7),   # whole windows: no padding
    (9, 10, 4),   # window 4, padded to 12x12
    (3, 9, 4),
])
@pytest.mark.parametrize("shifted", [False, True])
def test_window_attention_matches_per_window_reference(height, width, window, shifted):
    torch.manual_seed(0)
    dim, heads = 8, 2
    block = LewinBlock(dim=dim, input_resolution=(height, width), num_heads=heads, window_size=window,
                       shift_size=window // 2 if shifted else 0, local_enhance=False).eval()
    attn = block.attn
    with torch.no_grad():
        for param in attn.parameters():
            param.normal_(std=0.5)
        x = torch.randn(2, height, width, dim)
        expected = ref_window_attention(x, attn.qkv.weight, attn.qkv.bias, attn.proj.weight, attn.proj.bias,
                                        attn.relative_position_bias_table, heads, window,
                                        window // 2 if shifted else 0)
        torch.testing.assert_close(block._attn(x), expected, atol=1e-5, rtol=1e-5)
    assert attn.relative_position_bias_table.shape == ((2 * window - 1) ** 2, heads)


# ---------------------------------------------------------------- original checkpoints

SMALL_OVERRIDES = ["MODEL.BACKBONE.LEWINVIT.EMBED_DIM", "16", "MODEL.BACKBONE.LEWINVIT.DEPTHS", "[2,2,2,2]",
                   "MODEL.BACKBONE.LEWINVIT.NUM_HEADS", "[1,2,2,4]", "MODEL.BACKBONE.NUM_CAMERAS", "4"]
HEADS = (1, 2, 2, 4)


def market_cfg(*overrides):
    """configs/LWTGPF/market.yml as `--eval-only` builds it (no pretrained backbone file), on CPU."""
    cfg = add_lwtgpf_config(get_cfg())
    cfg.merge_from_file(str(ROOT / "configs/LWTGPF/market.yml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.BACKBONE.PRETRAIN", "False", *overrides])
    return cfg


def images_and_cams(cfg, batch=2):
    torch.manual_seed(1)
    raw = torch.rand(batch, 3, 384, 128) * 255
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD).view(1, 3, 1, 1)
    return raw, (raw - mean) / std, torch.tensor([3, 0, 2, 1][:batch])


def assert_original_features(model, checkpoint, cfg):
    state = original_state_dict(checkpoint)
    raw, normalised, cams = images_and_cams(cfg)
    with torch.no_grad():
        ref_global, ref_parts = ref_original_features(state, normalised, cams, HEADS)
        model.eval()
        retrieval = model({"images": raw, "camids": cams})
        feats = model.extract_features({"images": raw, "camids": cams})
    torch.testing.assert_close(retrieval, ref_global, atol=1e-4, rtol=0)
    torch.testing.assert_close(feats[0], ref_global, atol=1e-4, rtol=0)
    torch.testing.assert_close(feats[1:], ref_parts, atol=1e-4, rtol=0)


def test_conversion_uses_every_tensor_and_gives_the_original_features():
    checkpoint = random_original_checkpoint()
    cfg = market_cfg(*SMALL_OVERRIDES)
    model = build_model(cfg)
    converted, info = convert_original(original_state_dict(checkpoint))
    model.load_state_dict(converted, strict=True)  # every model tensor loaded, every converted tensor used
    assert (info.embed_dim, info.depths, info.num_heads, info.num_cameras, info.num_parts) == \
        (16, (2, 2, 2, 2), HEADS, 4, 5)
    assert info.size is None and info.config_overrides() == SMALL_OVERRIDES + ["MODEL.BACKBONE.NUM_VIEWS", "0"]
    assert_original_features(model, checkpoint, cfg)


@pytest.mark.slow
def test_lewinvit_small_original_checkpoint_at_384x128():
    """The published size (LewinViT-S, 6 cameras, configs/LWTGPF/market.yml as it is), random original weights."""
    checkpoint = random_original_checkpoint(embed=96, depths=(2, 2, 18, 2), heads=(3, 6, 12, 24), cameras=6, seed=11)
    cfg = market_cfg()
    model = build_model(cfg)
    converted, info = convert_original(original_state_dict(checkpoint))
    assert info.config_overrides() == ["MODEL.BACKBONE.LEWINVIT.SIZE", "small", "MODEL.BACKBONE.NUM_CAMERAS", "6",
                                       "MODEL.BACKBONE.NUM_VIEWS", "0"]
    model.load_state_dict(converted, strict=True)
    raw, normalised, _ = images_and_cams(cfg)
    cams = torch.tensor([5, 2])
    with torch.no_grad():
        ref_global, ref_parts = ref_original_features(original_state_dict(checkpoint), normalised, cams,
                                                      (3, 6, 12, 24))
        feats = model.eval().extract_features({"images": raw, "camids": cams})
    print(f"max |difference| global {(feats[0] - ref_global).abs().max():.2e}, "
          f"parts {(feats[1:] - ref_parts).abs().max():.2e}")
    torch.testing.assert_close(feats[0], ref_global, atol=1e-5, rtol=0)
    torch.testing.assert_close(feats[1:], ref_parts, atol=1e-5, rtol=0)


def test_convert_weights_tool_then_eval_only_loading(tmp_path, capsys):
    checkpoint = random_original_checkpoint(seed=3)
    source = tmp_path / "49.pt"
    torch.save(checkpoint, source)
    out = tmp_path / "converted" / "lwtgpf_market.pth"
    assert convert_weights(source, out) == 0
    printed = capsys.readouterr().out
    assert "4 cameras, no views" in printed and "saved after epoch 49" in printed
    assert "Ignored entries: epoch, lr_scheduler, optimizer" in printed
    assert " ".join(SMALL_OVERRIDES) in printed
    saved = torch.load(out, weights_only=True)
    assert set(saved) == {"model"}

    cfg = market_cfg(*SMALL_OVERRIDES)
    model = build_model(cfg)
    assert set(saved["model"]) == set(model.state_dict())
    AtomicCheckpointer(model).load(str(out))
    assert_original_features(model, checkpoint, cfg)

    assert convert_weights(source, out) == 2 and "exists; pass --force" in capsys.readouterr().err


def test_model_weights_pointing_at_an_original_checkpoint_is_converted_on_load(tmp_path):
    checkpoint = random_original_checkpoint(seed=5)
    path = tmp_path / "49.pt"
    torch.save(checkpoint, path)
    cfg = market_cfg(*SMALL_OVERRIDES)
    model = build_model(cfg)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = model_file.logger
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        AtomicCheckpointer(model).load(str(path))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert sum("original LWTGPF code" in r.getMessage() for r in records) == 1
    assert_original_features(model, checkpoint, cfg)


def test_conversion_without_local_enhancement_and_with_views():
    checkpoint = random_original_checkpoint(cameras=6, seed=7)
    state = original_state_dict(checkpoint)
    converted, info = convert_original(state, num_views=2, local_enhance=False)
    assert (info.num_cameras, info.num_views) == (3, 2)
    assert not any(".mlp.local." in k for k in converted)
    model = build_model(market_cfg(*SMALL_OVERRIDES[:-1], "3", "MODEL.BACKBONE.NUM_VIEWS", "2",
                                   "MODEL.BACKBONE.LEWINVIT.LOCAL_ENHANCE", "False"))
    model.load_state_dict(converted, strict=True)
    with pytest.raises(ValueError, match="does not divide"):
        describe_original(state, num_views=4)


def test_unknown_tensors_and_non_original_files_are_named(tmp_path, capsys):
    checkpoint = random_original_checkpoint(seed=9)
    state = original_state_dict(checkpoint)
    with pytest.raises(ValueError, match=r"1 tensors .*no place.*fpn\.lateral"):
        convert_original({**state, "fpn.lateral_convs.0.weight": torch.zeros(1)})
    assert original_state_dict({"model": {"backbone.patch_embed.proj.weight": torch.zeros(1)}}) is None
    torch.save({"model": {"conv1.weight": torch.zeros(2)}}, tmp_path / "resnet.pth")
    assert convert_weights(tmp_path / "resnet.pth", tmp_path / "out.pth") == 2
    assert "resnet.pth is not a checkpoint of the original LWTGPF code" in capsys.readouterr().err
    assert not (tmp_path / "out.pth").exists()
