"""Feature files: round trips, errors that name the file and key, and the chunked writer's streaming,
resuming and refusal to mix chunks of different extractions."""
import dataclasses
import json
import tracemalloc
import zipfile

import numpy as np
import pytest

from lwtgpf.atomic import TMP_PREFIX
from lwtgpf.inference.feature_file import (ChunkedFeatureWriter, FeatureFileError, FeatureSet, read_features,
                                           write_features)

META = {"config": "configs/x.yml", "weights_sha256": "ab" * 32, "feature": "eval", "dim": 6}


def feature_set(n: int = 23, dim: int = 6, seed: int = 0) -> FeatureSet:
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((n, dim)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    names = np.array([f"{i % 7:04d}_c{i % 3 + 1}s1_{i:06d}_00.jpg" for i in range(n)])
    camids = (np.arange(n) % 4 - 1).astype(np.int64)
    return FeatureSet(names, camids, features, dict(META, dim=dim))


def assert_equal_sets(a: FeatureSet, b: FeatureSet) -> None:
    assert a.names.tolist() == b.names.tolist()
    assert a.camids.dtype == b.camids.dtype == np.int64 and np.array_equal(a.camids, b.camids)
    assert a.features.dtype == b.features.dtype == np.float32 and np.array_equal(a.features, b.features)
    assert a.meta == b.meta


def test_round_trip_and_plain_np_load(tmp_path):
    written = feature_set()
    path = write_features(tmp_path / "f.npz", written)
    read = read_features(path)
    assert_equal_sets(read, written)
    assert len(read) == 23 and read.dim == 6
    with np.load(path) as data:
        assert sorted(data.files) == ["camids", "features", "meta", "names"]
        assert data["meta"].shape == () and json.loads(str(data["meta"])) == written.meta
        assert data["names"].dtype.kind == "U"
    assert [p.name for p in tmp_path.iterdir()] == ["f.npz"]  # no temporary file left


def test_same_content_gives_the_same_bytes(tmp_path):
    write_features(tmp_path / "a.npz", feature_set())
    write_features(tmp_path / "b.npz", feature_set())
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


def test_empty_set_round_trips(tmp_path):
    empty = FeatureSet(np.array([], dtype=str), np.zeros(0, np.int64), np.zeros((0, 4), np.float32), {})
    read = read_features(write_features(tmp_path / "e.npz", empty))
    assert len(read) == 0 and read.dim == 4


@pytest.mark.parametrize("change, message", [
    (dict(camids=np.zeros(23, np.int32)), "camids must be a 1-D int64"),
    (dict(features=np.zeros((23, 6), np.float64)), "features must be a 2-D float32"),
    (dict(features=np.zeros(23, np.float32)), "features must be a 2-D float32"),
    (dict(names=np.arange(23)), "names must be a 1-D array of str"),
    (dict(camids=np.zeros(22, np.int64)), "inconsistent lengths: 23 names, 22 camids, 23 feature rows"),
])
def test_feature_set_is_validated(change, message):
    fields = dict(names=feature_set().names, camids=feature_set().camids, features=feature_set().features, meta={})
    with pytest.raises(ValueError, match=message):
        FeatureSet(**dict(fields, **change))


def test_bad_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz: no such feature file"):
        read_features(tmp_path / "nope.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(FeatureFileError, match="text.npz: not a feature file"):
        read_features(tmp_path / "text.npz")
    full = feature_set()
    np.savez(tmp_path / "nofeat.npz", names=full.names, camids=full.camids, meta=np.array("{}"))
    with pytest.raises(FeatureFileError, match=r"nofeat.npz: missing key features; a feature file holds "
                                               r"names, camids, features and optionally meta"):
        read_features(tmp_path / "nofeat.npz")
    np.savez(tmp_path / "nometa.npz", names=full.names, camids=full.camids, features=full.features)
    bare = read_features(tmp_path / "nometa.npz")  # features made by other code
    assert bare.meta == {} and np.array_equal(bare.features, full.features)
    np.savez(tmp_path / "short.npz", names=full.names[:5], camids=full.camids, features=full.features,
             meta=np.array("{}"))
    with pytest.raises(FeatureFileError, match="short.npz: inconsistent lengths: 5 names, 23 camids"):
        read_features(tmp_path / "short.npz")
    np.savez(tmp_path / "meta.npz", names=full.names, camids=full.camids, features=full.features,
             meta=np.array("not json"))
    with pytest.raises(FeatureFileError, match="meta.npz: key meta must hold a JSON object"):
        read_features(tmp_path / "meta.npz")


def writer(tmp_path, fs: FeatureSet, **kwargs) -> ChunkedFeatureWriter:
    return ChunkedFeatureWriter(tmp_path / "out.npz", fs.names, fs.camids, fs.meta, fs.dim,
                                **dict(dict(chunk_size=5), **kwargs))


def write_chunks(w: ChunkedFeatureWriter, fs: FeatureSet, limit: int = None) -> None:
    for chunk in w.pending()[:limit]:
        w.write(chunk.index, fs.features[chunk.start:chunk.stop].copy())


def test_streamed_file_equals_the_in_memory_one(tmp_path):
    fs = feature_set()
    w = writer(tmp_path, fs)
    assert [(c.start, c.stop) for c in w.pending()] == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]
    write_chunks(w, fs)
    assert w.finish() == tmp_path / "out.npz"
    assert not (tmp_path / "out.npz.partial").exists()
    assert_equal_sets(read_features(tmp_path / "out.npz"), fs)
    write_features(tmp_path / "memory.npz", fs)
    assert (tmp_path / "out.npz").read_bytes() == (tmp_path / "memory.npz").read_bytes()
    with zipfile.ZipFile(tmp_path / "out.npz") as archive:
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_STORED}


