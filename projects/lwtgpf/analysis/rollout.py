"""Attention rollout through shifted windows (docs/METHOD.md, "Analysis").

Attention rollout (Abnar & Zuidema, ACL 2020) follows how much of each output token comes from
each input token by multiplying the blocks' attention matrices, each with the identity added for
the residual connection. A ViT block's attention is one token-by-token matrix; a LewinViT block
attends inside 7x7 windows of a padded and rolled map, so here each block's window attention is
scattered into the token grid of its stage with that block's own padding, roll and windows,
composed through the stage, carried across patch merging (a merged token draws equally on its
2x2 children) and read out by the tokens the global feature averages.

`AttentionRecorder` captures every block's attention probabilities with forward hooks that
recompute softmax(q k^T * scale + bias + mask) from the block's own qkv projection, bias table
and mask on the windows the block attended over; the model keeps its fused attention and
computes exactly what it computes without the recorder.
"""
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from timm.models.swin_transformer import window_partition

from ..modeling.backbones.lewinvit import LewinBlock, LewinViT, padded_size
from ..modeling.meta_arch import GPO2CAP
from .retrieval import retrieval_embedding

__all__ = ["HEAD_FUSIONS", "AttentionRecorder", "BlockAttention", "attention_rollout", "block_matrix_windows",
           "rollout_relevance", "window_token_index"]

HEAD_FUSIONS = ("mean", "max", "min")


@dataclass
class BlockAttention:
    """One block's attention probabilities [B, windows, heads, T, T] and its window geometry."""
    probs: torch.Tensor
    height: int  # the stage's token map, before padding
    width: int
    window: int
    shift: int


