"""Image reading that names the file when an image cannot be read.

fast-reid 1.4.0's ``read_image`` raises PIL's own error on a broken file; for a
truncated JPEG that message ("image file is truncated") does not say which file,
and inside a DataLoader worker nothing else does either. (The ``read_image`` of
reid-strong-baseline-style code bases, TransReID's among them, retries forever on
``IOError`` instead: a hang, not an error.) ``read_image``
here gives the same image as fast-reid's and an error that names the path;
``find_unreadable`` and ``verify_images`` check a whole dataset, in parallel processes, before
training starts.
"""
import logging
from concurrent.futures import ProcessPoolExecutor
from typing import Iterable, List, Optional, Sequence, Tuple, Union

from fastreid.data.data_utils import read_image as _fastreid_read_image
from PIL import Image

__all__ = ["UnreadableImageError", "find_unreadable", "read_image", "unreadable_message", "verify_images"]

logger = logging.getLogger(__name__)

# What PIL raises on broken files: OSError (includes UnidentifiedImageError and
# truncation), SyntaxError (broken PNG chunks), ValueError (bad header fields).
_PIL_ERRORS = (OSError, SyntaxError, ValueError)
_EXAMPLES = 5
_LISTED = 50  # bad files named in one error message; the rest are counted
_PARALLEL_FROM = 2000  # below this many files, starting worker processes costs more than it saves


class UnreadableImageError(OSError):
    """One or more image files cannot be read; ``paths`` lists them."""

    def __init__(self, message: str, paths: Sequence[str] = ()):
        super().__init__(message)
        self.paths = list(paths)


def read_image(file_name: str, format: Optional[str] = None) -> Image.Image:
    """fast-reid's ``read_image`` (EXIF rotation, optional mode conversion), naming the file on failure."""
    try:
        return _fastreid_read_image(file_name, format)
    except _PIL_ERRORS as err:
        raise UnreadableImageError(f"cannot read image {file_name}: {err}", [file_name]) from err


def _problem(path: str, decode: bool) -> Optional[str]:
    """Why `path` cannot be read as an image, or None."""
    try:
        with Image.open(path) as img:
            if decode:
                img.load()
            else:
                img.verify()
    except _PIL_ERRORS as err:
        return f"{type(err).__name__}: {err}"
    return None


def find_unreadable(paths: Sequence[str], decode: bool = False, workers: int = 8) -> List[Tuple[str, str]]:
    """`(path, reason)` of every file in `paths` that cannot be read as an image, in input order.

    decode=False checks the file header and structure (PIL ``verify``: fast, but a JPEG cut short
    may pass); True decodes every image fully (slower, catches truncation). Large lists are shared
    by `workers` processes (PIL's header parsing holds the GIL, so threads would not help).
    """
    if workers <= 1 or len(paths) < _PARALLEL_FROM:
        reasons = [_problem(p, decode) for p in paths]
    else:
        chunk = max(64, len(paths) // (8 * workers))
        with ProcessPoolExecutor(workers) as pool:
            reasons = list(pool.map(_problem, paths, [decode] * len(paths), chunksize=chunk))
    return [(p, why) for p, why in zip(paths, reasons) if why is not None]


def unreadable_message(bad: Sequence[Tuple[str, str]], count: int, limit: int = _LISTED) -> str:
    """"K of N image(s) cannot be read" and the bad files with PIL's reason (the first `limit`)."""
    shown = "\n".join(f"  {p}  ({why})" for p, why in bad[:limit])
    more = f"\n  ... and {len(bad) - limit} more" if len(bad) > limit else ""
    return f"{len(bad)} of {count} image(s) cannot be read:\n{shown}{more}"


def verify_images(items: Iterable[Union[str, Tuple]], decode: bool = False, workers: int = 8) -> int:
    """Open every image and raise if any cannot be read; return how many were checked.

    Args:
        items: image paths, or fast-reid items ``(img_path, pid, camid)``.
        decode: see `find_unreadable`.
        workers: processes that share the files.

    Raises:
        UnreadableImageError: naming the number of bad files and the first few, with
            PIL's reason for each; ``.paths`` holds all of them.
    """
    paths = [item if isinstance(item, str) else item[0] for item in items]
    bad = find_unreadable(paths, decode, workers)
    if bad:
        raise UnreadableImageError(unreadable_message(bad, len(paths), _EXAMPLES) + "\nReplace or delete them.",
                                   [p for p, _ in bad])
    logger.info(f"verified {len(paths)} image(s)" + (" (fully decoded)" if decode else ""))
    return len(paths)
