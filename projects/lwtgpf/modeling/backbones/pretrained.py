"""Load Swin weights from a local file into LewinViT, converting SOLIDER's or timm's layout exactly;
write a plain LewinViT in SOLIDER's layout (`lewinvit_to_solider`, for the demo's pretrained file).

Formats (MODEL.BACKBONE.LEWINVIT.PRETRAIN_FORMAT):

* ``timm``: ImageNet Swin in timm's layout (``layers.i.downsample`` at the start of stage i,
  ``layers.i.blocks.j.attn.qkv`` ...); the original Microsoft layout (merging at the end of stage
  i-1, same 4C order) and LewinViT's own weights are read as well.
* ``solider``: mmcls names, as in SOLIDER's LUPerson Swin teachers, SOLIDER-REID models and the
  original LWTGPF checkpoints (``patch_embed.projection``, ``stages.i.blocks.j.attn.w_msa.*``,
  ``ffn.layers.0.0`` / ``ffn.layers.1``, ``stages.i.downsample.*`` at the end of stage i, per-stage
  output norms ``norm0``..``norm3``, LWTGPF's camera table ``sie_embed`` [rows, 1, D]). mmcls merges
  patches with ``nn.Unfold``, channel-major (index c*4 + g') with the 2x2 positions in timm's
  group order 0, 2, 1, 3; timm concatenates group-major (g*C + c). The merging weights are
  permuted accordingly.
* ``auto``: decided by the key names.

`lwtgpf.weights` reads the file, un-nests it (``teacher`` / ``state_dict`` / ``model``), removes
the prefixes ``module.`` / ``backbone.`` / ``base.`` (SOLIDER-REID, LWTGPF), matches keys and shapes
and adapts a camera table of another size (with a warning) and relative-position tables of another
window (cropped when the model's window fits in the file's, so that the same offsets keep the same
bias, exact; interpolated otherwise); this module holds the layouts. Everything is reported through
fast-reid's logger.
"""
import logging
import re
from typing import Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from ...weights import LoadReport, load_backbone_weights, read_state_dict, rel_pos_adapter

logger = logging.getLogger("fastreid." + __name__)

# 4C inputs of patch merging: mmcls position g' holds timm's group MMCLS_GROUP_ORDER[g'] (an involution)
MMCLS_GROUP_ORDER = (0, 2, 1, 3)
_BUFFER_SUFFIXES = ("relative_position_index", "attn_mask")
# parameters LewinViT adds to Swin: they start from their own init when a Swin file lacks them
_NEW_IN_LEWINVIT = re.compile(r"(^sie_embed$|\.mlp\.local\.)")
# tensors of whole re-id models whose backbone is the `base.` part
_REID_HEAD = re.compile(r"^(b1|b2|bottleneck|part_bns|classifier)\.")


def detect_format(state: Mapping[str, torch.Tensor]) -> Optional[str]:
    """'solider' for mmcls names, 'timm' for timm / Microsoft / LewinViT names, None otherwise."""
    if any(k.startswith("stages.") or k.startswith("patch_embed.projection.") for k in state):
        return "solider"
    if any(k.startswith(("layers.", "last_stage.", "patch_embed.proj.")) for k in state):
        return "timm"
    return None


