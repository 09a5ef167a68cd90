"""SyntheticPopulation: disjoint from every SyntheticReID set, varied cameras, deterministic, registered."""
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

import lwtgpf  # noqa: F401  (fastreid compatibility fixes first)
from fastreid.data.datasets import DATASET_REGISTRY
from lwtgpf.data import population, synthetic
from lwtgpf.data.population import STRENGTH_RANGES, camera_strengths, generate_population

TINY = dict(num_ids=10, num_test_ids=3, num_cameras=8, images_per_id=5)
NAME = re.compile(r"^(\d{4})_c(\d+)_(\d{6})\.jpg$")


def _cameras_by_pid(folder: Path, sub: str) -> dict:
    out = defaultdict(list)
    for p in sorted((folder / sub).iterdir()):
        pid, cam, _ = map(int, NAME.match(p.name).groups())
        out[pid].append(cam)
    return out


def test_people_and_cameras_differ_from_every_set_whatever_the_seeds():
    for seed in range(3):
        for other_seed in range(3):
            for pid in (1, 2, 3):
                mine = synthetic._make_identity(seed, pid, purpose=population._POP_IDENTITY)
                theirs = synthetic._make_identity(other_seed, pid)
                assert not np.array_equal(mine.upper, theirs.upper)
            mine = synthetic._make_camera(seed, 1, purpose=population._POP_CAMERA)
            assert not np.array_equal(mine.background, synthetic._make_camera(other_seed, 1).background)
    assert not set(range(100, 106)) & {synthetic._SEED_IDENTITY, synthetic._SEED_CAMERA, synthetic._SEED_PLAN,
                                       synthetic._SEED_IMAGE, synthetic._SEED_OCCLUDER}


def test_camera_strengths_cover_the_grid_ranges():
    drawn = [camera_strengths(0, cam) for cam in range(1, 37)]
    for key, (lo, hi) in STRENGTH_RANGES.items():
        values = np.array([d[key] for d in drawn])
        assert lo <= values.min() < lo + (hi - lo) / 4 and hi - (hi - lo) / 4 < values.max() <= hi, key
    assert STRENGTH_RANGES == {"colour_cast": (0.0, 6.0), "background_contrast": (0.0, 1.0), "blur_noise": (0.0, 3.0)}


def test_layout_splits_and_determinism(tmp_path):
    a = generate_population(tmp_path / "a", **TINY)
    b = generate_population(tmp_path / "b", **TINY)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    train = _cameras_by_pid(a, "bounding_box_train")
    query, gallery = _cameras_by_pid(a, "query"), _cameras_by_pid(a, "bounding_box_test")
    assert sorted(train) == list(range(1, 11)) and sorted(query) == sorted(gallery) == [11, 12, 13]
    for pid, cams in train.items():
        assert 2 <= len(set(cams)) <= 6 and len(cams) == max(TINY["images_per_id"], len(set(cams)))
    for pid in query:
        assert len(query[pid]) == 1 and query[pid][0] not in gallery[pid]  # matched only across cameras
    counts = json.loads((a / "synthetic.json").read_text())["counts"]
    assert counts["bounding_box_train"] == sum(map(len, train.values())) and counts["query"] == 3
    assert generate_population(tmp_path / "a", **TINY) == a  # reused, not rendered again


def test_registered_and_bad_parameters_named(tmp_path):
    dataset = DATASET_REGISTRY.get("SyntheticPopulation")(
        root=str(tmp_path), population_num_ids=4, population_num_test_ids=2, population_num_cameras=6,
        population_images_per_id=3)
    assert len({pid for _, pid, _ in dataset.train}) == 4 and {camid for _, _, camid in dataset.query} <= set(range(6))
    with pytest.raises(ValueError, match=r"DATASETS\.POPULATION\.NUM_CAMERAS is 4; expected an integer >= 6"):
        generate_population(tmp_path, num_cameras=4)
    with pytest.raises(ValueError, match=r"NUM_IDS \+ NUM_TEST_IDS is 10000"):
        generate_population(tmp_path, num_ids=9990, num_test_ids=10)