class AttentionRecorder:
    """Context manager recording the attention probabilities of every `LewinBlock` under `module`.

    `recorder.attentions[block]` holds the last forward's `BlockAttention` of each block.
    """

    def __init__(self, module: nn.Module):
        self.blocks = [m for m in module.modules() if isinstance(m, LewinBlock)]
        if not self.blocks:
            raise TypeError(f"attention rollout needs a window-attention backbone (LewinViT); "
                            f"{type(module).__name__} has no LewinBlock")
        self.attentions: Dict[LewinBlock, BlockAttention] = {}
        self._handles = []

    def __enter__(self) -> "AttentionRecorder":
        for block in self.blocks:
            self._handles.append(block.attn.register_forward_hook(self._hook(block), with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, block: LewinBlock):
        def record(attn: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
            windows = args[0] if args else kwargs["x"]
            mask = kwargs.get("mask", args[1] if len(args) > 1 else None)
            num, tokens, _ = windows.shape
            q, k, _ = attn.qkv(windows).reshape(num, tokens, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
            scores = (q * attn.scale) @ k.transpose(-2, -1) + attn._get_rel_pos_bias()
            height, width = block.input_resolution
            window, shift = block.window_size[0], block.shift_size[0]
            num_windows = (padded_size(height, window) // window) * (padded_size(width, window) // window)
            scores = scores.view(-1, num_windows, attn.num_heads, tokens, tokens)
            if mask is not None:
                scores = scores + mask[None, :, None]
            self.attentions[block] = BlockAttention(scores.softmax(-1).detach(), height, width, window, shift)
        return record


def window_token_index(height: int, width: int, window: int, shift: int, device=None) -> torch.Tensor:
    """[windows, T]: the index (row * width + col) in the unpadded map of each window slot, -1 for padding.

    Built with the block's own operations (pad, roll by -shift, window partition), so slot t of
    window w holds the token that the block placed there.
    """
    index = torch.arange(height * width, device=device).view(height, width)
    index = F.pad(index, (0, padded_size(width, window) - width, 0, padded_size(height, window) - height), value=-1)
    if shift:
        index = torch.roll(index, shifts=(-shift, -shift), dims=(0, 1))
    return window_partition(index[None, :, :, None], (window, window)).reshape(-1, window * window)


def block_matrix_windows(attention: BlockAttention, head_fusion: str = "mean",
                         discard_ratio: float = 0.0) -> torch.Tensor:
    """The block's rollout matrices per window [B, windows, T, T] (rows: output slots, columns: input
    slots): heads fused; entries from or to padding slots removed (padding is no image token);
    the smallest `discard_ratio` of the block's remaining entries (over all its windows) set to 0;
    identity added; rows renormalised."""
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard ratio must lie in [0, 1), got {discard_ratio}")
    probs = attention.probs.float()
    fused = {"mean": lambda p: p.mean(2), "max": lambda p: p.amax(2), "min": lambda p: p.amin(2)}[head_fusion](probs)
    batch, windows, tokens, _ = fused.shape
    real = window_token_index(attention.height, attention.width, attention.window, attention.shift,
                              device=fused.device) >= 0
    pairs = real[:, :, None] & real[:, None, :]
    fused = fused * pairs
    discard = int(pairs.sum() * discard_ratio)
    if discard:
        ranked = fused.masked_fill(~pairs, float("inf")).reshape(batch, -1)
        fused = fused.reshape(batch, -1).scatter(1, ranked.topk(discard, dim=1, largest=False).indices, 0.0)
        fused = fused.view(batch, windows, tokens, tokens)
    fused = fused + torch.eye(tokens, device=fused.device)
    return fused / fused.sum(-1, keepdim=True)


def _through_block(relevance: torch.Tensor, attention: BlockAttention, head_fusion: str,
                   discard_ratio: float) -> torch.Tensor:
    """relevance [B, h*w] over the block's output tokens -> over its input tokens (relevance @ R)."""
    matrices = block_matrix_windows(attention, head_fusion, discard_ratio)
    index = window_token_index(attention.height, attention.width, attention.window, attention.shift,
                               device=relevance.device)
    real = index >= 0
    rows = torch.where(real, relevance[:, index.clamp(min=0)], 0.0)  # [B, windows, T]
    flowed = torch.einsum("bwi,bwij->bwj", rows, matrices)
    return torch.zeros_like(relevance).index_add_(1, index[real], flowed[:, real])


def _unmerge(relevance: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Relevance over a merged [h, w] map -> over its [2h, 2w] input: each child gets a quarter."""
    grid = relevance.view(-1, height, width)
    return grid.repeat_interleave(2, 1).repeat_interleave(2, 2).flatten(1) / 4


def _lewinvit_paths(model: nn.Module) -> Tuple[LewinViT, List[Tuple[float, Sequence[LewinBlock]]]]:
    """The LewinViT trunk of `model` and its last-stage branches with their weights in the feature."""
    if isinstance(model, GPO2CAP) and isinstance(model.backbone, LewinViT):
        heads = model.heads
        branches = [list(branch.blocks) for branch in heads.branches]
        if heads.global_feat == "mean":
            return model.backbone, [(1.0 / len(branches), blocks) for blocks in branches]
        return model.backbone, [(1.0, branches[int(heads.global_feat[1:]) - 1])]
    backbone = getattr(model, "backbone", model)
    if isinstance(backbone, LewinViT) and not isinstance(model, GPO2CAP):
        return backbone, [(1.0, list(backbone.last_stage.blocks))]
    raise TypeError(f"attention rollout needs a LewinViT backbone; {type(model).__name__} has "
                    f"{type(backbone).__name__} (use a Grad-CAM method instead)")


def rollout_relevance(model: nn.Module, recorder: AttentionRecorder, head_fusion: str = "mean",
                      discard_ratio: float = 0.0) -> torch.Tensor:
    """Relevance [B, h1, w1] of the stage-1 tokens (patches) for the global feature of the last forward.

    The global feature averages the last stage's tokens (of each branch, branches averaged): the
    relevance starts uniform there and flows back through every block and patch merging.
    """
    trunk, branches = _lewinvit_paths(model)
    att = recorder.attentions

    def through(relevance: torch.Tensor, blocks: Sequence[LewinBlock]) -> torch.Tensor:
        for block in reversed(list(blocks)):
            if block not in att:
                raise RuntimeError("no attention recorded for a block: run the model inside the recorder first")
            relevance = _through_block(relevance, att[block], head_fusion, discard_ratio)
        return relevance

    last = att.get(branches[0][1][0])
    if last is None:
        raise RuntimeError("no attention recorded: run the model inside the AttentionRecorder first")
    batch = last.probs.shape[0]
    start = torch.full((batch, last.height * last.width), 1.0 / (last.height * last.width), device=last.probs.device)
    relevance = sum(weight * through(start, blocks) for weight, blocks in branches)
    height, width = last.height, last.width
    for stage in reversed(list(trunk.layers) + [None]):
        if stage is not None:
            relevance = through(relevance, stage.blocks)
            height, width = stage.blocks[0].input_resolution
        if stage is None or not isinstance(stage.downsample, nn.Identity):
            relevance = _unmerge(relevance, height, width)
            height, width = 2 * height, 2 * width
    return relevance.view(batch, height, width)


@torch.no_grad()
def attention_rollout(model: nn.Module, batched_inputs: dict, head_fusion: str = "mean",
                      discard_ratio: float = 0.0) -> torch.Tensor:
    """Rollout heat [B, H, W] at the input images' size for an eval-mode model, min-max scaled to [0, 1]."""
    with AttentionRecorder(model) as recorder:
        retrieval_embedding(model, batched_inputs)
        relevance = rollout_relevance(model, recorder, head_fusion, discard_ratio)
    size = batched_inputs["images"].shape[-2:]
    heat = F.interpolate(relevance[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    low = heat.flatten(1).amin(1)[:, None, None]
    high = heat.flatten(1).amax(1)[:, None, None]
    return (heat - low) / (high - low).clamp_min(1e-12)