def test_compressed_stream_loads(tmp_path):
    fs = feature_set()
    w = writer(tmp_path, fs, compress=True)
    write_chunks(w, fs)
    assert_equal_sets(read_features(w.finish()), fs)


def test_chunks_survive_an_interruption(tmp_path):
    fs = feature_set()
    first = writer(tmp_path, fs)
    write_chunks(first, fs, limit=2)
    (first.work_dir / (TMP_PREFIX + "x.chunk-000002.npy")).write_bytes(b"half a chunk")  # killed while writing
    del first
    second = writer(tmp_path, fs)
    assert [c.index for c in second.pending()] == [2, 3, 4] and second.rows_done() == 10
    assert not list(second.work_dir.glob(TMP_PREFIX + "*"))
    write_chunks(second, fs)
    second.finish()
    write_features(tmp_path / "memory.npz", fs)
    assert (tmp_path / "out.npz").read_bytes() == (tmp_path / "memory.npz").read_bytes()


@pytest.mark.parametrize("change, message", [
    (dict(names=feature_set(24).names, camids=feature_set(24).camids), "made for 23 images, now there are 24"),
    (dict(names=feature_set().names[::-1].copy()), "names, their order or their cameras differ"),
    (dict(camids=np.zeros(23, np.int64)), "names, their order or their cameras differ"),
    (dict(meta=dict(META, weights_sha256="cd" * 32)), "meta weights_sha256 was 'abab"),
    (dict(chunk_size=4), "chunk_size was 5, now 4"),
])
def test_a_work_folder_of_another_extraction_is_refused(tmp_path, change, message):
    fs = feature_set()
    write_chunks(writer(tmp_path, fs), fs, limit=1)
    args = dict(names=fs.names, camids=fs.camids, meta=fs.meta, chunk_size=5)
    args.update(change)
    with pytest.raises(FeatureFileError, match=message) as err:
        ChunkedFeatureWriter(tmp_path / "out.npz", args.pop("names"), args.pop("camids"), args.pop("meta"), 6, **args)
    assert "out.npz.partial" in str(err.value) and "--restart" in str(err.value)
    restarted = ChunkedFeatureWriter(tmp_path / "out.npz", fs.names, fs.camids, dict(META, weights_sha256="cd" * 32),
                                     6, chunk_size=5, restart=True)
    assert len(restarted.pending()) == 5


def test_meta_is_compared_as_json_gives_it_back(tmp_path):
    fs = feature_set()
    write_chunks(writer(tmp_path, dataclasses.replace(fs, meta=dict(fs.meta, size=(2, 3)))), fs, limit=1)
    resumed = writer(tmp_path, dataclasses.replace(fs, meta=dict(fs.meta, size=[2, 3])))
    assert len(resumed.pending()) == 4 and resumed.meta["size"] == [2, 3]


def test_an_existing_output_is_kept_unless_overwrite(tmp_path):
    fs = feature_set()
    (tmp_path / "out.npz").write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="out.npz exists; pass --overwrite"):
        writer(tmp_path, fs)
    assert (tmp_path / "out.npz").read_bytes() == b"precious" and not (tmp_path / "out.npz.partial").exists()
    w = writer(tmp_path, fs, overwrite=True)
    write_chunks(w, fs)
    assert_equal_sets(read_features(w.finish()), fs)


def test_writes_and_finish_are_checked(tmp_path):
    fs = feature_set()
    w = writer(tmp_path, fs)
    with pytest.raises(ValueError, match=r"chunk 4 \(rows 20:23\) needs float32 \(3, 6\), got float32 \(5, 6\)"):
        w.write(4, fs.features[:5])
    with pytest.raises(ValueError, match="needs float32 .* got float64"):
        w.write(0, fs.features[:5].astype(np.float64))
    with pytest.raises(IndexError, match="chunk 5 out of range: there are 5 chunks"):
        w.write(5, fs.features[:3])
    write_chunks(w, fs, limit=4)
    with pytest.raises(FeatureFileError, match="1 of 5 chunks are not written yet .*chunk 4, rows 20:23"):
        w.finish()
    np.save(w.work_dir / "chunk-000001.npy", fs.features[:4])  # a tampered chunk
    with pytest.raises(FeatureFileError, match=r"chunk-000001.npy: holds float32 \(4, 6\), expected float32 \(5, 6\)"):
        writer(tmp_path, fs)


def test_assembling_streams_instead_of_holding_the_features(tmp_path):
    n, dim = 200_000, 64
    names = np.array([f"{i:06d}" for i in range(n)])
    camids = np.zeros(n, np.int64)
    w = ChunkedFeatureWriter(tmp_path / "big.npz", names, camids, {}, dim, chunk_size=8192)
    for chunk in w.pending():
        rows = np.full((chunk.stop - chunk.start, dim), chunk.index, np.float32)
        w.write(chunk.index, rows)
    full_bytes = n * dim * 4
    tracemalloc.start()
    try:
        w.finish()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    print(f"assembling {full_bytes / 2**20:.1f} MiB of features: peak {peak / 2**20:.2f} MiB traced")
    assert peak < full_bytes / 20
    with np.load(tmp_path / "big.npz") as data:
        features = data["features"]
        assert features.shape == (n, dim) and features[8191, 0] == 0 and features[8192, 0] == 1
        assert features[-1, -1] == len(w.chunks) - 1
