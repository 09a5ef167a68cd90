"""tools/extract_features.py on tiny crops with a tiny model: the features of the extractor, folders and
list files, an interrupted run resumed bit for bit, unreadable images and existing outputs."""
import hashlib
import importlib.util
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import lwtgpf  # noqa: F401
from lwtgpf.inference.extractor import FeatureExtractor
from lwtgpf.inference.feature_file import ChunkedFeatureWriter, read_features

from .conftest import TINY

ROOT = Path(__file__).resolve().parents[2]
COUNT = 26  # chunks of 8: 8, 8, 8, 2


def _tool():
    spec = importlib.util.spec_from_file_location("tool_extract_features", ROOT / "tools/extract_features.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


extract_features = _tool()


@pytest.fixture(scope="module")
def model_files(tiny_model_files):
    """A config file (the tiny model's whole config) and a checkpoint of that model."""
    config, weights, _ = tiny_model_files
    return str(config), str(weights)


@pytest.fixture
def crops(tmp_path):
    """COUNT random 32x16 crops with Market-style names (cameras c1..c3), some in a sub-folder."""
    folder = tmp_path / "crops"
    rng = np.random.default_rng(0)
    for i in range(COUNT):
        name = f"{i // 4:04d}_c{i % 3 + 1}s1_{i:06d}_00.{'PNG' if i % 5 == 0 else 'png'}"
        path = folder / ("sub" if i % 2 else "") / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 16, 3), dtype=np.uint8)).save(path, format="PNG")
    (folder / "notes.txt").write_text("not an image")
    return folder


def run(model_files, images, output, *options) -> int:
    config, weights = model_files
    return extract_features.main(["--config-file", config, "--images", str(images), "--output", str(output),
                                  "--batch-size", "3", "--chunk-size", "8", *options, "MODEL.WEIGHTS", weights])


def test_folder_features_are_the_extractors(model_files, crops, tmp_path):
    assert run(model_files, crops, tmp_path / "f.npz") == 0
    result = read_features(tmp_path / "f.npz")
    expected_names = sorted(p.relative_to(crops).as_posix() for p in crops.rglob("*") if p.suffix.lower() == ".png")
    assert result.names.tolist() == expected_names and len(result) == COUNT
    assert result.camids.tolist() == [int(Path(n).name.split("_c")[1][0]) - 1 for n in expected_names]
    extractor = FeatureExtractor(*model_files, opts=TINY)
    expected = extractor([str(crops / n) for n in expected_names], result.camids)
    assert result.dim == extractor.feature_dim
    np.testing.assert_allclose(result.features, expected, atol=1e-5)
    assert result.meta["weights_sha256"] == hashlib.sha256(Path(model_files[1]).read_bytes()).hexdigest()
    assert result.meta["dim"] == extractor.feature_dim and result.meta["images"] == str(crops)
    assert not (tmp_path / "f.npz.partial").exists()


def test_an_interrupted_run_resumes_bit_for_bit(model_files, crops, tmp_path, monkeypatch, capsys):
    assert run(model_files, crops, tmp_path / "whole.npz") == 0

    write = ChunkedFeatureWriter.write

    def write_two_then_stop(self, index, features):
        if len(self.chunks) - len(self.pending()) == 2:
            raise KeyboardInterrupt
        write(self, index, features)

    monkeypatch.setattr(ChunkedFeatureWriter, "write", write_two_then_stop)
    assert run(model_files, crops, tmp_path / "resumed.npz") == 130
    assert "16 images' features are kept" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "resumed.npz.partial").glob("chunk-*")) == \
        ["chunk-000000.npy", "chunk-000001.npy"]
    monkeypatch.setattr(ChunkedFeatureWriter, "write", write)

    embedded = []
    embed = FeatureExtractor.embed
    monkeypatch.setattr(FeatureExtractor, "embed", lambda self, images, camids: embedded.append(len(images)) or
                        embed(self, images, camids))
    assert run(model_files, crops, tmp_path / "resumed.npz") == 0
    assert embedded == [3, 3, 2, 2]  # only chunks 2 and 3, in batches that end at the chunk's end
    assert (tmp_path / "resumed.npz").read_bytes() == (tmp_path / "whole.npz").read_bytes()


def test_another_model_does_not_resume_the_work_folder(model_files, crops, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ChunkedFeatureWriter, "finish", lambda self: None)  # a run killed before the end
    assert run(model_files, crops, tmp_path / "f.npz") == 0
    monkeypatch.undo()
    assert run(model_files, crops, tmp_path / "f.npz", "TEST.FLIP.ENABLED", "True") == 1
    err = capsys.readouterr().err
    assert "f.npz.partial holds the chunks of another extraction: meta config_sha256 was" in err and "--restart" in err
    assert run(model_files, crops, tmp_path / "f.npz", "--restart", "TEST.FLIP.ENABLED", "True") == 0
    assert read_features(tmp_path / "f.npz").meta["flip"] is True


