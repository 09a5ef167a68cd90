"""Reading weight files and loading them into a model, for whole-model checkpoints (MODEL.WEIGHTS,
`engine.checkpoint`) and backbone initialisations (MODEL.BACKBONE.PRETRAIN_PATH,
`modeling.backbones.pretrained` / `vit`) alike.

Both read a file the same way (torch.load with weights_only, or .safetensors), find the state dict
in it, match it with the model's keys and shapes, and adapt what differs only with the dataset: a
camera / view table of another row count (and, on request, a relative-position table of another
window). They differ in what they forgive, hence two loaders:

* `load_model_weights`: a checkpoint must fit exactly (every model tensor filled, every file
  tensor used), unless `partial`;
* `load_backbone_weights`: a backbone file may hold heads the model lacks and lack tensors the model
  adds (both reported), but a tensor of another shape that cannot be adapted stops.
"""
import hashlib
import logging
import math
import os
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from timm.layers import resize_rel_pos_bias_table

__all__ = ["WeightsError", "LoadReport", "read_weights", "state_dict_in", "tensors_of", "read_state_dict",
           "adapt_camera_table", "adapt_rel_pos_table", "rel_pos_adapter", "match_state_dict",
           "load_model_weights", "load_backbone_weights", "file_sha256"]

logger = logging.getLogger("fastreid." + __name__)

# where teacher files (DINO, SOLIDER: `teacher`), mmcv files (`state_dict`) and fast-reid
# checkpoints (`model`) keep their tensors, outermost first
NESTS = ("teacher", "state_dict", "model")
# DataParallel's wrapper, then the backbone of teacher files and of whole re-id models
# (SOLIDER-REID, TransReID, the original LWTGPF), removed in this order
PREFIXES = ("module.", "backbone.", "base.")
# Camera / view embedding tables: their row count follows the dataset, so weights trained on
# another dataset load with the table adapted (docs/RELIABILITY.md), never rejected.
CAMERA_TABLES = ("sie_embed", "cam_embed", "view_embed")
_SHOWN = 5  # keys listed per kind in a mismatch message

# (key, file tensor, model tensor) -> (fitted tensor, what was done), or None when it cannot fit
Adapter = Callable[[str, torch.Tensor, torch.Tensor], Optional[Tuple[torch.Tensor, str]]]


class WeightsError(ValueError):
    """A weights file cannot be read, holds no state dict, or does not fit the model."""


@dataclass
class LoadReport:
    """What loading a file did: model keys loaded / missing / new (LewinViT's additions to Swin), file keys
    unused (with the reason), tensors adapted, and tensors of another shape that could not be."""

    path: str
    format: str
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    new: List[str] = field(default_factory=list)
    unused: Dict[str, str] = field(default_factory=dict)
    adapted: List[str] = field(default_factory=list)
    mismatched: List[str] = field(default_factory=list)

    def summary(self) -> str:
        """The backbone loaders' log: every key accounted for, unused ones grouped by reason."""
        lines = [f"Loaded {len(self.loaded)} tensors from {self.path} ({self.format} format)."]
        if self.missing:
            lines.append(f"Missing from the file, left at their initialisation ({len(self.missing)}): "
                         + ", ".join(self.missing))
        if self.new:
            lines.append(f"LewinViT's own parameters, not in a Swin file, at their initialisation ({len(self.new)}): "
                         + _compact(self.new))
        by_reason = defaultdict(list)
        for key, reason in self.unused.items():
            by_reason[reason].append(key)
        for reason, keys in by_reason.items():
            lines.append(f"Unused file tensors, {reason} ({len(keys)}): " + _compact(keys))
        lines.extend(self.adapted)
        return "\n".join(lines)

    def mismatch_report(self) -> str:
        """Why a checkpoint does not fit: counts, then the first keys of each kind (strict error or partial warning)."""
        unexpected = list(self.unused)
        lines = [f"{self.path} does not fit the model: {len(self.missing)} model tensors missing from the file, "
                 f"{len(unexpected)} file tensors unknown to the model, {len(self.mismatched)} of another shape."]
        for kind, keys in (("missing", self.missing), ("unexpected", unexpected), ("other shape", self.mismatched)):
            if keys:
                lines.append(f"  {kind}: {_compact(keys, _SHOWN)}")
        return "\n".join(lines)


def _compact(keys: List[str], limit: int = 8) -> str:
    return ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def read_weights(path: str) -> object:
    """The object stored in `path`: torch.load with weights_only (a file cannot run code), or a .safetensors file.

    Raises a one-line WeightsError naming the file and what it should be, whatever the reader's error.
    """
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path, device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # every reader error means the same thing to the user
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if unsafe:
            raise WeightsError(f"{path} holds pickled Python objects ({unsafe.group(1)}), which loading with "
                               f"weights_only refuses; save a state dict instead "
                               f"(torch.save({{'model': model.state_dict()}}, path))") from None
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise WeightsError(f"{path} is not a PyTorch checkpoint: torch.load cannot read it "
                           f"({type(err).__name__}: {reason}); give a file written by torch.save "
                           f"(e.g. model_final.pth) or a .safetensors file") from None


