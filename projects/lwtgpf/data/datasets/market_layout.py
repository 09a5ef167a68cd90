"""Readers for folders in the Market-1501 layout.

A Market-layout folder holds three sub-folders of images named ``PPPP_cC...``
(person id, then ``_c`` and a 1-based camera number)::

    <folder>/
        bounding_box_train/   0002_c1s1_000451_03.jpg ...
        query/                0001_c1s1_001051_00.jpg ...
        bounding_box_test/    0001_c1s1_000151_01.jpg ...

Items follow fast-reid's convention so that its ``CommDataset`` relabelling works:
``(img_path, pid, camid)`` with 0-based camera ids; in the train split both are
strings prefixed with the dataset name (``"market1501_2"``, ``"market1501_0"``),
in query and gallery both are ints.

Junk images follow Market-1501's standard protocol exactly as fast-reid's
``Market1501`` reader does: pid ``-1`` (bad detections) is dropped from every
split, pid ``0`` (distractors) is kept, so distractors stay in the gallery.
"""
import logging
import os
import re
from typing import Dict, List, Optional, Tuple, Union

from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.datasets.bases import ImageDataset

__all__ = [
    "IMAGE_EXTENSIONS",
    "DatasetLayoutError",
    "MarketLayout",
    "MarketLayoutDataset",
    "layout_tree",
    "parse_market_name",
    "read_market_dir",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
SPLIT_DIRS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}

# The person id is -1 (junk), or digits; the camera number follows "_c". Anything
# after it (Market's "s1_001051_00", Duke's "_f0046182") is free.
_NAME_RE = re.compile(r"^(-1|\d+)_c(\d+)")
_EXAMPLES = 5  # how many offending file names a warning shows


class DatasetLayoutError(ValueError):
    """A dataset folder exists but its content does not follow the expected layout."""


def parse_market_name(filename: str) -> Optional[Tuple[int, int]]:
    """Return ``(pid, camera number as written, 1-based)`` of a Market-style file name, or None."""
    match = _NAME_RE.match(os.path.basename(filename))
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


def layout_tree(data_dir: str, split_dirs: Dict[str, str] = SPLIT_DIRS, example: str = "0001_c1_0001.jpg") -> str:
    """A small text tree of the folders a Market-layout reader expects under ``data_dir``."""
    lines = [f"{data_dir}/"]
    for split, name in split_dirs.items():
        lines.append(f"    {name + '/':<22}{example} ...   ({split} images)")
    return "\n".join(lines)


def read_market_dir(
    dir_path: str,
    num_cameras: Optional[int] = None,
) -> List[Tuple[str, int, int]]:
    """Read one split folder into ``(img_path, pid, camid)`` items with 0-based int ids.

    Images are the files ending in one of ``IMAGE_EXTENSIONS`` (any case), sorted by
    name so the order does not depend on the file system. Image files whose names
    do not parse are skipped and reported in one warning; other files (``Thumbs.db``)
    are skipped and reported at info level. Junk images (pid -1) are dropped.

    Raises:
        DatasetLayoutError: a camera number outside ``1..num_cameras`` (or below 1
            when ``num_cameras`` is None), naming the file.
    """
    expected = "c1 or above" if num_cameras is None else f"c1..c{num_cameras} ({num_cameras} cameras)"
    items: List[Tuple[str, int, int]] = []
    unparsed: List[str] = []
    not_images: List[str] = []
    with os.scandir(dir_path) as entries:
        names = sorted(e.name for e in entries if e.is_file())
    for name in names:
        if not name.lower().endswith(IMAGE_EXTENSIONS):
            not_images.append(name)
            continue
        parsed = parse_market_name(name)
        if parsed is None:
            unparsed.append(name)
            continue
        pid, cam = parsed
        if cam < 1 or (num_cameras is not None and cam > num_cameras):
            raise DatasetLayoutError(
                f"{os.path.join(dir_path, name)}: camera number c{cam} is out of range; "
                f"expected {expected}; camera numbers in file names start at 1"
            )
        if pid == -1:
            continue
        items.append((os.path.join(dir_path, name), pid, cam - 1))

    if unparsed:
        logger.warning(
            f"{dir_path}: skipped {len(unparsed)} image(s) whose names do not follow "
            f"'PPPP_cC...' (person id, '_c', camera number), e.g. {unparsed[:_EXAMPLES]}"
        )
    if not_images:
        logger.info(
            f"{dir_path}: skipped {len(not_images)} file(s) that are not "
            f"{'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} images, e.g. {not_images[:_EXAMPLES]}"
        )
    return items


