"""tools/benchmarks/cluster.py: the feature distributions of --dist (unit rows, cameras, seeds,
Zipf identity sizes, camera bias), the model distribution and its cache on a tiny model, the
faiss IVF kNN stage, and one in-process run of the whole benchmark."""
import argparse
import importlib.util
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import lwtgpf

ROOT = Path(__file__).resolve().parents[2]
SYNTHETIC = ("generator", "zipf", "noise", "camera")


@pytest.fixture(scope="module")
def cluster():
    spec = importlib.util.spec_from_file_location("cluster_benchmark", ROOT / "tools/benchmarks/cluster.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def same_camera_share(x: np.ndarray, cams: np.ndarray, k: int = 10) -> float:
    """The share of the k nearest other rows (by cosine) that share the row's camera."""
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    nearest = np.argsort(-sim, axis=1)[:, :k]
    return float((cams[nearest] == cams[:, None]).mean())


@pytest.mark.parametrize("name", SYNTHETIC)
def test_synthetic_distributions(cluster, name):
    x, cams = cluster.make_distribution(name, 700, 24, 4, seed=3)
    assert x.shape == (700, 24) and x.dtype == np.float32
    assert cams.shape == (700,) and cams.dtype == np.int64 and 0 <= cams.min() and cams.max() < 4
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    again, again_cams = cluster.make_distribution(name, 700, 24, 4, seed=3)
    np.testing.assert_array_equal(x, again)
    np.testing.assert_array_equal(cams, again_cams)
    other, other_cams = cluster.make_distribution(name, 700, 24, 4, seed=4)
    assert np.abs(other - x).max() > 0.1 and (other_cams != cams).any()


def test_generator_is_make_features(cluster):
    """The default keeps the earlier numbers: the same arrays as make_features."""
    for expected, got in zip(cluster.make_features(500, 16, 6, 1), cluster.make_distribution("generator", 500, 16, 6, 1)):
        np.testing.assert_array_equal(expected, got)


@pytest.mark.parametrize("name", ("zipf", "noise", "camera"))
def test_mixture_identities(cluster, name):
    """The noise share of the parameters, identities 0..ids-1, each seen by at most its own count of cameras."""
    params = cluster.MIXTURES[name]
    x, cams, ids = cluster.mixture(3000, 16, 6, 0, **params)
    for expected, got in zip((x, cams), cluster.make_distribution(name, 3000, 16, 6, 0)):
        np.testing.assert_array_equal(expected, got)
    assert (ids < 0).sum() == round(params["noise"] * 3000)
    sizes = np.bincount(ids[ids >= 0])
    assert sizes.min() >= 1 and sizes.max() <= params["max_size"]
    for p in range(min(len(sizes), 50)):
        assert len(np.unique(cams[ids == p])) <= min(sizes[p], 6)


def test_zipf_identity_sizes_have_a_heavy_tail(cluster):
    _, _, ids = cluster.mixture(20000, 8, 6, 0, **cluster.MIXTURES["zipf"])
    sizes = np.bincount(ids[ids >= 0])
    assert np.median(sizes) <= 2 and (sizes <= 5).mean() > 0.8  # most identities hold 1-5 images
    assert sizes.max() >= 100 * np.median(sizes)  # and a few very many
    assert sizes.max() <= cluster.MIXTURES["zipf"]["max_size"]
    assert np.sort(sizes)[-10:].sum() > 0.2 * sizes.sum()


def test_small_blocks(cluster, monkeypatch):
    """Identities larger than a block and many blocks: every row written, unit, with its identity."""
    monkeypatch.setattr(cluster, "_ROWS", 37)
    monkeypatch.setattr(cluster, "_IDS", 5)
    x, cams, ids = cluster.mixture(1500, 12, 3, 2, **cluster.MIXTURES["zipf"])
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    assert np.bincount(ids[ids >= 0]).max() > 37 and (ids < 0).sum() == 150
    assert np.unique(ids[ids >= 0]).tolist() == list(range(ids.max() + 1))


def test_camera_offsets_bias_the_neighbours(cluster):
    """The camera distribution's nearest neighbours mostly share the camera, unlike the same set without offsets."""
    params = cluster.MIXTURES["camera"]
    biased, cams, _ = cluster.mixture(2000, 256, 6, 0, **params)
    plain, plain_cams, _ = cluster.mixture(2000, 256, 6, 0, **dict(params, camera_offset=0.0))
    assert same_camera_share(biased, cams) > 0.8
    assert same_camera_share(plain, plain_cams) < 0.5


@pytest.fixture(scope="module")
def model_files(tiny_model_files):
    """A tiny model's config file and checkpoint, and 7 training images with Market-style names (cameras c1..c3)."""
    config, weights, folder = tiny_model_files
    images = folder / "bounding_box_train"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(7):
        pixels = rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{i // 2:04d}_c{i % 3 + 1}_{i:06d}.jpg")
    (images / "notes.txt").write_text("not an image")
    return dict(config=config, weights=weights, images=images)


def test_model_distribution_and_its_cache(cluster, model_files, tmp_path, monkeypatch):
    x, cams = cluster.make_distribution("model", 16, 768, 6, 0, tmp_path / "cache", **model_files)
    assert x.shape[0] == 16 and x.shape[1] > 0 and x.dtype == np.float32 and cams.dtype == np.int64
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    # every image used about 16 / 7 times, with its camera (image i: camera i % 3)
    assert sorted(np.bincount(cams).tolist()) == sorted(np.bincount([i % 3 for i in np.arange(16) % 7]).tolist())
    assert len(np.unique(x.round(5), axis=0)) == 16  # augmented: no two rows alike, repeated images included
    feature_path, cams_path = cluster.model_cache_paths(16, 0, tmp_path / "cache", model_files["weights"])
    assert feature_path.exists() and cams_path.exists()
    assert str(os.stat(model_files["weights"]).st_size) in feature_path.name

    recomputed = cluster.model_features(16, 0, tmp_path / "other", **model_files)
    np.testing.assert_array_equal(recomputed[0], x)  # the seed fixes the order and the augmentations
    np.testing.assert_array_equal(recomputed[1], cams)
    other_seed = cluster.model_features(16, 1, tmp_path / "cache", **model_files)[0]
    assert np.abs(other_seed - x).max() > 1e-3

    def no_extractor(*args, **kwargs):
        raise AssertionError("the cached features should have been read")

    monkeypatch.setattr(lwtgpf, "FeatureExtractor", no_extractor)
    cached, cached_cams = cluster.make_distribution("model", 16, 768, 6, 0, tmp_path / "cache", **model_files)
    np.testing.assert_array_equal(cached, x)
    np.testing.assert_array_equal(cached_cams, cams)
    with pytest.raises(AssertionError, match="cached"):  # another N is another entry
        cluster.model_features(17, 0, tmp_path / "cache", **model_files)


def test_model_distribution_needs_the_demo(cluster, model_files, tmp_path):
    with pytest.raises(FileNotFoundError, match="make demo"):
        cluster.model_features(8, 0, tmp_path, **dict(model_files, weights=tmp_path / "missing.pth"))
    with pytest.raises(FileNotFoundError, match="make demo"):
        cluster.model_features(8, 0, tmp_path, **dict(model_files, images=tmp_path / "nowhere"))


def test_augmentation_keeps_the_size(cluster):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 20, 3), dtype=np.uint8))
    for draws in (np.zeros(9), np.full(9, 0.999), np.random.default_rng(1).random(9)):
        out = cluster.augment(image, draws)
        assert out.size == image.size and out.mode == "RGB"
    assert np.abs(np.asarray(cluster.augment(image, np.full(9, 0.5))).astype(int) - np.asarray(image)).max() > 0