def tensors_of(state: Mapping, prefixes: Sequence[str]) -> Dict[str, torch.Tensor]:
    """The tensors of `state` under string keys, each key without the `prefixes` it starts with (in order)."""
    out = {}
    for key, value in state.items():
        if not (isinstance(key, str) and torch.is_tensor(value)):
            continue
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def state_dict_in(obj: object, path: str, nests: Sequence[str] = NESTS, prefixes: Sequence[str] = PREFIXES,
                  strict: bool = False) -> Dict[str, torch.Tensor]:
    """The state dict stored in `obj` (read from `path`): under each key of `nests` in turn where it
    is a dict, its keys without `prefixes`.

    Entries that are no tensors are dropped, unless `strict` (checkpoints): then the dict must be
    all tensors, and a dict with none of `nests` must itself be a non-empty state dict, so that a
    file of another kind is named instead of matching nothing.
    """
    where = " / ".join(map(repr, nests))
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a checkpoint (a dict with a {where} "
                           f"state dict, or a state dict)")
    nest = None
    for key in nests:
        if isinstance(obj.get(key), Mapping):
            obj, nest = obj[key], key
    if strict:
        bad = next((k for k, v in obj.items() if not (isinstance(k, str) and torch.is_tensor(v))), None)
        if nest is None and (bad is not None or not obj):
            raise WeightsError(f"{path} holds a dict with keys {sorted(map(str, obj))[:8]} but no {where} state "
                               f"dict: it is not a fast-reid checkpoint nor a state dict")
        if bad is not None:
            raise WeightsError(f"{path}: {nest!r} entries must be tensors; {bad!r} is a {type(obj[bad]).__name__}")
    return tensors_of(obj, prefixes)


def read_state_dict(path: str, expected: str = "a local weights file") -> Dict[str, torch.Tensor]:
    """The tensors of the backbone file MODEL.BACKBONE.PRETRAIN_PATH, un-nested and without `PREFIXES`;
    `expected` says what to give instead when `path` is no file."""
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"MODEL.BACKBONE.PRETRAIN_PATH {path!r} is not a file; give {expected}")
    return state_dict_in(read_weights(path), path)


def adapt_camera_table(table: torch.Tensor, rows: int, name: str) -> torch.Tensor:
    """Fit a camera / view embedding table [n, ...] to `rows` rows: keep the first rows, fill new ones
    with the mean of the old (a neutral start for cameras the file never saw), with a warning."""
    keep = min(rows, table.shape[0])
    msg = (f"{name}: the checkpoint has {table.shape[0]} rows, the model {rows}; kept {keep}"
           + (", new rows set to the mean of the old" if rows > keep else ""))
    warnings.warn(msg)
    logger.warning(msg)
    out = table.new_empty((rows, *table.shape[1:]))
    out[:keep] = table[:keep]
    if rows > keep:
        out[keep:] = table.mean(0, keepdim=True)
    return out


def adapt_rel_pos_table(table: torch.Tensor, new_window: Tuple[int, int], new_shape: torch.Size) -> torch.Tensor:
    """Fit a relative-position bias table [(2a-1)(2b-1), heads] of a square window to `new_window`.

    Cropping the centre is exact when the new window fits in the old one: every offset it can
    see keeps its bias. A larger window gets timm's interpolation."""
    old = math.isqrt(table.shape[0])
    side = (old + 1) // 2
    if old * old != table.shape[0]:
        raise ValueError(f"relative-position table of {table.shape[0]} rows is not of a square window")
    if new_window[0] <= side and new_window[1] <= side:
        grid = table.reshape(old, old, -1)
        dh, dw = side - new_window[0], side - new_window[1]
        return grid[dh:old - dh, dw:old - dw].reshape(new_shape).clone()
    return resize_rel_pos_bias_table(table, new_window_size=new_window, new_bias_shape=tuple(new_shape))


def rel_pos_adapter(model: nn.Module) -> Adapter:
    """An `Adapter` that fits relative-position bias tables to the `window_size` of the module holding
    them, so that Swin weights load into another WINDOW_SIZE."""

    def adapt(key: str, value: torch.Tensor, target: torch.Tensor) -> Optional[Tuple[torch.Tensor, str]]:
        if key.endswith("relative_position_bias_table") and value.shape[1] == target.shape[1]:
            window = model.get_submodule(key.rsplit(".", 1)[0]).window_size
            return adapt_rel_pos_table(value, window, target.shape), f"window resized to {window}"
        return None

    return adapt


