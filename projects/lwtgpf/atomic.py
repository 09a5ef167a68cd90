"""Atomic file writing: a file is either its old self or wholly new, never half written, whatever
kills the process (checkpoints, feature files and their chunks, search results)."""
import glob
import os
import tempfile
from typing import Callable, List

__all__ = ["TMP_PREFIX", "atomic_write", "temporaries"]

TMP_PREFIX = ".tmp-"  # every temporary file of `atomic_write` starts with it


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str, write: Callable, text: bool = False) -> None:
    """Call `write(file)` on a temporary file next to `path` (binary, or text with `text`), then
    rename it to `path`. The file gets the permissions of any new file (mkstemp's are private)."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=TMP_PREFIX, suffix=os.path.basename(path))
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with (os.fdopen(fd, "w", newline="", encoding="utf-8") if text else os.fdopen(fd, "wb")) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def temporaries(folder: str) -> List[str]:
    """The temporary files `atomic_write` left in `folder` when its process was killed, sorted."""
    return sorted(glob.glob(os.path.join(glob.escape(os.fspath(folder)), TMP_PREFIX + "*")))
