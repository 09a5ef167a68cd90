"""Feature files: the features of a set of images, with their names, cameras and provenance, in one
`.npz` that plain `np.load` reads.

A million crops at D=768 are 3 GB of float32, so extraction never holds them all: a
`ChunkedFeatureWriter` keeps finished chunks on disk next to the output (each written atomically,
so an interrupted run continues where it stopped) and streams them into the final npz. Small sets
(and tests) go through `write_features`; both write byte-identical files for the same content.

Keys: `names` (unicode [N], image paths relative to the images folder or as listed), `camids`
(int64 [N], 0-based, -1 = unknown), `features` (float32 [N, D], L2-normalised rows) and `meta`
(a 0-d unicode array holding a JSON object: config, weights, feature kind, dimension, version, ...;
optional on reading, so that features made by other code need only the first three).
"""
import hashlib
import json
import os
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, NamedTuple, Sequence, Union

import numpy as np
from numpy.lib import format as npy_format

from ..atomic import atomic_write, temporaries

__all__ = ["FEATURE_KEYS", "FeatureFileError", "FeatureSet", "read_features", "write_features", "Chunk",
           "ChunkedFeatureWriter"]

PathLike = Union[str, "os.PathLike[str]"]
FEATURE_KEYS = ("names", "camids", "features", "meta")
_REQUIRED_KEYS = FEATURE_KEYS[:3]
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed entry times: the same content gives the same bytes
_BLOCK = 1 << 20  # bytes copied at a time when streaming
_MANIFEST_FORMAT = "lwtgpf.feature-chunks/1"


class FeatureFileError(ValueError):
    """A feature file (or the work folder of an interrupted extraction) is unreadable or inconsistent."""


@dataclass(frozen=True)
class FeatureSet:
    """Features of N images: `names` unicode [N], `camids` int64 [N] (-1 = unknown camera),
    `features` float32 [N, D] with L2-normalised rows, and JSON-serialisable `meta`."""
    names: np.ndarray
    camids: np.ndarray
    features: np.ndarray
    meta: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = np.asarray(self.names)
        if names.size == 0:
            names = names.astype(str)
        if names.ndim != 1 or names.dtype.kind != "U":
            raise ValueError(f"names must be a 1-D array of str, got {names.dtype} of shape {names.shape}")
        camids = np.asarray(self.camids)
        if camids.ndim != 1 or camids.dtype != np.int64:
            raise ValueError(f"camids must be a 1-D int64 array, got {camids.dtype} of shape {camids.shape}")
        if not isinstance(self.features, np.ndarray) or self.features.ndim != 2 or self.features.dtype != np.float32:
            got = (f"{self.features.dtype} of shape {self.features.shape}" if isinstance(self.features, np.ndarray)
                   else type(self.features).__name__)
            raise ValueError(f"features must be a 2-D float32 array [N, D], got {got}")
        if not len(names) == len(camids) == len(self.features):
            raise ValueError(f"inconsistent lengths: {len(names)} names, {len(camids)} camids, "
                             f"{len(self.features)} feature rows")
        if not isinstance(self.meta, dict):
            raise ValueError(f"meta must be a dict, got {type(self.meta).__name__}")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "camids", camids)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def dim(self) -> int:
        """D, the feature dimension."""
        return self.features.shape[1]


