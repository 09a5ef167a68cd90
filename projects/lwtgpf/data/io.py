"""Image reading that names the file when an image cannot be read.

fast-reid 1.4.0's ``read_image`` raises PIL's own error on a broken file; for a
truncated JPEG that message ("image file is truncated") does not say which file,
and inside a DataLoader worker nothing else does either. (The ``read_image`` of
reid-strong-baseline-style code bases, TransReID's among them, retries forever on
``IOError`` instead: a hang, not an error.) ``read_image``
here gives the same image as fast-reid's and an error that names the path;
``verify_images`` checks a whole dataset before training starts.
"""
import logging
from typing import Iterable, List, Optional, Sequence, Tuple, Union

from fastreid.data.data_utils import read_image as _fastreid_read_image
from PIL import Image

__all__ = ["UnreadableImageError", "read_image", "verify_images"]

logger = logging.getLogger(__name__)

# What PIL raises on broken files: OSError (includes UnidentifiedImageError and
# truncation), SyntaxError (broken PNG chunks), ValueError (bad header fields).
_PIL_ERRORS = (OSError, SyntaxError, ValueError)
_EXAMPLES = 5


class UnreadableImageError(OSError):
    """One or more image files cannot be read; ``paths`` lists them."""

    def __init__(self, message: str, paths: Sequence[str]):
        super().__init__(message)
        self.paths = list(paths)


def read_image(file_name: str, format: Optional[str] = None) -> Image.Image:
    """fast-reid's ``read_image`` (EXIF rotation, optional mode conversion), naming the file on failure."""
    try:
        return _fastreid_read_image(file_name, format)
    except _PIL_ERRORS as err:
        raise UnreadableImageError(f"cannot read image {file_name}: {err}", [file_name]) from err


def _check_one(path: str, decode: bool) -> None:
    with Image.open(path) as img:
        if decode:
            img.load()
        else:
            img.verify()


def verify_images(items: Iterable[Union[str, Tuple]], decode: bool = False) -> int:
    """Open every image and raise if any cannot be read; return how many were checked.

    Args:
        items: image paths, or fast-reid items ``(img_path, pid, camid)``.
        decode: False checks the file header and structure (PIL ``verify``; fast, but a
            JPEG cut short may pass); True decodes every image fully (slower, catches
            truncation).

    Raises:
        UnreadableImageError: naming the number of bad files and the first few, with
            PIL's reason for each; ``.paths`` holds all of them.
    """
    bad: List[Tuple[str, str]] = []
    count = 0
    for item in items:
        path = item if isinstance(item, str) else item[0]
        count += 1
        try:
            _check_one(path, decode)
        except _PIL_ERRORS as err:
            bad.append((path, f"{type(err).__name__}: {err}"))
    if bad:
        shown = "\n".join(f"  {p}  ({why})" for p, why in bad[:_EXAMPLES])
        more = f"\n  ... and {len(bad) - _EXAMPLES} more" if len(bad) > _EXAMPLES else ""
        raise UnreadableImageError(
            f"{len(bad)} of {count} image(s) cannot be read; replace or delete them:\n{shown}{more}",
            [p for p, _ in bad],
        )
    logger.info(f"verified {count} image(s)" + (" (fully decoded)" if decode else ""))
    return count