def solider_to_timm(state: Mapping[str, torch.Tensor], num_stages: int = 4) -> Tuple[Dict, Dict[str, str]]:
    """Rename SOLIDER / mmcls Swin tensors to timm's layout. Returns (converted, {unused key: reason})."""
    out, unused = {}, {}
    final_norm = f"norm{num_stages - 1}."
    for key, value in state.items():
        if key.endswith(_BUFFER_SUFFIXES):
            unused[key] = "buffers LewinViT recomputes"
            continue
        m = re.match(r"stages\.(\d+)\.downsample\.(reduction|norm)\.(weight|bias)$", key)
        if m:
            stage, part, kind = int(m.group(1)), m.group(2), m.group(3)
            out[f"layers.{stage + 1}.downsample.{part}.{kind}"] = mmcls_merge_to_timm(value)
            continue
        m = re.match(r"stages\.(\d+)\.blocks\.(\d+)\.(.+)$", key)
        if m:
            rest = (m.group(3).replace("attn.w_msa.", "attn.")
                    .replace("ffn.layers.0.0.", "mlp.fc1.").replace("ffn.layers.1.", "mlp.fc2."))
            out[f"layers.{m.group(1)}.blocks.{m.group(2)}.{rest}"] = value
        elif key.startswith("patch_embed."):
            out[key.replace("patch_embed.projection.", "patch_embed.proj.")] = value
        elif key == "sie_embed":  # LWTGPF's [rows, 1, D]
            out[key] = value.reshape(value.shape[0], -1)
        elif key.startswith(final_norm):
            out["norm." + key[len(final_norm):]] = value
        elif re.match(r"norm\d+\.", key):
            unused[key] = "SOLIDER's output norms of the earlier stages (not part of the model)"
        elif key.startswith("semantic_embed"):
            unused[key] = "SOLIDER's semantic-controller embeddings"
        elif _REID_HEAD.match(key):
            unused[key] = ("re-id head of an LWTGPF / SOLIDER-REID model (to load a whole LWTGPF model, "
                           "give it as MODEL.WEIGHTS)")
        elif key.startswith(("head.", "heads.")):
            unused[key] = "classifier / projection head"
        else:
            unused[key] = "no matching tensor in LewinViT"
    return out, unused


def mmcls_merge_to_timm(value: torch.Tensor) -> torch.Tensor:
    """Reorder the 4C input dim of a patch-merging weight [out, 4C] or norm [4C] from mmcls to timm."""
    four_c = value.shape[-1]
    lead = value.shape[:-1]
    v = value.reshape(*lead, four_c // 4, 4).transpose(-1, -2)  # [..., g', C]
    return v[..., list(MMCLS_GROUP_ORDER), :].reshape(*lead, four_c)


def timm_merge_to_mmcls(value: torch.Tensor) -> torch.Tensor:
    """The inverse of `mmcls_merge_to_timm`: reorder a patch-merging 4C dim from timm to mmcls."""
    four_c = value.shape[-1]
    lead = value.shape[:-1]
    v = value.reshape(*lead, 4, four_c // 4)[..., list(MMCLS_GROUP_ORDER), :]  # [..., g', C]
    return v.transpose(-1, -2).reshape(*lead, four_c)


def lewinvit_to_solider(state: Mapping[str, torch.Tensor], num_stages: int = 4) -> Dict[str, torch.Tensor]:
    """Rename a plain Swin's tensors from LewinViT's names to SOLIDER's mmcls layout (with the
    `backbone.` prefix of its teacher files), so that `load_pretrained` reads them back exactly.

    Raises a ValueError on LewinViT's own tensors (camera table, local enhancement), which a Swin
    file cannot hold."""
    last = num_stages - 1
    out = {}
    for key, value in state.items():
        if key.endswith(_BUFFER_SUFFIXES):
            continue
        if _NEW_IN_LEWINVIT.search(key):
            raise ValueError(f"{key} is LewinViT's own (camera table or local enhancement), not a Swin tensor: "
                             "pretrain with MODEL.BACKBONE.NUM_CAMERAS 0 and LEWINVIT.LOCAL_ENHANCE False")
        # patch merging: at the start of stage i in LewinViT (timm), at the end of stage i - 1 in mmcls
        m = re.match(r"(?:layers\.(\d+)\.downsample|last_downsample)\.(reduction|norm)\.(weight|bias)$", key)
        if m:
            stage = int(m.group(1)) if m.group(1) is not None else last
            out[f"stages.{stage - 1}.downsample.{m.group(2)}.{m.group(3)}"] = timm_merge_to_mmcls(value)
            continue
        m = re.match(r"(?:layers\.(\d+)|last_stage)\.blocks\.(\d+)\.(.+)$", key)
        if m:
            stage = int(m.group(1)) if m.group(1) is not None else last
            rest = (m.group(3).replace("attn.", "attn.w_msa.", 1)
                    .replace("mlp.fc1.", "ffn.layers.0.0.").replace("mlp.fc2.", "ffn.layers.1."))
            out[f"stages.{stage}.blocks.{m.group(2)}.{rest}"] = value
        elif key.startswith("last_stage.norm."):
            out[f"norm{last}." + key[len("last_stage.norm."):]] = value
        elif key.startswith("patch_embed."):
            out[key.replace("patch_embed.proj.", "patch_embed.projection.")] = value
        else:
            raise ValueError(f"{key} has no place in SOLIDER's Swin layout")
    return {"backbone." + key: value for key, value in out.items()}


def timm_to_lewinvit(state: Mapping[str, torch.Tensor], num_stages: int = 4) -> Tuple[Dict, Dict[str, str]]:
    """Rename timm-layout Swin tensors to LewinViT's names. Returns (converted, {unused key: reason})."""
    last = num_stages - 1
    # Microsoft's layout merges at the end of stage i, timm's at the start of stage i + 1
    microsoft = "layers.0.downsample.reduction.weight" in state
    out, unused = {}, {}
    for key, value in state.items():
        if key.endswith(_BUFFER_SUFFIXES):
            unused[key] = "buffers LewinViT recomputes"
            continue
        if microsoft:
            key = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) + 1}.downsample", key)
        if key.startswith(f"layers.{last}.downsample."):
            out["last_downsample." + key[len(f"layers.{last}.downsample."):]] = value
        elif key.startswith(f"layers.{last}.blocks."):
            out["last_stage.blocks." + key[len(f"layers.{last}.blocks."):]] = value
        elif key.startswith("norm."):
            out["last_stage." + key] = value
        elif key.startswith("head"):
            unused[key] = "classifier head"
        else:
            out[key] = value
    return out, unused