def _fitted(key: str, value: torch.Tensor, target: torch.Tensor, path: str,
            adapt: Optional[Adapter]) -> Optional[Tuple[torch.Tensor, str]]:
    """`value` adapted to `target`'s shape, with what was done; None when it cannot be."""
    if key.endswith(CAMERA_TABLES) and value.dim() == target.dim() >= 2 and value.shape[1:] == target.shape[1:]:
        return (adapt_camera_table(value, target.shape[0], f"{key} in {path}"),
                f"{value.shape[0]} -> {target.shape[0]} rows")
    return adapt(key, value, target) if adapt is not None else None


def match_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], report: LoadReport,
                     adapt: Optional[Adapter] = None,
                     unused_reason: Callable[[str], str] = lambda key: "unknown to the model",
                     ) -> Dict[str, torch.Tensor]:
    """The tensors of `state` (in the model's names) that fit `model`, adapted where they can be;
    `report` gets every key: loaded, missing, unused (with `unused_reason(key)`), adapted, mismatched.

    Loads nothing: the caller decides from the report whether the file is acceptable.
    """
    own = model.state_dict()
    accepted = {}
    for key, target in own.items():
        if key not in state:
            report.missing.append(key)
            continue
        value = state[key]
        if value.shape != target.shape:
            why = ""
            try:
                fitted = _fitted(key, value, target, report.path, adapt)
            except ValueError as err:  # an adapter's reason, shown with the shapes
                fitted, why = None, f" ({err})"
            if fitted is None:
                report.mismatched.append(f"{key} file {tuple(value.shape)} vs model {tuple(target.shape)}{why}")
                continue
            value, what = fitted
            report.adapted.append(f"{key}: {what}")
        accepted[key] = value
    report.unused.update({key: unused_reason(key) for key in state if key not in own})
    report.loaded = list(accepted)
    return accepted


def load_model_weights(model: nn.Module, state: Mapping[str, torch.Tensor], path: str,
                       partial: bool = False) -> LoadReport:
    """Load a whole-model state dict: every model tensor must be filled and every file tensor used
    (camera tables adapted), else a WeightsError lists the keys; with `partial`
    (MODEL.WEIGHTS_PARTIAL) what fits loads and the same list is a warning."""
    report = LoadReport(path=path, format="checkpoint")
    accepted = match_state_dict(model, state, report)
    own = list(model.state_dict())
    if not accepted:
        raise WeightsError(f"{path}: none of its {len(state)} tensors fits the model ({type(model).__name__}); "
                           f"file keys start with {list(state)[:3]}, model keys with {own[:3]}")
    if report.missing or report.unused or report.mismatched:
        if not partial:
            raise WeightsError(report.mismatch_report() + "\nUse the config the checkpoint was trained with "
                               "(config.yaml in its output folder), or set MODEL.WEIGHTS_PARTIAL True to load "
                               "only what fits.")
        logger.warning(report.mismatch_report() + "\nMODEL.WEIGHTS_PARTIAL is True: loaded what fits, the rest "
                       "keeps its initialisation.")
    model.load_state_dict(accepted, strict=False)
    logger.info(f"Loaded {len(accepted)} of the model's {len(own)} tensors from {path}")
    return report


def load_backbone_weights(model: nn.Module, state: Mapping[str, torch.Tensor], report: LoadReport,
                          model_name: str, fit_hint: str, adapt: Optional[Adapter] = None,
                          unused_reason: Callable[[str], str] = lambda key: "") -> None:
    """Load the tensors of a backbone file (already in the model's names) that fit `model`, filling `report`.

    Model tensors the file lacks keep their initialisation and file tensors the model lacks are
    reported (with `unused_reason(key)`, or a generic reason). Raises a WeightsError naming the
    file, with `fit_hint`, when a tensor of another shape cannot be adapted or nothing fits.
    """
    accepted = match_state_dict(model, state, report, adapt,
                                lambda key: unused_reason(key) or f"no matching tensor in {model_name}")
    if report.mismatched:
        raise WeightsError(f"pretrained weights {report.path} do not fit this {model_name} ({report.format} format; "
                           f"{fit_hint}): " + "; ".join(report.mismatched[:_SHOWN]))
    if not accepted:
        raise WeightsError(f"pretrained weights {report.path} fit nothing in {model_name} ({report.format} format; "
                           f"{fit_hint}); first keys: {list(state)[:5]}")
    model.load_state_dict(accepted, strict=False)


def file_sha256(path: str) -> str:
    """The SHA-256 of a file (e.g. a weights file, as pretrained/SHA256SUMS lists them), read 1 MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
