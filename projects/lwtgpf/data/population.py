"""SyntheticPopulation: the pretraining population, the demo's stand-in for LUPerson.

Real users of LWTGPF start from a Swin pretrained on millions of people (SOLIDER's LUPerson
teachers) or on ImageNet. The demo's tiny LewinViT starts from weights pretrained on this
population (`tools/pretrain.py`): thousands of people drawn by the SyntheticReID renderer, seen
by dozens of camera styles whose bias strengths are drawn at random over the whole range the bias
grid sweeps (colour cast 0-6, scenery contrast 0-1, blur and noise 0-3, the view each camera
prefers, the scale it shows people at), with occluders on a share of the images. What a model
learns here is people, not the cameras of one set.

The population is disjoint from every SyntheticReID set (the demo's, the tests', the bias grid's)
in people and in cameras: its identities, cameras, plans, images and occluders are drawn from
seed purposes that no SyntheticReID set uses, whatever the seeds. Its test split (people not in
its training split) only monitors pretraining.
"""
from __future__ import annotations

import csv
import functools
import os
from pathlib import Path
from typing import Dict, List, Tuple, Union

import numpy as np
from fastreid.data.datasets import DATASET_REGISTRY

from .datasets.market_layout import MarketLayoutDataset
from .synthetic import _BOXES, _SUBDIRS, _make_camera, _make_identity, _render, _rng, _write_image, render_once

__all__ = ["SyntheticPopulation", "generate_population", "population_dir_name", "camera_strengths"]

_FORMAT_VERSION = 1
# Seed purposes of the population, after SyntheticReID's 0-4: no stream of a set is ever drawn here.
_POP_IDENTITY, _POP_CAMERA, _POP_PLAN, _POP_IMAGE, _POP_OCCLUDER, _POP_STRENGTH, _POP_IMAGE_KINDS = range(100, 107)
# Ranges of the per-camera bias strengths: the bias grid's (tools/sweep.py), each drawn uniformly.
STRENGTH_RANGES = {"colour_cast": (0.0, 6.0), "background_contrast": (0.0, 1.0), "blur_noise": (0.0, 3.0)}
OCCLUDED_SHARE = 0.15  # share of the images with an occluder in front of the person
CAMERAS_PER_ID = (2, 6)  # each person is seen by this many cameras (inclusive), drawn at random


def population_dir_name(num_ids: int, num_test_ids: int, num_cameras: int, images_per_id: int, seed: int) -> str:
    return f"p{num_ids}_te{num_test_ids}_c{num_cameras}_n{images_per_id}_s{seed}"


def camera_strengths(seed: int, cam: int) -> Dict[str, float]:
    """The bias strengths of population camera `cam`, uniform over `STRENGTH_RANGES`."""
    rng = _rng(seed, _POP_STRENGTH, cam)
    return {key: float(rng.uniform(lo, hi)) for key, (lo, hi) in STRENGTH_RANGES.items()}


def _check(num_ids: int, num_test_ids: int, num_cameras: int, images_per_id: int, seed: int) -> None:
    for key, value, low in (("NUM_IDS", num_ids, 1), ("NUM_TEST_IDS", num_test_ids, 1),
                            ("NUM_CAMERAS", num_cameras, CAMERAS_PER_ID[1]), ("IMAGES_PER_ID", images_per_id, 2),
                            ("SEED", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"SyntheticPopulation: DATASETS.POPULATION.{key} is {value!r}; "
                             f"expected an integer >= {low}")
    if num_ids + num_test_ids > 9999:
        raise ValueError(f"SyntheticPopulation: DATASETS.POPULATION.NUM_IDS + NUM_TEST_IDS is "
                         f"{num_ids + num_test_ids}; expected at most 9999 (four-digit identity in the file names)")


def _plan(seed: int, pid: int, num_cameras: int, images: int) -> List[int]:
    """The 1-based camera of each image of `pid`: a few random cameras, uneven counts, one image at least each."""
    rng = _rng(seed, _POP_PLAN, pid)
    k = int(rng.integers(CAMERAS_PER_ID[0], CAMERAS_PER_ID[1] + 1))
    cams = np.sort(rng.permutation(num_cameras)[:k]) + 1
    counts = 1 + rng.multinomial(max(images, k) - k, rng.dirichlet(np.full(k, 2.0)))
    return [int(c) for c, m in zip(cams, counts) for _ in range(m)]


def _write_population(folder: Path, params: Dict[str, int]) -> Dict[str, int]:
    seed, num_cameras, num_ids = params["seed"], params["num_cameras"], params["num_ids"]
    for sub in _SUBDIRS:
        (folder / sub).mkdir()
    cameras = {c: _make_camera(seed, c, **camera_strengths(seed, c), purpose=_POP_CAMERA)
               for c in range(1, num_cameras + 1)}
    counts = dict.fromkeys(_SUBDIRS, 0)
    boxes: List[Tuple] = []
    for pid in range(1, num_ids + params["num_test_ids"] + 1):
        ident = _make_identity(seed, pid, purpose=_POP_IDENTITY)
        plan = _plan(seed, pid, num_cameras, params["images_per_id"])
        if pid <= num_ids:
            subs = ["bounding_box_train"] * len(plan)
        else:  # one query in the first camera, the gallery in the others
            plan = [plan[0]] + [c for c in plan if c != plan[0]]
            subs = ["query"] + ["bounding_box_test"] * (len(plan) - 1)
        for idx, (cam, sub) in enumerate(zip(plan, subs)):
            occluder = _rng(seed, _POP_OCCLUDER, pid, idx)
            occluder = occluder if occluder.random() < OCCLUDED_SHARE else None
            img, box = _render(ident, cameras[cam], _rng(seed, _POP_IMAGE, pid, idx), occluder,
                               _rng(seed, _POP_IMAGE_KINDS, pid, idx))
            name = f"{pid:04d}_c{cam}_{idx:06d}.jpg"
            _write_image(folder / sub / name, img)
            boxes.append((f"{sub}/{name}", *box))
            counts[sub] += 1
    with open(folder / _BOXES, "w", newline="") as f:
        csv.writer(f).writerows([("image", "x0", "y0", "x1", "y1")] + boxes)
    return counts


def generate_population(root: Union[str, os.PathLike] = "datasets", num_ids: int = 2400, num_test_ids: int = 100,
                        num_cameras: int = 36, images_per_id: int = 8, seed: int = 0, overwrite: bool = False) -> Path:
    """Render the population under `<root>/SyntheticPopulation/<name>` once and return that folder."""
    _check(num_ids, num_test_ids, num_cameras, images_per_id, seed)
    params = dict(num_ids=int(num_ids), num_test_ids=int(num_test_ids), num_cameras=int(num_cameras),
                  images_per_id=int(images_per_id), seed=int(seed))
    return render_once(Path(root) / "SyntheticPopulation", population_dir_name(**params), params,
                       functools.partial(_write_population, params=params), "SyntheticPopulation",
                       _FORMAT_VERSION, lambda marker: marker.get("params") if marker else None, overwrite)


@DATASET_REGISTRY.register()
class SyntheticPopulation(MarketLayoutDataset):
    """The pretraining population in Market-1501 layout, generated on first use
    (DATASETS.POPULATION.*; cameras numbered c1..cN)."""
    dataset_dir = "SyntheticPopulation"
    dataset_name = "population"

    def __init__(self, root: str = "datasets", population_num_ids: int = 2400, population_num_test_ids: int = 100,
                 population_num_cameras: int = 36, population_images_per_id: int = 8, population_seed: int = 0,
                 **kwargs) -> None:
        self.root = root
        folder = generate_population(root, population_num_ids, population_num_test_ids, population_num_cameras,
                                     population_images_per_id, population_seed)
        super().__init__(folder, num_cameras=population_num_cameras, **kwargs)