def read_features(path: PathLike) -> FeatureSet:
    """The `FeatureSet` stored in `path`, read whole into memory; errors name the file and what is
    missing or inconsistent."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such feature file")
    if not zipfile.is_zipfile(path):
        raise FeatureFileError(f"{path}: not a feature file (an .npz with keys {', '.join(FEATURE_KEYS)})")
    try:
        with np.load(path, allow_pickle=False) as data:
            present = data.files
            arrays = {key: data[key] for key in FEATURE_KEYS if key in present}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise FeatureFileError(f"{path}: unreadable feature file: {err}") from err
    missing = [key for key in _REQUIRED_KEYS if key not in arrays]
    if missing:
        raise FeatureFileError(f"{path}: missing key {', '.join(missing)}; a feature file holds "
                               f"{', '.join(_REQUIRED_KEYS)} and optionally meta "
                               f"(this one holds {', '.join(present) or 'nothing'})")
    try:
        meta = json.loads(str(arrays["meta"][()])) if "meta" in arrays else {}
    except (ValueError, IndexError) as err:
        raise FeatureFileError(f"{path}: key meta must hold a JSON object as a 0-d string: {err}") from None
    if not isinstance(meta, dict):
        raise FeatureFileError(f"{path}: key meta must hold a JSON object, got {type(meta).__name__}")
    try:
        return FeatureSet(arrays["names"], arrays["camids"], arrays["features"], meta)
    except ValueError as err:
        raise FeatureFileError(f"{path}: {err}") from None


def write_features(path: PathLike, features: FeatureSet, compress: bool = False) -> Path:
    """Write `features` to `path` atomically (a temporary file in the same folder, then renamed),
    from memory; use `ChunkedFeatureWriter` for sets that do not fit."""
    return _write_npz(Path(path), features.names, features.camids, features.meta,
                      _array_header(features.features), _blocks(features.features), compress)


class Chunk(NamedTuple):
    """Chunk `index` holds the feature rows `start` to `stop` (exclusive)."""
    index: int
    start: int
    stop: int


class ChunkedFeatureWriter:
    """Writes a feature file chunk by chunk, resumably.

    Finished chunks live in `<output>.partial/` (one `.npy` each, written atomically) with a manifest
    that identifies the run: the number of images, a hash of the ordered names and camids, `meta`
    (every entry: put there only what determines the features, e.g. config and weights hashes),
    the dimension and the chunk size. A new writer for the same output continues where the last one
    stopped, and refuses a work folder made for other images, order, model or chunk size.
    `finish()` streams the chunks into the npz, so memory stays at one block of bytes.

    Args:
        output: the feature file to write; an existing one is replaced (at `finish`) only with `overwrite`.
        names, camids: the images, in the order of the feature rows.
        meta: stored in the file, and compared with the work folder's on resuming.
        dim: D, the feature dimension.
        chunk_size: rows of a chunk (the last one may have fewer).
        restart: discard the work folder of an earlier run instead of resuming it.
        compress: deflate the npz's entries (smaller, slower; stored uncompressed by default).
    """

    def __init__(self, output: PathLike, names: Sequence[str], camids: Sequence[int], meta: Dict[str, Any],
                 dim: int, chunk_size: int = 8192, restart: bool = False, overwrite: bool = False,
                 compress: bool = False):
        self.output = Path(output)
        self.work_dir = self.output.with_name(self.output.name + ".partial")
        if self.output.exists() and not overwrite:
            raise FileExistsError(f"{self.output} exists; pass --overwrite to replace it")
        if chunk_size < 1 or dim < 1:
            raise ValueError(f"chunk_size and dim must be positive, got chunk_size={chunk_size}, dim={dim}")
        names = np.asarray(names, dtype=str)
        camids = np.asarray(camids, dtype=np.int64)
        if names.ndim != 1 or names.shape != camids.shape:
            raise ValueError(f"names and camids must be 1-D and agree, got {names.shape} and {camids.shape}")
        # as JSON gives it back (tuples become lists), so that a resumed run compares like with like;
        # a meta that is not serialisable fails here rather than after the extraction
        self.names, self.camids, self.meta = names, camids, json.loads(json.dumps(meta))
        self.dim, self.chunk_size, self.compress = int(dim), int(chunk_size), compress
        self.chunks = [Chunk(i, start, min(start + self.chunk_size, len(names)))
                       for i, start in enumerate(range(0, len(names), self.chunk_size))]
        self.manifest = {"format": _MANIFEST_FORMAT, "count": len(names), "order_sha256": _order_hash(names, camids),
                         "dim": self.dim, "chunk_size": self.chunk_size, "meta": self.meta}
        if restart and self.work_dir.exists():
            shutil.rmtree(self.work_dir)
        self._open_work_dir()

    def _chunk_path(self, index: int) -> Path:
        return self.work_dir / f"chunk-{index:06d}.npy"

    def _open_work_dir(self) -> None:
        manifest_path = self.work_dir / "manifest.json"
        if not manifest_path.exists():
            self.work_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(manifest_path, lambda f: f.write(json.dumps(self.manifest, indent=1, sort_keys=True).encode()))
            return
        try:
            previous = json.loads(manifest_path.read_text())
        except ValueError as err:
            raise FeatureFileError(f"{manifest_path}: unreadable manifest ({err}); delete {self.work_dir} "
                                   f"or pass --restart to start over") from None
        differences = _manifest_differences(previous, self.manifest)
        if differences:
            raise FeatureFileError(f"{self.work_dir} holds the chunks of another extraction: "
                                   f"{'; '.join(differences)}. Delete {self.work_dir} or pass --restart to "
                                   f"start over (its chunks are lost), or rerun with the settings it was made with")
        for leftover in temporaries(self.work_dir):  # a chunk being written when the last run was killed
            os.unlink(leftover)
        for chunk in self.chunks:
            if self._chunk_path(chunk.index).exists():
                self._check_chunk_file(chunk)

    def _check_chunk_file(self, chunk: Chunk) -> int:
        """Checks the header of a finished chunk's file; returns its offset of data."""
        path = self._chunk_path(chunk.index)
        with open(path, "rb") as f:
            try:
                version = npy_format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = npy_format.read_array_header_1_0(f)
                else:
                    shape, fortran, dtype = npy_format.read_array_header_2_0(f)
            except ValueError as err:
                raise FeatureFileError(f"{path}: not a chunk of features ({err}); delete it to recompute it") from None
            expected = (chunk.stop - chunk.start, self.dim)
            if shape != expected or fortran or dtype != np.dtype("<f4"):
                raise FeatureFileError(f"{path}: holds {dtype} {shape}, expected float32 {expected}; "
                                       f"delete it to recompute it")
            offset = f.tell()
            if os.fstat(f.fileno()).st_size != offset + expected[0] * expected[1] * 4:
                raise FeatureFileError(f"{path}: truncated chunk; delete it to recompute it")
        return offset

    def pending(self) -> List[Chunk]:
        """The chunks still to compute, in order."""
        return [chunk for chunk in self.chunks if not self._chunk_path(chunk.index).exists()]

    def rows_done(self) -> int:
        """The number of feature rows already on disk."""
        return len(self.names) - sum(chunk.stop - chunk.start for chunk in self.pending())

    def write(self, chunk_index: int, features: np.ndarray) -> None:
        """Store the features of chunk `chunk_index` (float32 [rows, D]); atomic, so an interruption
        leaves the whole chunk or none of it."""
        if not 0 <= chunk_index < len(self.chunks):
            raise IndexError(f"chunk {chunk_index} out of range: there are {len(self.chunks)} chunks")
        chunk = self.chunks[chunk_index]
        expected = (chunk.stop - chunk.start, self.dim)
        if not isinstance(features, np.ndarray) or features.dtype != np.float32 or features.shape != expected:
            got = f"{features.dtype} {features.shape}" if isinstance(features, np.ndarray) else type(features).__name__
            raise ValueError(f"chunk {chunk_index} (rows {chunk.start}:{chunk.stop}) needs float32 {expected}, "
                             f"got {got}")
        features = np.ascontiguousarray(features, dtype="<f4")
        atomic_write(self._chunk_path(chunk_index), lambda f: npy_format.write_array(f, features, allow_pickle=False))

    def finish(self) -> Path:
        """Assemble the npz from the chunks (streamed, atomically replacing `output`), remove the work
        folder, and return the output's path."""
        missing = self.pending()
        if missing:
            raise FeatureFileError(f"{self.output}: {len(missing)} of {len(self.chunks)} chunks are not written yet "
                                   f"(first: chunk {missing[0].index}, rows {missing[0].start}:{missing[0].stop})")
        header = {"descr": npy_format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False,
                  "shape": (len(self.names), self.dim)}
        _write_npz(self.output, self.names, self.camids, self.meta, header, self._chunk_blocks(), self.compress)
        shutil.rmtree(self.work_dir)
        return self.output

    def _chunk_blocks(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            offset = self._check_chunk_file(chunk)
            with open(self._chunk_path(chunk.index), "rb") as f:
                f.seek(offset)
                while True:
                    block = f.read(_BLOCK)
                    if not block:
                        break
                    yield block


def _order_hash(names: np.ndarray, camids: np.ndarray) -> str:
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode("utf-8") + b"\0")
    digest.update(np.ascontiguousarray(camids, dtype="<i8").tobytes())
    return digest.hexdigest()


