"""fast-reid's Checkpointer with atomic writes and safe loading."""
import os
import tempfile

import torch
from fastreid.utils.checkpoint import Checkpointer


class AtomicCheckpointer(Checkpointer):
    """Writes each checkpoint to a temporary file and renames it into place.

    A run killed while saving leaves the previous `model_*.pth` and `last_checkpoint` intact,
    so `--resume` never meets a truncated file. Loading uses `weights_only=True`.
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
        _atomic_write(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(os.path.basename(path))

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        _atomic_write(path, lambda f: f.write(last_filename_basename.encode()))

    def load(self, path: str, checkpointables=None):
        if path and not os.path.isfile(path):
            raise FileNotFoundError(f"Checkpoint {path!r} (MODEL.WEIGHTS, or the file named in "
                                    f"{self.save_dir or '.'}/last_checkpoint) does not exist")
        return super().load(path, checkpointables)

    def _load_file(self, f: str):
        return torch.load(f, map_location="cpu", weights_only=True)


def _atomic_write(path: str, write) -> None:
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
