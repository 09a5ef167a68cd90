"""fast-reid's Checkpointer with atomic writes and strict, explained loading."""
import glob
import logging
import os
import re
import tempfile
from typing import List, Mapping, Optional, Tuple

import torch
from fastreid.utils.checkpoint import Checkpointer

from ..modeling.backbones.lewinvit import LewinViT
from ..modeling.backbones.pretrained import adapt_embedding_table
from ..modeling.original import convert_original, original_state_dict

__all__ = ["AtomicCheckpointer", "CheckpointError", "remove_orphan_temporaries"]

logger = logging.getLogger("fastreid." + __name__)

_TMP_PREFIX = ".tmp-"
# Camera / view embedding tables: their row count follows the dataset, so a checkpoint trained on
# another dataset loads with the table adapted (DESIGN.md), never rejected.
_SIE_SUFFIXES = ("sie_embed", "cam_embed", "view_embed")
_SHOWN = 5  # keys listed per kind in a mismatch message


class CheckpointError(ValueError):
    """A file given as a checkpoint cannot be read, or does not fit the model."""


class AtomicCheckpointer(Checkpointer):
    """Writes each checkpoint to a temporary file and renames it into place; loads strictly.

    A run killed while saving leaves the previous `model_*.pth` and `last_checkpoint` intact,
    so `--resume` never meets a truncated file (`remove_orphan_temporaries` deletes what such a
    kill leaves behind). Loading uses `weights_only=True` and accepts a fast-reid checkpoint
    (`{"model": state_dict, ...}`) or a bare state dict. Every model tensor must be filled by a
    tensor of the same shape and every file tensor must be used, except camera / view embedding
    tables, which are adapted to the model's row count with a warning; otherwise loading stops
    with a `CheckpointError` naming the file and the keys, unless `partial` is True (config key
    MODEL.WEIGHTS_PARTIAL), which loads what fits and warns with the same list. A checkpoint
    written by the original LWTGPF code is converted on load (`lwtgpf.modeling.original`).
    """

    def __init__(self, model: torch.nn.Module, save_dir: str = "", *, save_to_disk: bool = True,
                 partial: bool = False, **checkpointables):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.partial = partial

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        os.makedirs(self.save_dir, exist_ok=True)
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        path = os.path.join(self.save_dir, f"{name}.pth")
        self.logger.info(f"Saving checkpoint to {path}")
        atomic_write(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(os.path.basename(path))

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(path, lambda f: f.write(last_filename_basename.encode()))

    def load(self, path: str, checkpointables: Optional[List[str]] = None) -> dict:
        """Load `path` into the model (and the named checkpointables); return the file's other entries."""
        if not path:
            self.logger.info("No checkpoint given (MODEL.WEIGHTS is empty): the model keeps its initialisation")
            return {}
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Checkpoint {path!r} (MODEL.WEIGHTS, or the file named in "
                                    f"{self.save_dir or '.'}/last_checkpoint) does not exist")
        self.logger.info(f"Loading checkpoint from {path}")
        checkpoint = self._load_file(path)
        checkpoint = self._convert_original(checkpoint, path)
        checkpoint = _as_checkpoint(checkpoint, path)
        self._load_model(checkpoint, path)
        for key in self.checkpointables if checkpointables is None else checkpointables:
            if key in checkpoint:
                self.logger.info(f"Loading {key} from {path}")
                try:
                    self.checkpointables[key].load_state_dict(checkpoint.pop(key))
                except (ValueError, KeyError, RuntimeError) as err:
                    raise CheckpointError(f"{path}: its {key} state does not fit this run "
                                          f"({type(err).__name__}: {err}); resume with the config it was "
                                          f"saved with (config.yaml next to it)") from err
        return checkpoint

    def _load_file(self, f: str):
        """The object stored in `f` (torch.load with weights_only, or a .safetensors file)."""
        try:
            if f.endswith(".safetensors"):
                from safetensors.torch import load_file

                return load_file(f, device="cpu")
            return torch.load(f, map_location="cpu", weights_only=True)
        except Exception as err:  # every reader error means the same thing to the user
            unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
            if unsafe:
                raise CheckpointError(f"{f} holds pickled Python objects ({unsafe.group(1)}), which loading with "
                                      f"weights_only refuses; save a state dict instead "
                                      f"(torch.save({{'model': model.state_dict()}}, path))") from None
            reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise CheckpointError(f"{f} is not a PyTorch checkpoint: torch.load cannot read it "
                                  f"({type(err).__name__}: {reason}); give a file written by torch.save "
                                  f"(e.g. model_final.pth) or a .safetensors file") from None

    def _convert_original(self, checkpoint, path: str):
        """A checkpoint of the original LWTGPF code as `{"model": state_dict}`; anything else unchanged."""
        original = original_state_dict(checkpoint)
        if original is None:
            return checkpoint
        lewinvit = next((m for m in self.model.modules() if isinstance(m, LewinViT)), None)
        state, info = convert_original(original, num_views=lewinvit.num_views if lewinvit else 0,
                                       local_enhance=lewinvit.local_enhance if lewinvit else False)
        self.logger.info(f"{path} is a checkpoint of the original LWTGPF code ({info.summary()}): converted on "
                         "load (tools/convert_weights.py converts it once)")
        return {"model": state}

    def _load_model(self, checkpoint: dict, path: str = "") -> None:
        """Match the file's state dict with the model's keys and shapes; load, or stop with the list."""
        state = {_strip_module(k): v for k, v in checkpoint.pop("model").items()}
        own = self.model.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        mismatched, accepted = [], {}
        for key in own:
            if key not in state:
                continue
            value, target = state[key], own[key]
            if value.shape != target.shape:
                if key.endswith(_SIE_SUFFIXES) and value.dim() == target.dim() >= 2 \
                        and value.shape[1:] == target.shape[1:]:
                    flat = adapt_embedding_table(value.reshape(value.shape[0], -1), target.shape[0], f"{key} in {path}")
                    value = flat.reshape(target.shape)
                else:
                    mismatched.append((key, tuple(value.shape), tuple(target.shape)))
                    continue
            accepted[key] = value
        if not accepted:
            raise CheckpointError(f"{path}: none of its {len(state)} tensors fits the model "
                                  f"({type(self.model).__name__}); file keys start with {list(state)[:3]}, "
                                  f"model keys with {list(own)[:3]}")
        if missing or unexpected or mismatched:
            report = _mismatch_report(path, missing, unexpected, mismatched)
            if not self.partial:
                raise CheckpointError(report + "\nUse the config the checkpoint was trained with (config.yaml in its "
                                      "output folder), or set MODEL.WEIGHTS_PARTIAL True to load only what fits.")
            self.logger.warning(report + "\nMODEL.WEIGHTS_PARTIAL is True: loaded what fits, the rest keeps its "
                                "initialisation.")
        self.model.load_state_dict(accepted, strict=False)
        self.logger.info(f"Loaded {len(accepted)} of the model's {len(own)} tensors from {path}")

    def remove_orphan_temporaries(self) -> List[str]:
        """Delete the temporary files a save killed half-way left in save_dir; return their paths."""
        return remove_orphan_temporaries(self.save_dir)


def remove_orphan_temporaries(folder: str) -> List[str]:
    """Delete `.tmp-*` files of `_atomic_write` in `folder` (left by a process killed while saving)."""
    if not folder or not os.path.isdir(folder):
        return []
    orphans = sorted(glob.glob(os.path.join(glob.escape(folder), _TMP_PREFIX + "*")))
    for path in orphans:
        os.unlink(path)
    if orphans:
        logger.warning(f"Removed {len(orphans)} temporary file(s) left by a save that was interrupted: "
                       + ", ".join(os.path.basename(p) for p in orphans))
    return orphans


def _as_checkpoint(obj, path: str) -> dict:
    """`{"model": state_dict, ...}` from a fast-reid checkpoint or a bare state dict."""
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        checkpoint = dict(obj)
    elif isinstance(obj, Mapping) and obj and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        checkpoint = {"model": obj}
    elif isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a dict with keys {sorted(map(str, obj))[:8]} but no 'model' state "
                              f"dict: it is not a fast-reid checkpoint nor a state dict")
    else:
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint (a dict with a 'model' "
                              f"state dict, or a state dict)")
    bad = [k for k, v in checkpoint["model"].items() if not torch.is_tensor(v)]
    if bad:
        raise CheckpointError(f"{path}: 'model' entries must be tensors; {bad[0]!r} is a "
                              f"{type(checkpoint['model'][bad[0]]).__name__}")
    return checkpoint


def _strip_module(key: str) -> str:
    # DataParallel / DistributedDataParallel prefix of a model saved without unwrapping
    return key[len("module."):] if key.startswith("module.") else key


def _mismatch_report(path: str, missing: List[str], unexpected: List[str],
                     mismatched: List[Tuple[str, tuple, tuple]]) -> str:
    def listed(keys: List[str]) -> str:
        return ", ".join(keys[:_SHOWN]) + (f", ... ({len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else "")

    lines = [f"{path} does not fit the model: {len(missing)} model tensors missing from the file, "
             f"{len(unexpected)} file tensors unknown to the model, {len(mismatched)} of another shape."]
    if missing:
        lines.append(f"  missing: {listed(missing)}")
    if unexpected:
        lines.append(f"  unexpected: {listed(unexpected)}")
    if mismatched:
        lines.append("  other shape: " + listed([f"{k} file {f} vs model {m}" for k, f, m in mismatched]))
    return "\n".join(lines)


def atomic_write(path: str, write) -> None:
    """Call `write(file)` on a temporary file next to `path`, then rename it to `path`."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=_TMP_PREFIX, suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise

