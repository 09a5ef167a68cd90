"""Dataset readers on tiny fake folders written to tmp_path."""
import logging
import os
from typing import Dict, List

import numpy as np
import pytest
from PIL import Image

import lwtgpf  # noqa: F401  (before fastreid)
import lwtgpf.data.datasets  # noqa: F401  (registers the readers)
from fastreid.data.common import CommDataset
from fastreid.data.datasets import DATASET_REGISTRY
from lwtgpf.data.datasets import CUHK03NP, MarketLayout, MarketLayoutDataset, OccludedDuke
from lwtgpf.data.datasets.market_layout import DatasetLayoutError, parse_market_name
from lwtgpf.data.io import UnreadableImageError, read_image, verify_images

# What the trainer passes to every dataset: readers must ignore what is not theirs.
TRAINER_KWARGS = {"custom_dir": "", "cuhk03_variant": "labeled", "synthetic_seed": 0}
SPLITS = ("bounding_box_train", "query", "bounding_box_test")


def write_image(path: str) -> None:
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP"}[os.path.splitext(path)[1].lower()]
    pixels = np.random.default_rng(len(path)).integers(0, 256, (16, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)


def make_layout(folder: str, names: Dict[str, List[str]]) -> str:
    """Write a Market-layout folder; ``names`` maps split folder -> file names."""
    for split in SPLITS:
        os.makedirs(os.path.join(folder, split), exist_ok=True)
        for name in names.get(split, []):
            write_image(os.path.join(folder, split, name))
    return folder


def stats(items):
    return len({i[1] for i in items}), len(items), len({i[2] for i in items})


def duke_names(cam_train=(1, 8, 3), ext="jpg"):
    return {
        "bounding_box_train": [f"{p:04d}_c{c}_f{p * 100 + c:07d}.{ext}" for p in (1, 2, 5) for c in cam_train],
        "query": [f"0007_c{c}_f00000{c}1.{ext}" for c in (1, 2)],
        "bounding_box_test": [f"{p:04d}_c{c}_f00000{c}2.{ext}" for p in (7, 8) for c in (4, 6)],
    }


def test_parse_market_name():
    assert parse_market_name("0002_c1s1_000451_03.jpg") == (2, 1)
    assert parse_market_name("/a/b/-1_c3s2_000001_01.jpg") == (-1, 3)
    assert parse_market_name("0001_c12_f0046182.jpg") == (1, 12)
    assert parse_market_name("0001c1.jpg") is None
    assert parse_market_name("-2_c1.jpg") is None


def test_occluded_duke_counts_and_fastreid_convention(tmp_path):
    make_layout(str(tmp_path / "Occluded_Duke"), duke_names())
    ds = DATASET_REGISTRY.get("OccludedDuke")(root=str(tmp_path), **TRAINER_KWARGS)
    assert isinstance(ds, OccludedDuke)
    assert stats(ds.train) == (3, 9, 3)
    assert stats(ds.query) == (1, 2, 2)
    assert stats(ds.gallery) == (2, 4, 2)
    # train ids and cameras are prefixed strings, as fast-reid's readers make them
    assert {i[1] for i in ds.train} == {"occludedduke_1", "occludedduke_2", "occludedduke_5"}
    assert {i[2] for i in ds.train} == {"occludedduke_0", "occludedduke_7", "occludedduke_2"}
    # test ids and cameras are 0-based ints
    assert {i[2] for i in ds.query} == {0, 1} and {i[1] for i in ds.query} == {7}
    assert {i[2] for i in ds.gallery} == {3, 5}
    assert all(os.path.isfile(i[0]) for i in ds.train + ds.query + ds.gallery)
    ds.show_train()
    ds.show_test()
    # fast-reid's relabelling gives contiguous labels
    train_set = CommDataset(ds.train, relabel=True)
    assert train_set.num_classes == 3 and train_set.num_cameras == 3
    sample = train_set[0]
    assert sample["targets"] in range(3) and sample["camids"] in range(3)


def test_occluded_duke_camera_out_of_range(tmp_path):
    names = duke_names()
    names["bounding_box_test"].append("0009_c9_f0000001.jpg")
    make_layout(str(tmp_path / "Occluded_Duke"), names)
    with pytest.raises(DatasetLayoutError, match=r"0009_c9_f0000001\.jpg.*c1\.\.c8"):
        OccludedDuke(root=str(tmp_path))


@pytest.mark.parametrize("variant", ["labeled", "detected"])
def test_cuhk03np_variants(tmp_path, variant):
    n_train = {"labeled": 2, "detected": 3}
    for v, n in n_train.items():
        make_layout(str(tmp_path / "cuhk03-np" / v), {
            "bounding_box_train": [f"{p:04d}_c{c}_{k}.png" for p in range(1, n + 1) for c in (1, 2) for k in (1, 2)],
            "query": ["0100_c1_1.png", "0101_c2_1.png"],
            "bounding_box_test": ["0100_c2_3.png", "0101_c1_3.png", "0101_c1_4.png"],
        })
    ds = DATASET_REGISTRY.get("CUHK03NP")(root=str(tmp_path), **{**TRAINER_KWARGS, "cuhk03_variant": variant})
    assert isinstance(ds, CUHK03NP)
    assert stats(ds.train) == (n_train[variant], 4 * n_train[variant], 2)
    assert all(os.sep + variant + os.sep in i[0] for i in ds.train)
    assert {i[2] for i in ds.train} == {"cuhk03np_0", "cuhk03np_1"}
    assert stats(ds.query) == (2, 2, 2) and stats(ds.gallery) == (2, 3, 2)
    assert {i[2] for i in ds.query + ds.gallery} == {0, 1}


def test_cuhk03np_bad_variant_and_camera(tmp_path):
    with pytest.raises(ValueError, match="DATASETS.CUHK03_VARIANT.*'Labelled'"):
        CUHK03NP(root=str(tmp_path), cuhk03_variant="Labelled")
    make_layout(str(tmp_path / "cuhk03-np" / "labeled"), {
        "bounding_box_train": ["0001_c1_1.png", "0001_c3_1.png"],
        "query": ["0002_c1_1.png"],
        "bounding_box_test": ["0002_c2_1.png"],
    })
    with pytest.raises(DatasetLayoutError, match=r"0001_c3_1\.png.*c1\.\.c2"):
        CUHK03NP(root=str(tmp_path))


def test_market_layout_junk_extensions_and_relative_dir(tmp_path):
    make_layout(str(tmp_path / "my" / "cams"), {
        "bounding_box_train": ["0001_c1s1_000001_00.jpg", "0001_c2s1_000001_00.JPEG",
                               "0003_c3s1_000001_00.png", "0003_c4_0001.bmp", "-1_c1s1_000001_00.jpg"],
        "query": ["0001_c1s1_000002_00.jpg", "0003_c2s1_000002_00.jpg"],
        "bounding_box_test": ["0001_c2s1_000003_00.jpg", "0000_c1s1_000004_00.jpg",
                              "-1_c1s1_000005_00.jpg", "-1_c3s1_000006_00.jpg"],
    })
    kwargs = {**TRAINER_KWARGS, "custom_dir": os.path.join("my", "cams")}
    ds = DATASET_REGISTRY.get("MarketLayout")(root=str(tmp_path), **kwargs)
    assert isinstance(ds, MarketLayout)
    # pid -1 dropped everywhere (fast-reid's Market1501 rule); every extension read
    assert stats(ds.train) == (2, 4, 4)
    assert {i[1] for i in ds.train} == {"marketlayout_1", "marketlayout_3"}
    # pid 0 distractors stay in the gallery
    assert sorted(i[1] for i in ds.gallery) == [0, 1]
    assert 0 in ds._junk_pids and -1 in ds._junk_pids

    # an absolute custom_dir ignores the root
    other = DATASET_REGISTRY.get("MarketLayout")(root="/nonexistent-root", custom_dir=str(tmp_path / "my" / "cams"))
    assert len(other.train) == 4
    # combineall leaves distractors out of the training set, as for fast-reid's Market1501
    combined = MarketLayout(root=str(tmp_path), custom_dir="my/cams", combineall=True)
    assert len(combined.train) == 4 + 2 + 1


def test_market_layout_needs_custom_dir(tmp_path):
    with pytest.raises(ValueError, match="DATASETS.CUSTOM_DIR"):
        MarketLayout(root=str(tmp_path), **TRAINER_KWARGS)


def test_market_layout_camera_zero(tmp_path):
    make_layout(str(tmp_path / "d"), {
        "bounding_box_train": ["0001_c0_1.jpg"], "query": ["0001_c1_1.jpg"], "bounding_box_test": ["0001_c2_1.jpg"],
    })
    with pytest.raises(DatasetLayoutError, match=r"0001_c0_1\.jpg.*c1 or above"):
        MarketLayout(root=str(tmp_path), custom_dir="d")


def test_unparsable_names_are_reported(tmp_path, caplog):
    names = duke_names()
    names["bounding_box_train"] += ["person1_cam2.jpg", "0004-c1.png", "x_c1.jpg"]
    folder = make_layout(str(tmp_path / "Occluded_Duke"), names)
    (tmp_path / "Occluded_Duke" / "bounding_box_train" / "Thumbs.db").write_bytes(b"\0")
    with caplog.at_level(logging.INFO, logger="lwtgpf.data.datasets.market_layout"):
        ds = OccludedDuke(root=str(tmp_path))
    assert len(ds.train) == 9
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert os.path.join(folder, "bounding_box_train") in message
    assert "skipped 3 image(s)" in message and "person1_cam2.jpg" in message
    assert any("Thumbs.db" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


def test_missing_folders_show_layout(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        OccludedDuke(root=str(tmp_path))
    message = str(info.value)
    assert str(tmp_path / "Occluded_Duke") in message
    for split in SPLITS:
        assert split + "/" in message
    assert "FASTREID_DATASETS" in message

    # only one split missing: that path is named
    os.makedirs(tmp_path / "cuhk03-np" / "detected" / "bounding_box_train")
    os.makedirs(tmp_path / "cuhk03-np" / "detected" / "query")
    with pytest.raises(FileNotFoundError, match="bounding_box_test") as info:
        CUHK03NP(root=str(tmp_path), cuhk03_variant="detected")
    assert str(tmp_path / "cuhk03-np" / "detected" / "bounding_box_test") in str(info.value)
    assert str(tmp_path / "cuhk03-np" / "detected" / "query,") not in str(info.value)


def test_split_without_usable_images(tmp_path):
    names = duke_names()
    names["query"] = ["-1_c1_f0000001.jpg"]
    make_layout(str(tmp_path / "Occluded_Duke"), names)
    with pytest.raises(DatasetLayoutError, match="no usable image.*query"):
        OccludedDuke(root=str(tmp_path))


def test_base_class_reuse(tmp_path):
    folder = make_layout(str(tmp_path / "synth"), duke_names(cam_train=(1, 2)))
    # a pathlib.Path works too; trainer kwargs that are not the reader's are ignored
    ds = MarketLayoutDataset(tmp_path / "synth", dataset_name="synthetic", num_cameras=8, mode="query",
                             custom_dir="x", synthetic_seed=1)
    assert {i[1] for i in ds.train} == {"synthetic_1", "synthetic_2", "synthetic_5"}
    assert ds.data == ds.query and ds.num_cameras == 8 and ds.data_dir == folder
    assert MarketLayoutDataset.num_cameras is None  # the override stays on the instance
    with pytest.raises(DatasetLayoutError, match="c1..c1"):
        MarketLayoutDataset(folder, dataset_name="synthetic", num_cameras=1)


def test_corrupt_images(tmp_path):
    good = str(tmp_path / "0001_c1_1.jpg")
    write_image(good)
    junk = tmp_path / "0001_c1_2.jpg"
    junk.write_bytes(b"this is not an image")
    truncated = tmp_path / "0001_c1_3.jpg"
    data = open(good, "rb").read()
    truncated.write_bytes(data[: len(data) // 2])

    assert verify_images([good, (good, "x_1", "x_0")]) == 2
    with pytest.raises(UnreadableImageError, match=r"(?s)1 of 2 image\(s\).*0001_c1_2\.jpg.*UnidentifiedImageError") as info:
        verify_images([(good, 1, 0), (str(junk), 1, 0)])
    assert info.value.paths == [str(junk)]
    # header checks may miss a JPEG cut short; full decoding always finds it
    with pytest.raises(UnreadableImageError, match=r"2 of 3 image\(s\)") as info:
        verify_images([good, str(junk), str(truncated)], decode=True)
    assert info.value.paths == [str(junk), str(truncated)]

    assert read_image(good).size == (8, 16)
    with pytest.raises(UnreadableImageError, match=r"(?i)0001_c1_3\.jpg.*truncated"):
        read_image(str(truncated))
    with pytest.raises(OSError, match=r"0001_c1_2\.jpg"):
        read_image(str(junk))


def test_fastreid_market1501_after_import(tmp_path):
    make_layout(str(tmp_path / "Market-1501-v15.09.15"), {
        "bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c2s1_000301_01.jpg", "0007_c6s4_002202_01.jpg"],
        "query": ["0001_c1s1_001051_00.jpg"],
        "bounding_box_test": ["0001_c5s1_000151_01.jpg", "0000_c1s1_000001_00.jpg", "-1_c1s1_000401_03.jpg"],
    })
    ds = DATASET_REGISTRY.get("Market1501")(root=str(tmp_path), **TRAINER_KWARGS)
    assert stats(ds.train) == (2, 3, 3)
    assert {i[1] for i in ds.train} == {"market1501_2", "market1501_7"}
    assert sorted(i[1] for i in ds.gallery) == [0, 1]