class MarketLayoutDataset(ImageDataset):
    """Base reader for a folder in Market-1501 layout; subclasses fix the folder and name.

    Args:
        data_dir: the folder holding ``bounding_box_train/``, ``query/``, ``bounding_box_test/``.
        dataset_name: prefix of the train pids and camids (fast-reid's convention);
            defaults to the class attribute ``dataset_name``.
        num_cameras: expected camera count, checked against every file name (None: not
            checked); defaults to the class attribute ``num_cameras``.
        **kwargs: passed to fast-reid's ``ImageDataset`` (``mode``, ``combineall``, ...);
            unknown keys are ignored, as the trainer gives every dataset the same kwargs.

    Raises:
        FileNotFoundError: ``data_dir`` or a split folder is missing (the message shows
            the expected layout).
        DatasetLayoutError: a bad camera number, or a split without any usable image.
    """

    dataset_name = "marketlayout"
    num_cameras: Optional[int] = None
    # Market's standard protocol: -1 = bad detection (dropped on reading), 0 = distractor.
    # fast-reid's combine_all() leaves these out of the training set.
    _junk_pids = [0, -1]
    # Shown in the layout tree and after it when a folder is missing.
    example_name = "0001_c1_0001.jpg"
    layout_hint = ""

    def __init__(
        self,
        data_dir: Union[str, "os.PathLike[str]"],
        dataset_name: Optional[str] = None,
        num_cameras: Optional[int] = None,
        **kwargs,
    ):
        self.data_dir = os.fspath(data_dir)
        if dataset_name is not None:
            self.dataset_name = dataset_name
        if num_cameras is not None:
            self.num_cameras = num_cameras
        self.train_dir, self.query_dir, self.gallery_dir = (
            os.path.join(self.data_dir, SPLIT_DIRS[s]) for s in ("train", "query", "gallery")
        )
        self._check_layout()

        train = [
            (path, f"{self.dataset_name}_{pid}", f"{self.dataset_name}_{camid}")
            for path, pid, camid in self._read_split(self.train_dir)
        ]
        query = self._read_split(self.query_dir)
        gallery = self._read_split(self.gallery_dir)
        super().__init__(train, query, gallery, **kwargs)

    def _check_layout(self) -> None:
        if os.path.isdir(self.data_dir):
            missing = [p for p in (self.train_dir, self.query_dir, self.gallery_dir) if not os.path.isdir(p)]
        else:
            missing = [self.data_dir]
        if missing:
            hint = f"\n{self.layout_hint}" if self.layout_hint else ""
            raise FileNotFoundError(
                f"{type(self).__name__}: folder(s) not found: {', '.join(missing)}\n"
                f"Expected layout:\n{layout_tree(self.data_dir, example=self.example_name)}\n"
                f"(The data root is the environment variable FASTREID_DATASETS, default 'datasets'.){hint}"
            )

    def _read_split(self, dir_path: str) -> List[Tuple[str, int, int]]:
        items = read_market_dir(dir_path, self.num_cameras)
        if not items:
            raise DatasetLayoutError(
                f"{type(self).__name__}: no usable image in {dir_path}; expected files named "
                f"'PPPP_cC...' with extension {'/'.join(IMAGE_EXTENSIONS)}"
            )
        return items


@DATASET_REGISTRY.register()
class MarketLayout(MarketLayoutDataset):
    """Any folder in Market-1501 layout, named by the ``custom_dir`` kwarg (DATASETS.CUSTOM_DIR).

    A relative ``custom_dir`` is resolved against the data root. Camera numbers are
    not checked against a fixed count.
    """

    dataset_name = "marketlayout"

    def __init__(self, root: str = "datasets", custom_dir: str = "", **kwargs):
        if not custom_dir:
            raise ValueError(
                "MarketLayout needs a folder: set DATASETS.CUSTOM_DIR to a folder in Market-1501 "
                "layout (absolute, or relative to the data root FASTREID_DATASETS)"
            )
        self.root = root
        # os.path.join keeps an absolute custom_dir as it is.
        super().__init__(os.path.join(root, os.path.expanduser(str(custom_dir))), **kwargs)