def test_faiss_ivf_stage(cluster):
    x, _ = cluster.make_distribution("generator", 2000, 32, 6, 0)
    everything = cluster.faiss_ivf_stage(x, k1=10, nprobe=10 ** 6, recall_sample=200)  # every cell probed: exact
    assert everything["recall"] > 0.999 and "IndexIVFFlat" in everything["describe"]
    one = cluster.faiss_ivf_stage(x, k1=10, nprobe=1, nlist=20, recall_sample=200)
    assert "20 cells, 1 probed" in one["describe"] and one["recall"] < everything["recall"]
    assert np.isnan(cluster.faiss_ivf_stage(x, k1=10, nprobe=1, recall_sample=0)["recall"])
    args = argparse.Namespace(nprobe=0)
    assert cluster._ivf_probes("faiss_ivf:8", args) == 8
    for bad in ("faiss_ivf", "faiss_ivf:0", "faiss_ivf:x", "faiss_ivfx:2"):
        with pytest.raises(ValueError, match="faiss_ivf:NPROBE"):
            cluster._ivf_probes(bad, args)
    assert cluster._ivf_probes("faiss_ivf", argparse.Namespace(nprobe=3)) == 3


@pytest.mark.parametrize("dist", ("camera", "zipf"))
def test_benchmark_run(cluster, monkeypatch, capsys, dist):
    """The whole benchmark on a small set, its workers run in this process; on zipf at this size
    DBSCAN forms no cluster, which the benchmark reports as all outliers."""
    parser = argparse.ArgumentParser()
    cluster.add_arguments(parser)

    def in_process(cmd, check):
        assert cmd[1] == str(ROOT / "tools/benchmarks/cluster.py")
        cluster.main(parser.parse_args(cmd[2:]))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(cluster.subprocess, "run", in_process)
    cluster.main(parser.parse_args(["--dist", dist, "--n", "1200", "--dim", "32", "--knn", "torch,faiss_ivf:4",
                                    "--skip-naive", "--recall-sample", "100"]))
    out = capsys.readouterr().out
    params = ", ".join(f"{k} {cluster._format(v)}" for k, v in cluster.MIXTURES[dist].items())
    assert f"cluster: dist={dist} ({params}) seed=0 N=1200 D=32" in out
    assert "outlier %" in out and "outlier ratio" in out
    assert "kNN stage only" in out and "faiss_ivf:4" in out and "IndexIVFFlat (CPU, 18 cells, 4 probed" in out
    row = next(line for line in out.splitlines() if line.startswith("ours (torch)"))
    clusters, outliers, share = row.split()[5:8]
    assert float(share) == pytest.approx(100 * int(outliers) / 1200, abs=0.05)
    assert (int(clusters) == 0) == (dist == "zipf") == ("no cluster formed" in out)
