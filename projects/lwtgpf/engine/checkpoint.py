"""fast-reid's Checkpointer with atomic writes and safe loading."""
import os
import tempfile

import torch
from fastreid.utils.checkpoint import Checkpointer

from ..modeling.backbones.lewinvit import LewinViT
from ..modeling.original import convert_original, original_state_dict


class AtomicCheckpointer(Checkpointer):
    """Writes each checkpoint to a temporary file and renames it into place.

    A run killed while saving leaves the previous `model_*.pth` and `last_checkpoint` intact,
    so `--resume` never meets a truncated file. Loading uses `weights_only=True`; a checkpoint
    written by the original LWTGPF code is converted on load (`lwtgpf.modeling.original`).
    """

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

    def load(self, path: str, checkpointables=None):
        if path and not os.path.isfile(path):
            raise FileNotFoundError(f"Checkpoint {path!r} (MODEL.WEIGHTS, or the file named in "
                                    f"{self.save_dir or '.'}/last_checkpoint) does not exist")
        return super().load(path, checkpointables)

    def _load_file(self, f: str):
        checkpoint = torch.load(f, map_location="cpu", weights_only=True)
        original = original_state_dict(checkpoint)
        if original is None:
            return checkpoint
        lewinvit = next((m for m in self.model.modules() if isinstance(m, LewinViT)), None)
        state, info = convert_original(original, num_views=lewinvit.num_views if lewinvit else 0,
                                       local_enhance=lewinvit.local_enhance if lewinvit else False)
        self.logger.info(f"{f} is a checkpoint of the original LWTGPF code ({info.summary()}): converted on "
                         "load (tools/convert_weights.py converts it once)")
        return {"model": state}


def atomic_write(path: str, write) -> None:
    """Call `write(file)` on a temporary file next to `path`, then rename it to `path`."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-", suffix=os.path.basename(path))
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
