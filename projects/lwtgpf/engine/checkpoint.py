"""fast-reid's Checkpointer with atomic writes and strict, explained loading (through `lwtgpf.weights`)."""
import logging
import os
from typing import List, Optional

import torch
from fastreid.utils.checkpoint import Checkpointer

from ..atomic import atomic_write, temporaries
from ..modeling.model_file import load_model_file
from ..weights import WeightsError

__all__ = ["AtomicCheckpointer", "CheckpointError", "remove_orphan_temporaries"]

logger = logging.getLogger("fastreid." + __name__)



class CheckpointError(ValueError):
    """A file given as a checkpoint cannot be read, or does not fit the model."""


class AtomicCheckpointer(Checkpointer):
    """Writes each checkpoint to a temporary file and renames it into place; loads strictly.

    A run killed while saving leaves the previous `model_*.pth` and `last_checkpoint` intact,
    so `--resume` never meets a truncated file (`remove_orphan_temporaries` deletes what such a
    kill leaves behind). The model loads through `lwtgpf.modeling.model_file.load_model_file`
    (strict unless `partial`, config key MODEL.WEIGHTS_PARTIAL; original LWTGPF checkpoints
    converted on load), whose errors become a `CheckpointError` naming the file; the optimizer and
    the other checkpointables follow.
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
        try:
            checkpoint = load_model_file(self.model, path, self.partial)
        except WeightsError as err:  # the callers' user error, as one line
            raise CheckpointError(str(err)) from None
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

    def remove_orphan_temporaries(self) -> List[str]:
        """Delete the temporary files a save killed half-way left in save_dir; return their paths."""
        return remove_orphan_temporaries(self.save_dir)


def remove_orphan_temporaries(folder: str) -> List[str]:
    """Delete `.tmp-*` files of `atomic_write` in `folder` (left by a process killed while saving)."""
    if not folder or not os.path.isdir(folder):
        return []
    orphans = temporaries(folder)
    for path in orphans:
        os.unlink(path)
    if orphans:
        logger.warning(f"Removed {len(orphans)} temporary file(s) left by a save that was interrupted: "
                       + ", ".join(os.path.basename(p) for p in orphans))
    return orphans
