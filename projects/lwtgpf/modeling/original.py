"""Checkpoints of the original LWTGPF code, converted to this package's GPO2CAP model.

The original code (`YanJieWen/LWTGPF-2025`, `Csu/utils/checkpoint_io.py`) saves
``{'model': state_dict, 'optimizer': ..., 'lr_scheduler': ..., 'epoch': ...}``; its state dict
(keys possibly prefixed ``module.``) holds

* ``base.*``: the Swin in mmcls names (see `pretrained.solider_to_timm`) with its camera table
  ``base.sie_embed`` [rows, 1, D]. Only patch embedding and stages 1-3 (with their patch merging)
  run; ``base.stages.3.*`` (the stage the branches were copied from) and the per-stage output norms
  ``base.norm*`` never reach a feature;
* ``b1.*`` / ``b2.*``: the two copies of stage 4 (blocks only, no final norm);
* ``bottleneck.*``: the global BNNeck; ``part_bns.0..P-1.*``: the part BNNecks, branch 1's stripes
  first.

`convert_original` maps them to GPO2CAP's names (``backbone.*``, ``heads.branches.{0,1}.*``,
``heads.bnnecks.{0..P}.*``), so that the model computes exactly the original's features, and
accounts for every tensor: anything it cannot place is an error, not a silent skip.
"""
import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

import torch

from ..weights import tensors_of
from .backbones.lewinvit import LEWINVIT_SIZES
from .backbones.pretrained import solider_to_timm, timm_to_lewinvit

# original tensors that no feature depends on
_NEVER_RUN = re.compile(r"^base\.(stages\.3\.|norm\d+\.)|\.relative_position_index$|\.attn_mask$")


@dataclass
class OriginalModelInfo:
    """What an original checkpoint says about the model that wrote it."""

    embed_dim: int
    depths: Tuple[int, ...]
    num_heads: Tuple[int, ...]
    window_size: int
    mlp_ratio: float
    sie_rows: int
    num_views: int
    num_parts: int
    local_enhance: bool
    epoch: Optional[int] = None

    @property
    def num_cameras(self) -> int:
        return self.sie_rows // max(self.num_views, 1) if self.sie_rows else 0

    @property
    def size(self) -> Optional[str]:
        """The LewinViT size name (tiny / small / base) these dimensions are, if any."""
        for name, dims in LEWINVIT_SIZES.items():
            if dims == (self.embed_dim, self.depths, self.num_heads):
                return name
        return None

    def config_overrides(self) -> List[str]:
        """KEY VALUE pairs that build a model this checkpoint fits (fast-reid command-line style)."""
        bb = "MODEL.BACKBONE."
        out = [f"{bb}LEWINVIT.SIZE", self.size] if self.size else [
            f"{bb}LEWINVIT.EMBED_DIM", str(self.embed_dim),
            f"{bb}LEWINVIT.DEPTHS", "[" + ",".join(map(str, self.depths)) + "]",
            f"{bb}LEWINVIT.NUM_HEADS", "[" + ",".join(map(str, self.num_heads)) + "]"]
        out += [f"{bb}NUM_CAMERAS", str(self.num_cameras), f"{bb}NUM_VIEWS", str(self.num_views)]
        if self.window_size != 7:
            out += [f"{bb}LEWINVIT.WINDOW_SIZE", str(self.window_size)]
        if self.mlp_ratio != 4.0:
            out += [f"{bb}LEWINVIT.MLP_RATIO", str(self.mlp_ratio)]
        if not self.local_enhance:
            out += [f"{bb}LEWINVIT.LOCAL_ENHANCE", "False"]
        return out

    def summary(self) -> str:
        size = self.size or "custom"
        views = f"{self.num_views} views" if self.num_views else "no views"
        cams = (f"camera table of {self.sie_rows} rows: {self.num_cameras} cameras, {views}" if self.sie_rows
                else "no camera table")
        epoch = f", saved after epoch {self.epoch}" if self.epoch is not None else ""
        return (f"LewinViT-{size} (embed {self.embed_dim}, depths {list(self.depths)}, heads {list(self.num_heads)}, "
                f"window {self.window_size}), {cams}, {self.num_parts} part features{epoch}")


def original_state_dict(checkpoint: object) -> Optional[Dict[str, torch.Tensor]]:
    """The model state dict (``module.`` removed) if `checkpoint` was written by the original code, else None.

    Accepts the original's ``{'model': state_dict, ...}`` and a bare state dict.
    """
    if not isinstance(checkpoint, Mapping):
        return None
    state = checkpoint.get("model", checkpoint)
    if not isinstance(state, Mapping):
        return None
    state = tensors_of(state, ("module.",))
    if "base.patch_embed.projection.weight" in state and any(k.startswith("b1.blocks.") for k in state):
        return state
    return None


def _count(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    return len({m.group(1) for k in state for m in [re.match(pattern, k)] if m})


def describe_original(state: Mapping[str, torch.Tensor], num_views: int = 0,
                      local_enhance: bool = True) -> OriginalModelInfo:
    """Model dimensions read off an original state dict (see `original_state_dict`)."""
    try:
        return _describe(state, num_views, local_enhance)
    except KeyError as err:
        raise ValueError(f"an original LWTGPF checkpoint must hold {err.args[0]}; this one does not") from None


def _describe(state: Mapping[str, torch.Tensor], num_views: int, local_enhance: bool) -> OriginalModelInfo:
    depths, heads = [], []
    for stage in range(4):
        prefix = f"base.stages.{stage}" if stage < 3 else "b1"
        depths.append(_count(state, rf"^{prefix}\.blocks\.(\d+)\."))
        heads.append(state[f"{prefix}.blocks.0.attn.w_msa.relative_position_bias_table"].shape[1])
    table = state["base.stages.0.blocks.0.attn.w_msa.relative_position_bias_table"]
    embed_dim = state["base.patch_embed.projection.weight"].shape[0]
    fc1 = state["base.stages.0.blocks.0.ffn.layers.0.0.weight"]
    sie = state.get("base.sie_embed")
    sie_rows = sie.shape[0] if sie is not None else 0
    if num_views < 0 or (num_views and sie_rows % num_views):
        raise ValueError(f"--num-views {num_views} does not divide the camera table's {sie_rows} rows")
    return OriginalModelInfo(
        embed_dim=embed_dim, depths=tuple(depths), num_heads=tuple(heads),
        window_size=(round(table.shape[0] ** 0.5) + 1) // 2, mlp_ratio=fc1.shape[0] / embed_dim,
        sie_rows=sie_rows, num_views=num_views if sie_rows else 0,
        num_parts=_count(state, r"^part_bns\.(\d+)\."), local_enhance=local_enhance)


def convert_original(state: Mapping[str, torch.Tensor], num_views: int = 0, local_enhance: bool = True,
                     ) -> Tuple[Dict[str, torch.Tensor], OriginalModelInfo]:
    """An original state dict -> (GPO2CAP state dict, model info).

    With `local_enhance`, every block also gets zero local-enhancement tensors, so that the default
    LewinViT (LOCAL_ENHANCE True) loads every parameter and computes exactly the original.
    Raises ValueError listing any tensor that has no place in the model.
    """
    info = describe_original(state, num_views, local_enhance)
    if "base.absolute_pos_embed" in state:
        raise ValueError("this original checkpoint uses an absolute position embedding "
                         "(use_abs_pos_embed), which LewinViT does not have")
    out: Dict[str, torch.Tensor] = {}
    unplaced = []

    def place(renamed: Mapping[str, torch.Tensor], unused: Mapping[str, str], prefix: str) -> None:
        out.update({prefix + k: v for k, v in renamed.items()})
        unplaced.extend(k for k in unused if not _NEVER_RUN.search(k))

    base = {k[len("base."):]: v for k, v in state.items() if k.startswith("base.") and not _NEVER_RUN.search(k)}
    renamed, unused = solider_to_timm(base)
    renamed, unused_timm = timm_to_lewinvit(renamed)
    place(renamed, {**unused, **unused_timm}, "backbone.")
    for branch in (0, 1):
        # a branch is stage 4 (mmcls `stages.3`) on its own: reuse the stage-4 renaming
        stage = {k.replace(f"b{branch + 1}.", "stages.3.", 1): v for k, v in state.items()
                 if k.startswith(f"b{branch + 1}.") and not _NEVER_RUN.search(k)}
        renamed, unused = solider_to_timm(stage)
        renamed, unused_timm = timm_to_lewinvit(renamed)
        place({k.replace("last_stage.", "", 1): v for k, v in renamed.items()}, {**unused, **unused_timm},
              f"heads.branches.{branch}.")
    for key, value in state.items():
        m = re.match(r"^(bottleneck|part_bns\.(\d+))\.(.+)$", key)
        if m:
            index = 0 if m.group(2) is None else int(m.group(2)) + 1
            out[f"heads.bnnecks.{index}.{m.group(3)}"] = value
        elif not key.startswith(("base.", "b1.", "b2.")) and not _NEVER_RUN.search(key):
            unplaced.append(key)
    if unplaced:
        raise ValueError(f"{len(unplaced)} tensors of the original checkpoint have no place in LewinViT + "
                         f"GlobalPartHead: {', '.join(sorted(unplaced)[:8])}")
    if local_enhance:
        for key, fc1 in list(out.items()):
            if key.endswith(".mlp.fc1.weight"):
                hidden = fc1.shape[0]
                out[key.replace(".fc1.weight", ".local.weight")] = fc1.new_zeros(hidden, 1, 3, 3)
                out[key.replace(".fc1.weight", ".local.bias")] = fc1.new_zeros(hidden)
    return out, info
