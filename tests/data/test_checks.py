"""Checks before training: unreadable images all named at once, test sets that cannot be
evaluated, camera ids, several training sets, fast-reid's readers on a missing folder."""
import logging
import os

import numpy as np
import pytest
from PIL import Image

import lwtgpf  # noqa: F401
from fastreid.config import get_cfg

from lwtgpf.config import add_lwtgpf_config
from lwtgpf.data.build import build_dataset, load_test_items, load_train_items
from lwtgpf.data.checks import DataCheckError, check_camera_ids, check_cross_camera, usable_splits
from lwtgpf.data.io import UnreadableImageError
from lwtgpf.engine.trainer import Trainer


def cfg_with(*opts):
    cfg = add_lwtgpf_config(get_cfg())
    cfg.merge_from_list(["DATALOADER.NUM_WORKERS", "2", *opts])
    return cfg


def write(path, data=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if data is None:
        Image.fromarray(np.full((16, 8, 3), 7, np.uint8)).save(path)
    else:
        with open(path, "wb") as f:
            f.write(data)
    return path


def layout(folder, cams=(1, 2), ids=(1, 2)):
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        for pid in ids:
            for cam in cams:
                write(os.path.join(folder, split, f"{pid:04d}_c{cam}_{split[:2]}.jpg"))
    return str(folder)


def test_every_unreadable_image_is_named_at_once(tmp_path, caplog):
    good = [(write(str(tmp_path / f"g{i}.jpg")), 0, 0) for i in range(70)]
    bad_train = [(write(str(tmp_path / f"bad{i}.jpg"), b"not an image"), 0, 0) for i in range(2)]
    bad_query = [(write(str(tmp_path / "q.jpg"), b""), 0, 0)]
    missing = [(str(tmp_path / "gone.jpg"), 0, 0)]
    splits = {"train": good[:60] + bad_train, "query": bad_query + good[60:], "gallery": missing + good[60:]}
    with pytest.raises(UnreadableImageError) as info:
        usable_splits(cfg_with(), splits)
    message = str(info.value)
    assert message.startswith("4 of 84 images cannot be read.")
    for line in ("train: 2 of 62 image(s)", "bad0.jpg", "bad1.jpg", "query: 1 of 11", "q.jpg",
                 "gallery: 1 of 11", "gone.jpg  (FileNotFoundError", "DATALOADER.SKIP_UNREADABLE"):
        assert line in message, line
    assert sorted(info.value.paths) == sorted(p for p, _, _ in bad_train + bad_query + missing)

    with caplog.at_level(logging.WARNING):
        kept = usable_splits(cfg_with("DATALOADER.SKIP_UNREADABLE", "True"), splits)
    assert kept == {"train": good[:60], "query": good[60:], "gallery": good[60:]}
    assert "leaving out 4 of 84 images" in caplog.text and "bad1.jpg" in caplog.text
    assert usable_splits(cfg_with("DATALOADER.CHECK_IMAGES", "False"), splits) == splits


def test_long_lists_go_to_a_file(tmp_path):
    bad = [(write(str(tmp_path / f"b{i:03d}.jpg"), b"x"), 0, 0) for i in range(60)]
    out = tmp_path / "out"
    with pytest.raises(UnreadableImageError, match=r"\.\.\. and 10 more\nThe full list: .*unreadable_images\.txt"):
        usable_splits(cfg_with("OUTPUT_DIR", str(out)), {"train": bad})
    assert len((out / "unreadable_images.txt").read_text().splitlines()) == 60


def test_test_sets_without_cross_camera_matches_say_why():
    one_cam = [("a", 1, 0), ("b", 2, 0)]
    with pytest.raises(DataCheckError, match=r"Test set X cannot be evaluated.*one camera \(camera id 0\)"):
        check_cross_camera("X", one_cam, one_cam)
    with pytest.raises(DataCheckError, match="no query identity appears in the gallery at all"):
        check_cross_camera("X", [("a", 1, 0)], [("b", 2, 1)])
    with pytest.raises(DataCheckError, match="all come from the query's own camera"):
        check_cross_camera("X", [("a", 1, 0), ("b", 2, 1)], [("c", 1, 0), ("d", 2, 1)])
    check_cross_camera("X", [("a", 1, 0), ("b", 2, 1)], [("c", 1, 1), ("d", 2, 1)])  # one query has a match


def test_camera_ids_must_have_an_embedding():
    splits = {"train": [("a", 1, 0), ("b", 1, 13)], "query": [("c", 1, 2)]}
    check_camera_ids(cfg_with("MODEL.BACKBONE.NUM_CAMERAS", "0"), splits)
    with pytest.raises(DataCheckError, match="NUM_CAMERAS is 6 but train has camera id 13; set it to 14"):
        check_camera_ids(cfg_with("MODEL.BACKBONE.NUM_CAMERAS", "6"), splits)


def test_several_training_sets_get_disjoint_cameras(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("FASTREID_DATASETS", str(tmp_path))
    layout(tmp_path / "Occluded_Duke", cams=(1, 2, 8))
    custom = layout(tmp_path / "mine", cams=(1, 3))
    cfg = cfg_with("DATASETS.NAMES", '("OccludedDuke", "MarketLayout")', "DATASETS.CUSTOM_DIR", custom)
    with caplog.at_level(logging.INFO):
        items = load_train_items(cfg)
    assert "OccludedDuke cameras 0..7, MarketLayout cameras 8..10" in caplog.text
    assert sorted({cam for path, _, cam in items if "/mine/" in path}) == [8, 10]
    assert sorted({cam for path, _, cam in items if "Occluded_Duke" in path}) == [0, 1, 7]
    query, gallery = load_test_items(cfg, "MarketLayout")  # the same cameras as in training
    assert sorted({cam for _, _, cam in query + gallery}) == [8, 10]


@pytest.mark.parametrize("name,folder", [("Market1501", "Market-1501-v15.09.15"), ("DukeMTMC", "DukeMTMC-reID"),
                                         ("MSMT17", "MSMT17_V1 or MSMT17_V2")])
def test_fastreid_readers_name_the_expected_folder(tmp_path, monkeypatch, name, folder):
    monkeypatch.setenv("FASTREID_DATASETS", str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        build_dataset(cfg_with(), name)
    message = str(info.value)
    assert f"expects the folder {folder} under the data root {tmp_path}" in message
    assert "FASTREID_DATASETS" in message and "bounding_box_train" in message or "list_train.txt" in message


def test_single_camera_test_set_stops_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTREID_DATASETS", str(tmp_path))
    custom = layout(tmp_path / "one", cams=(1,))
    cfg = cfg_with("DATASETS.NAMES", '("MarketLayout",)', "DATASETS.TESTS", '("MarketLayout",)',
                   "DATASETS.CUSTOM_DIR", custom, "MODEL.META_ARCHITECTURE", "GPO2CAP", "OUTPUT_DIR", str(tmp_path / "o"))
    with pytest.raises(DataCheckError, match="Test set MarketLayout cannot be evaluated.*one camera"):
        Trainer(cfg)
    assert not (tmp_path / "o" / "last_checkpoint").exists()


def test_parallel_check_finds_what_the_serial_one_finds(tmp_path, monkeypatch):
    from lwtgpf.data import io

    paths = [write(str(tmp_path / f"{i}.jpg"), None if i % 7 else b"junk") for i in range(30)]
    monkeypatch.setattr(io, "_PARALLEL_FROM", 8)  # worker processes even for this short list
    parallel = io.find_unreadable(paths, workers=2)
    assert parallel == io.find_unreadable(paths, workers=1)
    assert [p for p, _ in parallel] == paths[::7]