def _manifest_differences(previous: Dict[str, Any], current: Dict[str, Any]) -> List[str]:
    if previous.get("format") != current["format"]:
        return [f"work folder format {previous.get('format')!r}, expected {current['format']!r}"]
    differences = []
    if previous.get("count") != current["count"]:
        differences.append(f"it was made for {previous.get('count')} images, now there are {current['count']}")
    elif previous.get("order_sha256") != current["order_sha256"]:
        differences.append("the image names, their order or their cameras differ")
    for key in ("dim", "chunk_size"):
        if previous.get(key) != current[key]:
            differences.append(f"{key} was {previous.get(key)}, now {current[key]}")
    old_meta, new_meta = previous.get("meta", {}), current["meta"]
    for key in sorted(set(old_meta) | set(new_meta)):
        if old_meta.get(key) != new_meta.get(key):
            old, new = old_meta.get(key, "(absent)"), new_meta.get(key, "(absent)")
            differences.append(f"meta {key} was {old!r}, now {new!r}")
    return differences


def _array_header(array: np.ndarray) -> Dict[str, Any]:
    return npy_format.header_data_from_array_1_0(_little_endian(array))


def _little_endian(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=array.dtype.newbyteorder("<"), order="C")  # keeps 0-d arrays 0-d


def _blocks(array: np.ndarray) -> Iterator[memoryview]:
    """The bytes of `array` in C order, as views (no copy) of at most `_BLOCK` bytes."""
    data = memoryview(_little_endian(array).reshape(-1).view(np.uint8))
    for start in range(0, len(data), _BLOCK):
        yield data[start:start + _BLOCK]


def _write_npz(path: Path, names: np.ndarray, camids: np.ndarray, meta: Dict[str, Any],
               features_header: Dict[str, Any], feature_blocks: Iterable[Union[bytes, memoryview]],
               compress: bool) -> Path:
    """The npz of a feature file, written entry by entry without holding the features."""
    names = np.asarray(names, dtype=str)
    camids = np.asarray(camids, dtype=np.int64)
    meta_array = np.array(json.dumps(meta, sort_keys=True))
    compression = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED

    def write(f) -> None:
        with zipfile.ZipFile(f, "w", compression=compression) as archive:
            for key, header, blocks in (("names", _array_header(names), _blocks(names)),
                                        ("camids", _array_header(camids), _blocks(camids)),
                                        ("features", features_header, feature_blocks),
                                        ("meta", _array_header(meta_array), _blocks(meta_array))):
                info = zipfile.ZipInfo(key + ".npy", date_time=_ZIP_TIME)
                info.compress_type = compression
                info.external_attr = 0o644 << 16
                with archive.open(info, "w", force_zip64=True) as entry:
                    npy_format.write_array_header_1_0(entry, header)
                    for block in blocks:
                        entry.write(block)

    atomic_write(path, write)
    return path
