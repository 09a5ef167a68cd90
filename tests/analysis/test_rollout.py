"""Attention rollout through shifted windows against a dense token-by-token reference."""
import math

import pytest
import torch

from lwtgpf.analysis.retrieval import retrieval_embedding
from lwtgpf.analysis.rollout import AttentionRecorder, attention_rollout, rollout_relevance
from lwtgpf.modeling.backbones.lewinvit import LewinBlock

from .conftest import BASELINE, TINY_LEWINVIT, TINY_RESNET, tiny_model


def dense_attention(block: LewinBlock, x: torch.Tensor) -> torch.Tensor:
    """Per-head attention [heads, N, N] of one image's block input x [H, W, C] over the padded map
    (N = Hp * Wp tokens in row-major order), written from METHOD.md with no roll or window partition:
    a token at (y, x) sits at ((y - s) mod Hp, (x - s) mod Wp) of the rolled map, tokens attend
    within the same window there, with the relative-position bias and the shifted-window mask."""
    height, width, channels = x.shape
    w, s = block.window_size[0], block.shift_size[0]
    hp, wp = math.ceil(height / w) * w, math.ceil(width / w) * w
    padded = torch.zeros(hp, wp, channels, dtype=torch.float64)
    padded[:height, :width] = block.norm1(x).double()
    attn = block.attn
    heads = attn.num_heads
    qkv = padded.reshape(-1, channels) @ attn.qkv.weight.double().t() + attn.qkv.bias.double()
    q, k, _ = qkv.reshape(-1, 3, heads, channels // heads).permute(1, 2, 0, 3)
    scores = q @ k.transpose(1, 2) * attn.scale
    ys, xs = torch.div(torch.arange(hp * wp), wp, rounding_mode="floor"), torch.arange(hp * wp) % wp
    ry, rx = (ys - s) % hp, (xs - s) % wp
    same_window = (ry[:, None] // w == ry[None] // w) & (rx[:, None] // w == rx[None] // w)
    dy = ry[:, None] % w - ry[None] % w + w - 1
    dx = rx[:, None] % w - rx[None] % w + w - 1
    scores = scores + attn.relative_position_bias_table.double()[dy * (2 * w - 1) + dx].permute(2, 0, 1)
    if s:
        def region(r, size):
            return (r >= size - w).long() + (r >= size - s).long()
        label = 3 * region(ry, hp) + region(rx, wp)
        scores = scores + torch.where(label[:, None] != label[None], -100.0, 0.0).double()
    return scores.masked_fill(~same_window, float("-inf")).softmax(-1), same_window, (ys < height) & (xs < width)


def dense_block_matrix(block, x, fusion, discard_ratio):
    """The block's N x N rollout matrix over the image tokens: heads fused, padding rows and columns
    cropped, the smallest entries of the windows discarded, identity added, rows renormalised."""
    probs, same_window, real = dense_attention(block, x)
    fused = {"mean": probs.mean(0), "max": probs.amax(0), "min": probs.amin(0)}[fusion]
    fused, same_window = fused[real][:, real], same_window[real][:, real]
    values = fused[same_window]
    discard = int(values.numel() * discard_ratio)
    if discard:
        values[values.argsort()[:discard]] = 0
        fused[same_window] = values
    fused = fused + torch.eye(len(fused), dtype=fused.dtype)
    return fused / fused.sum(1, keepdim=True)


def merge_matrix(height, width):
    """[h/2 * w/2, h * w]: a merged token is the mean of its 2x2 children."""
    m = torch.zeros(height // 2 * (width // 2), height * width, dtype=torch.float64)
    for y in range(height):
        for x in range(width):
            m[(y // 2) * (width // 2) + x // 2, y * width + x] = 0.25
    return m


def dense_rollout(model, batch, fusion, discard_ratio):
    """Relevance of the stage-1 tokens: mean over the output tokens of the full product of every
    block's N x N matrix and every merge matrix, branches averaged."""
    inputs = {}
    hooks = [b.register_forward_pre_hook(lambda m, a: inputs.__setitem__(m, a[0].detach()))
             for b in model.modules() if isinstance(b, LewinBlock)]
    with torch.no_grad():
        model(dict(batch, images=batch["images"].clone()))  # fast-reid's Baseline normalises in place
    for h in hooks:
        h.remove()
    backbone = model.backbone
    if hasattr(model, "memory"):
        branches = [list(b.blocks) for b in model.heads.branches]
    else:
        branches = [list(backbone.last_stage.blocks)]
    out = []
    for i in range(len(batch["images"])):
        def product(blocks):
            total = None
            for block in blocks:
                r = dense_block_matrix(block, inputs[block][i], fusion, discard_ratio)
                total = r if total is None else r @ total
            return total
        height, width = backbone.layers[0].blocks[0].input_resolution
        trunk = product(backbone.layers[0].blocks)
        for stage in backbone.layers[1:]:
            trunk = product(stage.blocks) @ merge_matrix(height, width) @ trunk
            height, width = height // 2, width // 2
        trunk = merge_matrix(height, width) @ trunk
        rows = sum(product(blocks).mean(0) for blocks in branches) / len(branches)
        out.append((rows @ trunk).view(*backbone.layers[0].blocks[0].input_resolution))
    return torch.stack(out)


@pytest.mark.parametrize("arch,fusion,discard", [
    ("GPO2CAP", "mean", 0.0), ("GPO2CAP", "max", 0.5), ("GPO2CAP", "min", 0.2), ("Baseline", "mean", 0.3)])
def test_rollout_equals_dense_reference(images, arch, fusion, discard):
    opts = [TINY_LEWINVIT] + ([BASELINE, ["MODEL.BACKBONE.FEAT_DIM", "64"]] if arch == "Baseline" else [])
    _, model = tiny_model(*opts)
    with torch.no_grad(), AttentionRecorder(model) as recorder:
        retrieval_embedding(model, images)
        ours = rollout_relevance(model, recorder, fusion, discard)
    reference = dense_rollout(model, images, fusion, discard)
    assert ours.shape == reference.shape == (2, 16, 8)
    torch.testing.assert_close(ours.double(), reference, rtol=1e-5, atol=1e-7)
    assert ours.std() > 0
    # relevance is conserved: every row of every block's matrix sums to 1 over the image tokens
    torch.testing.assert_close(ours.sum((1, 2)).double(), torch.ones(2, dtype=torch.float64))


def test_recorder_leaves_the_model_unchanged(images):
    _, model = tiny_model(TINY_LEWINVIT)
    with torch.no_grad():
        plain = model(images)
        with AttentionRecorder(model) as recorder:
            recorded = model(images)
        after = model(images)
    assert torch.equal(plain, recorded) and torch.equal(plain, after)
    assert len(recorder.attentions) == 2 + 2 + 2 + 2 * 2  # stages 1-3 and both branches' copies of stage 4
    for block in recorder.blocks:
        assert not block.attn._forward_hooks  # removed on exit


def test_heat_at_image_size_and_rollout_errors(images):
    _, model = tiny_model(TINY_LEWINVIT)
    heat = attention_rollout(model, images)
    assert heat.shape == (2, 64, 32) and heat.min() == 0 and heat.max() == 1
    _, resnet = tiny_model(TINY_RESNET)
    with pytest.raises(TypeError, match="LewinBlock"):
        attention_rollout(resnet, images)
    with pytest.raises(ValueError, match="head fusion"):
        attention_rollout(model, images, head_fusion="median")