def test_list_file_with_cameras(model_files, crops, tmp_path):
    listed = sorted(crops.rglob("*.png"))[:4]
    odd = tmp_path / "lists" / "frame 7.png"  # no camera in its name; a space in it
    odd.parent.mkdir()
    Image.open(listed[0]).save(odd)
    text = [
        "# images of the hall", "",
        f"{os.path.relpath(listed[0], tmp_path / 'lists')}  2",
        f"{listed[1]}",
        f"{listed[2]}\t-1",
        "frame 7.png",
        "   ",
        "frame 7.png 0",
    ]
    (tmp_path / "lists" / "images.txt").write_text("\n".join(text) + "\n")
    assert run(model_files, tmp_path / "lists" / "images.txt", tmp_path / "f.npz", "--camera", "1") == 0
    result = read_features(tmp_path / "f.npz")
    market_camera = int(listed[1].name.split("_c")[1][0]) - 1
    assert result.names.tolist() == [text[2].rsplit(None, 1)[0], str(listed[1]), str(listed[2]), "frame 7.png",
                                     "frame 7.png"]
    assert result.camids.tolist() == [2, market_camera, -1, 1, 0]
    extractor = FeatureExtractor(*model_files, opts=TINY)
    expected = extractor([listed[0], listed[1], listed[2], odd, odd], result.camids)
    np.testing.assert_allclose(result.features, expected, atol=1e-5)


@pytest.mark.parametrize("line, message", [
    ("missing.png", r"images.txt:2: no such image .*missing.png"),
    ("{image} 3", r"images.txt:2: its listed camera is camera id 3 \(0-based\) but the model has "
                  r"MODEL.BACKBONE.NUM_CAMERAS = 3: ids 0..2, or -1"),
    ("{image} -2", r"images.txt:2: camera id -2 must be 0-based, or -1 for unknown"),
])
def test_list_file_errors_name_the_line(model_files, crops, tmp_path, capsys, line, message):
    image = sorted(crops.rglob("*.png"))[0]
    (tmp_path / "images.txt").write_text(f"{image}\n{line.format(image=image)}\n")
    assert run(model_files, tmp_path / "images.txt", tmp_path / "f.npz") == 1
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "f.npz").exists() and not (tmp_path / "f.npz.partial").exists()


def test_an_unreadable_image_is_named_and_the_done_chunks_are_kept(model_files, crops, tmp_path, capsys):
    assert run(model_files, crops, tmp_path / "clean.npz") == 0
    names = read_features(tmp_path / "clean.npz").names
    broken = crops / names[19]  # in chunk 2
    good = broken.read_bytes()
    broken.write_bytes(b"\x89PNG\r\n\x1a\n but nothing else")
    assert run(model_files, crops, tmp_path / "f.npz", "DATALOADER.NUM_WORKERS", "1") == 1
    err = capsys.readouterr().err
    assert f"cannot read image {broken}" in err and "16 images' features are kept in" in err
    broken.write_bytes(good)
    assert run(model_files, crops, tmp_path / "f.npz") == 0
    assert (tmp_path / "f.npz").read_bytes() == (tmp_path / "clean.npz").read_bytes()


def test_an_existing_output_is_kept_unless_overwrite(model_files, crops, tmp_path, capsys):
    (tmp_path / "f.npz").write_bytes(b"precious")
    assert run(model_files, crops, tmp_path / "f.npz") == 1
    assert "f.npz exists; pass --overwrite to replace it" in capsys.readouterr().err
    assert (tmp_path / "f.npz").read_bytes() == b"precious"
    assert run(model_files, crops, tmp_path / "f.npz", "--overwrite") == 0
    assert len(read_features(tmp_path / "f.npz")) == COUNT


def test_bad_folders_and_cameras_are_explained(model_files, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run(model_files, tmp_path / "empty", tmp_path / "f.npz") == 1
    assert "no images under" in capsys.readouterr().err
    assert run(model_files, tmp_path / "nowhere", tmp_path / "f.npz") == 1
    assert "nowhere: no such folder or list file" in capsys.readouterr().err
    (tmp_path / "cams").mkdir()
    Image.new("RGB", (16, 32)).save(tmp_path / "cams" / "0001_c4s1_000001_00.png")
    assert run(model_files, tmp_path / "cams", tmp_path / "f.npz") == 1
    assert "0001_c4s1_000001_00.png: its name's camera c4 is camera id 3 (0-based)" in capsys.readouterr().err
    (tmp_path / "cams" / "0001_c4s1_000001_00.png").rename(tmp_path / "cams" / "frame.png")
    assert run(model_files, tmp_path / "cams", tmp_path / "f.npz", "--camera", "5") == 1
    assert "frame.png: --camera is camera id 5 (0-based)" in capsys.readouterr().err
    assert run(model_files, tmp_path / "cams", tmp_path / "f.npz", "--camera", "2") == 0
    assert read_features(tmp_path / "f.npz").camids.tolist() == [2]