def load_pretrained(model: nn.Module, path: str, fmt: str = "auto") -> LoadReport:
    """Load a SOLIDER or timm Swin file into a LewinViT, log the report and return it.

    Raises a ValueError naming the file when it fits nothing or a tensor has a shape that cannot
    be adapted.
    """
    fmt = fmt.lower()
    if fmt not in ("auto", "solider", "timm"):
        raise ValueError(f"MODEL.BACKBONE.LEWINVIT.PRETRAIN_FORMAT is {fmt!r}; expected auto, solider or timm")
    state = read_state_dict(path, "a local Swin weights file (SOLIDER or timm layout)")
    found = detect_format(state)
    if fmt == "auto":
        if found is None:
            raise ValueError(f"pretrained weights {path} fit no known Swin layout (SOLIDER or timm); "
                             f"first keys: {list(state)[:5]}")
        fmt = found
    report = LoadReport(path=path, format=fmt)
    if fmt == "solider":
        state, unused = solider_to_timm(state)
        report.unused.update(unused)
    converted, unused = timm_to_lewinvit(state)
    report.unused.update(unused)
    load_backbone_weights(
        model, converted, report, "LewinViT", adapt=rel_pos_adapter(model),
        unused_reason=lambda key: ("final LayerNorm: the last stage ends without one "
                                   "(MODEL.BACKBONE.LEWINVIT.FINAL_NORM False)" if key.startswith("last_stage.norm.")
                                   else ""),
        fit_hint="check MODEL.BACKBONE.LEWINVIT.SIZE / EMBED_DIM / DEPTHS")
    # a Swin file lacks what LewinViT adds: reported apart from what the file should have had
    gaps = report.missing
    report.new = [key for key in gaps if _NEW_IN_LEWINVIT.search(key)]
    report.missing = [key for key in gaps if not _NEW_IN_LEWINVIT.search(key)]
    logger.info(report.summary())
    return report
