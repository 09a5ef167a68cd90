"""SyntheticReID: procedurally rendered pedestrian crops in Market-1501 layout.

The default dataset a newcomer trains on without downloading anything. Every identity has
fixed traits (build, skin, hair, clothing colours and patterns, bag, shoes); every image
varies pose, scale, crop offset and mirroring; every camera has its own background, colour
cast, lighting, blur and noise. The camera effects are strong enough that one person looks
more alike within a camera than across cameras, which is the problem camera-aware proxies
address, while across cameras one person still looks more alike than two different people,
so the task stays learnable. Eight strengths make the camera bias harder (DATASETS.SYNTHETIC.*,
`BIAS_DEFAULTS`): the colour cast, the scenery's contrast and blur/noise, and, off by default,
each camera's preferred view (front, back or side), its person scale and position, a lower
resolution, its own occluders in front of the legs and a non-linear colour response. At their
defaults the set is the one the demo trains on.

Images are rendered at twice the stored size with OpenCV primitives and reduced with area
interpolation (cheap anti-aliasing), then stored as fixed-quality JPEG. Every random draw
comes from a NumPy Generator seeded from (seed, purpose, identity, image), so the same
parameters give the same bytes, and the occluded variant differs from the plain one in the
query images only. `person_boxes.csv` records where each image's person is (its box in pixels),
so that analysis tools can measure where a model looks.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import csv
import functools

import cv2
import numpy as np
from fastreid.data.datasets import DATASET_REGISTRY

from .datasets.market_layout import MarketLayoutDataset

__all__ = ["SyntheticReID", "generate_synthetic", "person_box", "synthetic_dir_name", "IMAGE_SIZE", "BIAS_DEFAULTS"]

logger = logging.getLogger(__name__)

IMAGE_SIZE = (128, 64)  # (height, width) of the stored crops
_SS = 2  # supersampling factor of the drawing canvas
_CH, _CW = IMAGE_SIZE[0] * _SS, IMAGE_SIZE[1] * _SS
_BG_MARGIN = 16  # extra background around the canvas, so crop offsets move the scene
_JPEG_QUALITY = 92
_FORMAT_VERSION = 3  # 3: format 2's images plus person_boxes.csv
# Strengths of the per-camera effects (DATASETS.SYNTHETIC.COLOUR_CAST, BACKGROUND_CONTRAST,
# BLUR_NOISE). Real detector crops are dominated by the person; by default each camera's
# scenery keeps 0.15 of its contrast (muted towards grey): it stays the camera's own, but
# identity is the strongest cue that a randomly initialised network (the CPU demo's) picks up,
# as pretrained weights would on real data. Measured on the demo config with the published
# recipe: with full-contrast scenery (1.0), an untrained LewinViT had almost no cross-camera
# same-identity nearest neighbours and 15 epochs of LWTGPF reached about 2 mAP; at 0.4, 26 mAP;
# at 0.15, 57 mAP (supervised: 87-88). docs/BENCHMARKS.md has the whole grid.
BIAS_DEFAULTS = {
    "colour_cast": 1.0,  # exponent on every camera's per-channel gains (whole image): 0 none, 1 default, 3 moderate, 6 strong
    "background_contrast": 0.15,  # contrast left to every camera's scenery: 0 flat grey, 1 full
    "blur_noise": 1.0,  # factor on every camera's blur sigma and sensor-noise std
    # Off by default (the demo's set is unchanged); each draws from a stream of its own.
    "view_bias": 0.0,  # chance that an image shows its camera's preferred view (front, back or side)
    "scale_bias": 0.0,  # each camera's person scale (x 0.74-1.35 at 1) and position (up to 15% / 10% of the crop)
    "low_resolution": 0.0,  # each camera downsamples by 1 + strength x (1 to 3), then upsamples to the stored size
    "camera_occluders": 0.0,  # chance (x the camera's own 0.4-1) that the camera's own object hides the legs
    "colour_response": 0.0,  # each camera's channel gammas, hue rotation and saturation: not a per-channel gain
}
# The largest strength each kind accepts (where stronger would leave no person to see, or is a probability).
_BIAS_LIMITS = {"colour_cast": np.inf, "background_contrast": 1.0, "blur_noise": np.inf, "view_bias": 1.0,
                "scale_bias": 1.0, "low_resolution": 4.0, "camera_occluders": 1.0, "colour_response": 3.0}
_MARKER = "synthetic.json"
_BOXES = "person_boxes.csv"
_SUBDIRS = ("bounding_box_train", "query", "bounding_box_test")

# Purposes mixed into every seed, so that the streams never overlap. The pretraining population
# (lwtgpf/data/population.py) draws from purposes of its own, so its people and cameras are
# disjoint from every set's, whatever the seeds.
_SEED_IDENTITY, _SEED_CAMERA, _SEED_PLAN, _SEED_IMAGE, _SEED_OCCLUDER, _SEED_IMAGE_KINDS = range(6)
# Key appended to a camera's seed for the stream of the kinds added after the first three, so that
# those draws never shift the older ones (strength 0 renders the same bytes as before they existed).
_CAMERA_KINDS = 1
_VIEWS = ("front", "back", "side")

# RGB palettes. Clothing colours are jittered per identity, so two identities that share
# an entry still differ slightly.
_CLOTHES = np.array([
    (25, 25, 28), (235, 235, 230), (128, 128, 128), (70, 70, 75), (30, 40, 90),
    (40, 90, 190), (130, 170, 220), (190, 30, 35), (110, 25, 35), (40, 130, 60),
    (110, 110, 50), (230, 200, 40), (230, 120, 30), (230, 140, 170), (110, 50, 140),
    (110, 70, 40), (210, 190, 150), (170, 150, 100), (30, 130, 130), (60, 80, 120),
], dtype=np.float32)
_SKIN = np.array([(250, 215, 185), (205, 155, 115), (120, 75, 50)], dtype=np.float32)
_HAIR = np.array([
    (20, 18, 18), (55, 35, 25), (100, 65, 40), (200, 170, 110), (160, 160, 160), (130, 50, 30),
], dtype=np.float32)
_SCENE = np.array([
    (120, 120, 125), (170, 165, 150), (90, 100, 90), (150, 130, 110), (100, 110, 130),
    (200, 200, 195), (80, 70, 65), (140, 150, 160), (115, 135, 100), (175, 150, 140),
], dtype=np.float32)

Colour = Tuple[int, int, int]
Paint = Union[Colour, np.ndarray]


_BIAS_TAGS = {"colour_cast": "cast", "background_contrast": "bg", "blur_noise": "bn", "view_bias": "view",
              "scale_bias": "scale", "low_resolution": "res", "camera_occluders": "occl", "colour_response": "resp"}


def _strengths(given: Dict[str, float]) -> Dict[str, float]:
    """`BIAS_DEFAULTS` updated with the `given` strengths, which must be among its keys."""
    unknown = sorted(set(given) - set(BIAS_DEFAULTS))
    if unknown:
        raise TypeError(f"SyntheticReID: unknown bias strength(s) {', '.join(unknown)}; "
                        f"expected some of {', '.join(BIAS_DEFAULTS)}")
    return {**BIAS_DEFAULTS, **given}


def synthetic_dir_name(num_cameras: int = 6, num_train_ids: int = 200, num_test_ids: int = 100,
                       images_per_id: int = 20, occluded: bool = False, seed: int = 0, **strengths: float) -> str:
    """Folder name of one parameter setting, e.g. `c6_tr200_te100_n20_s0` (`_occ` when occluded);
    bias strengths (`BIAS_DEFAULTS` keys) other than the defaults add `_cast3`, `_bg1`, `_view0.5` ..."""
    name = f"c{num_cameras}_tr{num_train_ids}_te{num_test_ids}_n{images_per_id}_s{seed}"
    strengths = _strengths(strengths)
    for key, tag in _BIAS_TAGS.items():
        if float(strengths[key]) != BIAS_DEFAULTS[key]:
            name += f"_{tag}{float(strengths[key]):g}"
    return name + "_occ" if occluded else name


def _check_params(num_cameras: int, num_train_ids: int, num_test_ids: int, images_per_id: int,
                  occluded: bool, seed: int, strengths: Dict[str, float]) -> None:
    def fail(name: str, key: str, value, expected: str) -> None:
        raise ValueError(f"SyntheticReID: {name} (config DATASETS.SYNTHETIC.{key}) is {value!r}; "
                         f"expected {expected}")

    for name, key, value in (("num_cameras", "NUM_CAMERAS", num_cameras),
                             ("num_train_ids", "NUM_TRAIN_IDS", num_train_ids),
                             ("num_test_ids", "NUM_TEST_IDS", num_test_ids),
                             ("images_per_id", "IMAGES_PER_ID", images_per_id),
                             ("seed", "SEED", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            fail(name, key, value, "an integer")
    if not isinstance(occluded, (bool, np.bool_)):
        fail("occluded", "OCCLUDED", occluded, "True or False")
    # Market-1501 names hold a one-digit camera and a four-digit identity.
    if not 2 <= num_cameras <= 9:
        fail("num_cameras", "NUM_CAMERAS", num_cameras, "2 to 9 (each identity needs two cameras)")
    if num_train_ids < 1:
        fail("num_train_ids", "NUM_TRAIN_IDS", num_train_ids, "at least 1")
    if num_test_ids < 1:
        fail("num_test_ids", "NUM_TEST_IDS", num_test_ids, "at least 1")
    if num_train_ids + num_test_ids > 9999:
        fail("num_train_ids + num_test_ids", "NUM_TRAIN_IDS/NUM_TEST_IDS", num_train_ids + num_test_ids,
             "at most 9999 (four-digit identity in the file names)")
    if images_per_id < 2:
        fail("images_per_id", "IMAGES_PER_ID", images_per_id, "at least 2 (two cameras per identity)")
    if seed < 0:
        fail("seed", "SEED", seed, "a non-negative integer")
    for name, value in strengths.items():
        key, top = name.upper(), _BIAS_LIMITS[name]
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            fail(name, key, value, "a number")
        if not (np.isfinite(value) and 0 <= value <= top):
            fail(name, key, value, "a finite number >= 0" + (f" and <= {top:g}" if np.isfinite(top) else ""))


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in keys])


def _jitter(rng: np.random.Generator, colour: np.ndarray, amount: float) -> np.ndarray:
    return np.clip(colour + rng.uniform(-amount, amount, 3), 0, 255)


def _as_colour(colour: np.ndarray) -> Colour:
    return tuple(int(round(float(c))) for c in colour)


# ----------------------------------------------------------------------------- identities

@dataclass
class _Identity:
    height: float  # fraction of the canvas height the standing person fills
    build: float  # width multiplier
    head_width: float
    skin: Colour
    hair: Colour
    hair_long: bool
    upper: np.ndarray  # texture in person coordinates, [_CH, _CW, 3]
    sleeves_long: bool
    lower: np.ndarray
    lower_kind: str  # trousers | shorts | skirt
    bag: str  # none | backpack | shoulder | hand
    bag_side: int  # -1 left, +1 right (in the unmirrored person)
    bag_colour: Colour
    shoes: Colour


def _clothing_texture(rng: np.random.Generator, base: np.ndarray, patterned: float) -> np.ndarray:
    """Cloth filling the whole canvas, patterned (stripes or checks) with chance `patterned`;
    body parts cut their shape out of it."""
    tex = np.empty((_CH, _CW, 3), np.uint8)
    tex[:] = _as_colour(base)
    pattern = rng.choice(["plain", "stripes", "checks"], p=[1 - patterned, patterned * 0.6, patterned * 0.4])
    if pattern == "plain":
        return tex
    other = _CLOTHES[rng.integers(len(_CLOTHES))]
    if np.abs(other - base).sum() < 120:  # a pattern must be visible
        other = 255.0 - base
    other = _as_colour(_jitter(rng, other, 10))
    period = int(rng.integers(10, 22))
    width = max(2, int(period * rng.uniform(0.3, 0.55)))
    rows = (np.arange(_CH) + int(rng.integers(period))) % period < width
    tex[rows] = other
    if pattern == "checks":
        cols = (np.arange(_CW) + int(rng.integers(period))) % period < width
        tex[:, cols] = other
    return tex


def _make_identity(seed: int, pid: int, purpose: int = _SEED_IDENTITY) -> _Identity:
    rng = _rng(seed, purpose, pid)
    upper = _jitter(rng, _CLOTHES[rng.integers(len(_CLOTHES))], 14)
    lower = _jitter(rng, _CLOTHES[rng.integers(len(_CLOTHES))], 14)
    t = rng.uniform(0, 2)
    skin = _SKIN[0] + (_SKIN[1] - _SKIN[0]) * min(t, 1) + (_SKIN[2] - _SKIN[1]) * max(t - 1, 0)
    return _Identity(
        height=float(rng.uniform(0.80, 0.95)),
        build=float(rng.uniform(0.8, 1.25)),
        head_width=float(rng.uniform(0.85, 1.1)),
        skin=_as_colour(skin),
        hair=_as_colour(_jitter(rng, _HAIR[rng.integers(len(_HAIR))], 8)),
        hair_long=bool(rng.random() < 0.35),
        upper=_clothing_texture(rng, upper, patterned=0.5),
        sleeves_long=bool(rng.random() < 0.6),
        lower=_clothing_texture(rng, lower, patterned=0.25),
        lower_kind=str(rng.choice(["trousers", "shorts", "skirt"], p=[0.65, 0.2, 0.15])),
        bag=str(rng.choice(["none", "backpack", "shoulder", "hand"], p=[0.4, 0.25, 0.2, 0.15])),
        bag_side=int(rng.choice([-1, 1])),
        bag_colour=_as_colour(_jitter(rng, _CLOTHES[rng.integers(len(_CLOTHES))], 14)),
        shoes=_as_colour(_jitter(rng, _CLOTHES[rng.integers(len(_CLOTHES))], 10)),
    )


# ------------------------------------------------------------------------------- cameras

@dataclass
class _Camera:
    background: np.ndarray  # float32 [_CH + 2m, _CW + 2m, 3]
    light: np.ndarray  # float32 [_CH, _CW, 1] illumination multiplier
    gains: np.ndarray  # per-channel colour cast, on the whole image (person included)
    contrast: float
    brightness: float
    blur: float  # Gaussian sigma on the supersampled canvas
    noise: float  # sensor noise std on the stored image
    scale: float  # how large people appear in this view
    back_prob: float  # chance of seeing a person from behind
    # The kinds that are off by default (their strengths 0 leave these at no effect):
    view: str = "front"  # the view this camera prefers (front, back or side)
    view_prob: float = 0.0  # chance that an image shows it
    size: float = 1.0  # factor on the person's scale
    shift: Tuple[float, float] = (0.0, 0.0)  # the person's offset in canvas pixels (x, y)
    resolution: float = 1.0  # downsampling factor of the stored image
    occluder_prob: float = 0.0  # chance that the camera's own occluder stands in front of the legs
    occluder_kind: str = "low"  # low (a car, a bench), railing or bush
    occluder_colour: Colour = (128, 128, 128)
    occluder_top: float = 0.6  # where the occluder begins, as a share of the canvas height
    gamma: Optional[np.ndarray] = None  # per-channel exponent on the image in [0, 1]
    mixing: Optional[np.ndarray] = None  # [3, 3] hue rotation and saturation about the grey axis


def _make_background(rng: np.random.Generator, contrast: float) -> np.ndarray:
    h, w = _CH + 2 * _BG_MARGIN, _CW + 2 * _BG_MARGIN
    wall = _jitter(rng, _SCENE[rng.integers(len(_SCENE))], 30)
    floor = _jitter(rng, _SCENE[rng.integers(len(_SCENE))], 30)
    horizon = int(h * rng.uniform(0.3, 0.7))
    img = np.empty((h, w, 3), np.float32)
    kind = rng.choice(["gradient", "noise", "tiles"])
    if kind == "gradient":
        top = _jitter(rng, wall, 50)
        ramp = np.linspace(0, 1, horizon, dtype=np.float32)[:, None, None]
        img[:horizon] = top * (1 - ramp) + wall * ramp
    elif kind == "noise":
        coarse = rng.normal(0, 25, (6, 4, 3)).astype(np.float32)
        img[:horizon] = wall + cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)[:horizon]
    else:
        img[:horizon] = wall
        step = int(rng.integers(12, 28))
        line = _as_colour(wall * 0.75)
        for y in range(int(rng.integers(step)), horizon, step):
            cv2.line(img, (0, y), (w - 1, y), line, 1)
            for x in range((y // step % 2) * step // 2, w, step):
                cv2.line(img, (x, y), (x, min(y + step, horizon - 1)), line, 1)
    img[horizon:] = floor
    # Floor lines converging towards a vanishing point give each view its own geometry.
    vx = int(rng.integers(-w // 2, w + w // 2))
    floor_line = _as_colour(floor * rng.uniform(0.7, 0.9))
    for x in np.linspace(-w, 2 * w, int(rng.integers(3, 8))):
        cv2.line(img, (vx, horizon), (int(x), h - 1), floor_line, 2)
    for _ in range(int(rng.integers(1, 4))):
        _draw_structure(rng, img, horizon)
    return img * contrast + (1 - contrast) * 128


def _draw_structure(rng: np.random.Generator, img: np.ndarray, horizon: int) -> None:
    h, w = img.shape[:2]
    kind = rng.choice(["pillar", "window", "railing", "tree", "sign"])
    colour = _jitter(rng, _SCENE[rng.integers(len(_SCENE))], 40)
    if kind == "pillar":
        x, pw = int(rng.integers(0, w)), int(rng.integers(8, 26))
        cv2.rectangle(img, (x, 0), (x + pw, horizon + int(rng.integers(0, 30))), _as_colour(colour), -1)
        cv2.line(img, (x + pw, 0), (x + pw, horizon), _as_colour(colour * 0.6), 3)
    elif kind == "window":
        x, y = int(rng.integers(-10, w - 20)), int(rng.integers(0, max(1, horizon - 30)))
        ww, wh = int(rng.integers(25, 70)), int(rng.integers(20, 60))
        cv2.rectangle(img, (x, y), (x + ww, y + wh), _as_colour(_jitter(rng, np.array([190, 210, 225.0]), 30)), -1)
        cv2.rectangle(img, (x, y), (x + ww, y + wh), _as_colour(colour * 0.5), 3)
        cv2.line(img, (x + ww // 2, y), (x + ww // 2, y + wh), _as_colour(colour * 0.5), 2)
    elif kind == "railing":
        y = horizon - int(rng.integers(10, 40))
        cv2.line(img, (0, y), (w - 1, y), _as_colour(colour * 0.7), 4)
        for x in range(int(rng.integers(15)), w, int(rng.integers(12, 30))):
            cv2.line(img, (x, y), (x, horizon), _as_colour(colour * 0.7), 2)
    elif kind == "tree":
        x, y = int(rng.integers(0, w)), int(rng.integers(0, max(1, horizon - 20)))
        cv2.rectangle(img, (x - 4, y), (x + 4, horizon + 10), (90, 60, 40), -1)
        green = _as_colour(_jitter(rng, np.array([60, 120, 50.0]), 30))
        cv2.ellipse(img, (x, y), (int(rng.integers(18, 40)), int(rng.integers(20, 45))), 0, 0, 360, green, -1)
    else:
        x, y = int(rng.integers(0, w - 10)), int(rng.integers(0, max(1, horizon - 15)))
        bright = _CLOTHES[rng.integers(len(_CLOTHES))]
        cv2.rectangle(img, (x, y), (x + int(rng.integers(10, 30)), y + int(rng.integers(8, 20))),
                      _as_colour(bright), -1)


def _grey_axis_mixing(hue: float, saturation: float) -> np.ndarray:
    """[3, 3] RGB matrix that rotates hue by `hue` radians about the grey axis and scales the
    distance from it by `saturation` (greys stay as they are)."""
    a = np.full(3, 1 / np.sqrt(3))
    grey = np.outer(a, a)
    cross = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    rotation = np.cos(hue) * np.eye(3) + np.sin(hue) * cross + (1 - np.cos(hue)) * grey
    return grey + saturation * (rotation - grey)


def _make_camera(seed: int, cam: int, colour_cast: float = 1.0, background_contrast: float = 0.15,
                 blur_noise: float = 1.0, view_bias: float = 0.0, scale_bias: float = 0.0, low_resolution: float = 0.0,
                 camera_occluders: float = 0.0, colour_response: float = 0.0, purpose: int = _SEED_CAMERA) -> _Camera:
    """Camera `cam`; the strengths scale its effects without changing any random draw, so sets
    that differ only in strengths show the same people, poses and scenes."""
    kinds = _rng(seed, purpose, cam, _CAMERA_KINDS)
    view = str(kinds.choice(_VIEWS))
    size, dx, dy, res = kinds.uniform(-1, 1, 4)
    occluder = (kinds.uniform(0.4, 1.0), str(kinds.choice(["low", "railing", "bush"])),
                _as_colour(_jitter(kinds, _CLOTHES[kinds.integers(len(_CLOTHES))], 20)), kinds.uniform(0.5, 0.75))
    gamma, hue, saturation = kinds.uniform(-0.4, 0.4, 3), kinds.uniform(-1, 1), kinds.uniform(-0.6, 0.4)
    extra = dict(
        view=view, view_prob=float(view_bias), size=float(np.exp(0.3 * scale_bias * size)),
        shift=(float(0.15 * scale_bias * dx * _CW), float(0.1 * scale_bias * dy * _CH)),
        resolution=float(1 + low_resolution * (2 + res)), occluder_prob=float(camera_occluders * occluder[0]),
        occluder_kind=occluder[1], occluder_colour=occluder[2], occluder_top=float(occluder[3]))
    if colour_response > 0:
        extra.update(gamma=np.exp(colour_response * gamma).astype(np.float32),
                     mixing=_grey_axis_mixing(np.deg2rad(30) * colour_response * hue,
                                              float(np.exp(colour_response * saturation))).astype(np.float32))

    rng = _rng(seed, purpose, cam)
    background = _make_background(rng, background_contrast)
    # Directional light: a linear ramp across the frame in a random direction.
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:_CH, 0:_CW].astype(np.float32)
    ramp = (np.cos(angle) * (xx / _CW - 0.5) + np.sin(angle) * (yy / _CH - 0.5))
    light = (1 + rng.uniform(0.0, 0.35) * ramp)[..., None].astype(np.float32)
    return _Camera(
        background=background,
        light=light,
        # A power keeps the gains positive and their ratios symmetric (gain g and 1/g equally strong).
        gains=(np.clip(rng.normal(1.0, 0.05, 3), 0.88, 1.12) ** colour_cast).astype(np.float32),
        contrast=float(rng.uniform(0.9, 1.05)),
        brightness=float(rng.uniform(-12, 10)),
        blur=float(rng.choice([0.0, rng.uniform(0.8, 2.2)])) * blur_noise,
        noise=float(rng.uniform(1.0, 8.0)) * blur_noise,
        scale=float(rng.uniform(0.88, 1.02)),
        back_prob=float(rng.uniform(0.0, 1.0)),
        **extra,
    )


# ------------------------------------------------------------------------------ rendering

class _Layer:
    """A premultiplied RGB layer plus its coverage, in person coordinates."""

    def __init__(self) -> None:
        self.rgb = np.zeros((_CH, _CW, 3), np.uint8)
        self.alpha = np.zeros((_CH, _CW), np.uint8)

    def paint(self, paint: Paint, draw: Callable[[np.ndarray, object], None]) -> None:
        if isinstance(paint, np.ndarray):  # a texture: cut the shape out of it
            part = np.zeros((_CH, _CW), np.uint8)
            draw(part, 255)
            sel = part > 0
            self.rgb[sel] = paint[sel]
            self.alpha |= part
        else:
            draw(self.rgb, paint)
            draw(self.alpha, 255)


def _pt(x: float, y: float) -> Tuple[int, int]:
    return int(round(x)), int(round(y))


def _limb(layer: _Layer, paint: Paint, start: Tuple[float, float], end: Tuple[float, float],
          width: float) -> None:
    t = max(1, int(round(width)))
    layer.paint(paint, lambda img, c: cv2.line(img, _pt(*start), _pt(*end), c, t))


def _draw_person(ident: _Identity, rng: np.random.Generator, view: str) -> _Layer:
    """Draw one upright person, feet near the canvas bottom, in a random walking phase, seen from
    the front, the back or the side (facing right: narrower, arms from one shoulder, the
    backpack behind, the hair on the back of the head)."""
    layer = _Layer()
    back_view, side_view = view == "back", view == "side"
    u = _CH * ident.height
    cx, top = _CW / 2, _CH - 6 - u
    phase = rng.uniform(-1, 1)
    leg_swing = np.deg2rad(18) * phase
    arm_swing = -np.deg2rad(16) * phase * rng.uniform(0.6, 1.0)

    head_ry, head_rx = 0.065 * u, 0.052 * u * ident.head_width
    head_c = (cx, top + head_ry)
    sh_y, hip_y = top + 0.16 * u, top + 0.52 * u
    sh_w, hip_w = 0.115 * u * ident.build, 0.085 * u * ident.build
    leg_w, arm_w = 0.07 * u * ident.build, 0.05 * u * ident.build
    leg_len, arm_len = 0.44 * u, 0.36 * u
    if side_view:
        sh_w, hip_w = sh_w * 0.55, hip_w * 0.6
    back = -0.4 * head_rx if side_view else 0.0  # where hair falls, relative to the head's centre

    if ident.hair_long:  # hair falling behind the shoulders
        layer.paint(ident.hair, lambda img, c: cv2.ellipse(
            img, _pt(cx + back, top + 0.12 * u), _pt(head_rx * 1.15, 0.1 * u), 0, 0, 360, c, -1))

    # Legs, then shoes; the far leg and near leg swing opposite ways.
    for side, swing in ((-1, leg_swing), (1, -leg_swing)):
        hip = (cx + side * hip_w * 0.5, hip_y)
        ankle = (hip[0] + leg_len * np.sin(swing), hip[1] + leg_len * np.cos(swing))
        knee = ((hip[0] + ankle[0]) / 2, (hip[1] + ankle[1]) / 2)
        if ident.lower_kind == "trousers":
            _limb(layer, ident.lower, hip, ankle, leg_w)
        elif ident.lower_kind == "shorts":
            _limb(layer, ident.skin, knee, ankle, leg_w * 0.85)
            _limb(layer, ident.lower, hip, (knee[0], knee[1] + 0.03 * u), leg_w * 1.05)
        else:
            _limb(layer, ident.skin, hip, ankle, leg_w * 0.8)
        layer.paint(ident.shoes, lambda img, c, a=ankle: cv2.ellipse(
            img, _pt(a[0], a[1] + 0.01 * u), _pt(0.045 * u, 0.022 * u), 0, 0, 360, c, -1))
    if ident.lower_kind == "skirt":
        skirt = np.array([_pt(cx - hip_w, hip_y - 0.02 * u), _pt(cx + hip_w, hip_y - 0.02 * u),
                          _pt(cx + hip_w * 1.5, hip_y + 0.2 * u), _pt(cx - hip_w * 1.5, hip_y + 0.2 * u)])
        layer.paint(ident.lower, lambda img, c: cv2.fillPoly(img, [skirt], c))

    torso = np.array([_pt(cx - sh_w, sh_y), _pt(cx + sh_w, sh_y), _pt(cx + hip_w, hip_y),
                      _pt(cx - hip_w, hip_y)])

    def draw_torso(img: np.ndarray, c: object) -> None:
        cv2.fillPoly(img, [torso], c)
        for s in (-1, 1):  # rounded shoulders
            cv2.circle(img, _pt(cx + s * (sh_w - arm_w * 0.5), sh_y + arm_w * 0.5), int(arm_w * 0.7), c, -1)

    layer.paint(ident.upper, draw_torso)
    if ident.bag == "backpack" and back_view:
        layer.paint(ident.bag_colour, lambda img, c: cv2.rectangle(
            img, _pt(cx - sh_w * 0.75, sh_y + 0.03 * u), _pt(cx + sh_w * 0.75, sh_y + 0.3 * u), c, -1))
    elif ident.bag == "backpack" and side_view:
        layer.paint(ident.bag_colour, lambda img, c: cv2.rectangle(
            img, _pt(cx - sh_w - 0.08 * u, sh_y + 0.03 * u), _pt(cx - sh_w * 0.3, sh_y + 0.3 * u), c, -1))

    for side, swing in ((-1, arm_swing), (1, -arm_swing)):
        if side_view:  # both arms swing from the one shoulder that is seen
            shoulder, angle = (cx, sh_y + arm_w * 0.5), 2 * swing
        else:
            shoulder = (cx + side * (sh_w - arm_w * 0.5), sh_y + arm_w * 0.5)
            angle = swing + side * np.deg2rad(8)  # arms hang slightly away from the body
        hand = (shoulder[0] + arm_len * np.sin(angle), shoulder[1] + arm_len * np.cos(angle))
        if ident.sleeves_long:
            _limb(layer, ident.upper, shoulder, hand, arm_w)
        else:
            _limb(layer, ident.skin, shoulder, hand, arm_w * 0.85)
            elbow = (shoulder[0] + 0.4 * (hand[0] - shoulder[0]), shoulder[1] + 0.4 * (hand[1] - shoulder[1]))
            _limb(layer, ident.upper, shoulder, elbow, arm_w * 1.05)
        layer.paint(ident.skin, lambda img, c, h=hand: cv2.circle(img, _pt(*h), int(arm_w * 0.6), c, -1))
        if ident.bag == "hand" and side == ident.bag_side:
            layer.paint(ident.bag_colour, lambda img, c, h=hand: cv2.rectangle(
                img, _pt(h[0] - 0.04 * u, h[1]), _pt(h[0] + 0.04 * u, h[1] + 0.09 * u), c, -1))

    strap_w = max(2, int(0.015 * u))
    if ident.bag == "backpack" and view == "front":
        for s in (-1, 1):
            layer.paint(ident.bag_colour, lambda img, c, s=s: cv2.line(
                img, _pt(cx + s * sh_w * 0.55, sh_y), _pt(cx + s * sh_w * 0.5, sh_y + 0.22 * u), c, strap_w))
    elif ident.bag == "shoulder":
        side = ident.bag_side
        layer.paint(ident.bag_colour, lambda img, c: cv2.line(
            img, _pt(cx - side * sh_w * 0.6, sh_y), _pt(cx + side * hip_w, hip_y - 0.04 * u), c, strap_w))
        layer.paint(ident.bag_colour, lambda img, c: cv2.rectangle(
            img, _pt(cx + side * hip_w - 0.05 * u, hip_y - 0.07 * u),
            _pt(cx + side * hip_w + 0.05 * u, hip_y + 0.04 * u), c, -1))

    layer.paint(ident.skin, lambda img, c: cv2.rectangle(
        img, _pt(cx - head_rx * 0.45, top + 1.6 * head_ry), _pt(cx + head_rx * 0.45, sh_y + 2), c, -1))
    layer.paint(ident.skin, lambda img, c: cv2.ellipse(
        img, _pt(*head_c), _pt(head_rx, head_ry), 0, 0, 360, c, -1))
    if back_view:
        layer.paint(ident.hair, lambda img, c: cv2.ellipse(
            img, _pt(head_c[0], head_c[1] - 1), _pt(head_rx * 1.05, head_ry * 1.02), 0, 0, 360, c, -1))
    elif side_view:  # the face looks right: hair covers the top and the back of the head
        layer.paint(ident.hair, lambda img, c: cv2.ellipse(
            img, _pt(head_c[0] + back, head_c[1] - 0.15 * head_ry), _pt(head_rx * 0.8, head_ry * 0.95),
            0, 0, 360, c, -1))
    else:
        layer.paint(ident.hair, lambda img, c: cv2.ellipse(
            img, _pt(head_c[0], head_c[1] - 0.2 * head_ry), _pt(head_rx * 1.05, head_ry * 0.95), 0, 180, 360, c, -1))
    return layer


def _draw_occluder(rng: np.random.Generator, img: np.ndarray) -> None:
    """Cover part of the body the way Occluded-Duke's queries are covered: cars, trees, crowds."""
    kind = rng.choice(["low", "side", "tree", "pole"])
    colour = _CLOTHES[rng.integers(len(_CLOTHES))] if rng.random() < 0.5 else _SCENE[rng.integers(len(_SCENE))]
    colour = _jitter(rng, colour, 20)
    if kind == "low":  # a car, a bin, a bench in front of the legs
        y0 = int(_CH * rng.uniform(0.45, 0.7))
        x0, x1 = int(rng.integers(-_CW // 2, _CW // 4)), int(rng.integers(_CW * 3 // 4, _CW * 3 // 2))
        cv2.rectangle(img, (x0, y0), (x1, _CH), _as_colour(colour), -1)
        cv2.rectangle(img, (x0 + 6, y0 + 6), (x1 - 6, y0 + 18), _as_colour(colour * 0.6), -1)
    elif kind == "side":  # another pedestrian or a wall edge entering the frame
        w = int(_CW * rng.uniform(0.3, 0.5))
        y0 = int(_CH * rng.uniform(0.0, 0.3))
        x0, x1 = (0, w) if rng.random() < 0.5 else (_CW - w, _CW)
        cv2.rectangle(img, (x0, y0), (x1, _CH), _as_colour(colour), -1)
        cv2.ellipse(img, ((x0 + x1) // 2, y0), (w // 2, w // 3), 0, 0, 360, _as_colour(colour * 0.8), -1)
    elif kind == "tree":
        cx, cy = int(rng.integers(0, _CW)), int(_CH * rng.uniform(0.3, 0.7))
        green = _jitter(rng, np.array([60, 120, 50.0]), 30)
        cv2.ellipse(img, (cx, cy), (int(_CW * rng.uniform(0.35, 0.55)), int(_CH * rng.uniform(0.15, 0.3))),
                    0, 0, 360, _as_colour(green), -1)
    else:
        x = int(_CW * rng.uniform(0.25, 0.75))
        w = int(_CW * rng.uniform(0.2, 0.35))
        cv2.rectangle(img, (x - w // 2, 0), (x + w // 2, _CH), _as_colour(colour), -1)


def _draw_camera_occluder(cam: _Camera, rng: np.random.Generator, img: np.ndarray) -> None:
    """The camera's own object in front of the legs, placed anew in every image (`rng`)."""
    top = int(_CH * (cam.occluder_top + rng.uniform(-0.04, 0.04)))
    x0 = int(_CW * rng.uniform(-0.5, 0.1))
    x1 = x0 + int(_CW * rng.uniform(0.9, 1.4))
    colour = np.array(cam.occluder_colour, dtype=np.float32)
    if cam.occluder_kind == "low":  # a car, a bench
        cv2.rectangle(img, (x0, top), (x1, _CH), _as_colour(colour), -1)
        cv2.rectangle(img, (x0 + 6, top + 6), (x1 - 6, top + 18), _as_colour(colour * 0.6), -1)
    elif cam.occluder_kind == "railing":
        for y in (top, top + int(0.12 * _CH)):
            cv2.line(img, (0, y), (_CW - 1, y), _as_colour(colour), 6)
        for x in range(x0 % 24, _CW, 24):
            cv2.line(img, (x, top), (x, _CH - 1), _as_colour(colour * 0.8), 4)
    else:  # a bush
        cv2.ellipse(img, ((x0 + x1) // 2, _CH), ((x1 - x0) // 2, _CH - top), 0, 180, 360, _as_colour(colour), -1)


def _render(ident: _Identity, cam: _Camera, rng: np.random.Generator,
            occluder_rng: Optional[np.random.Generator] = None,
            kinds_rng: Optional[np.random.Generator] = None) -> Tuple[np.ndarray, Tuple[float, ...]]:
    """One stored crop (RGB uint8, IMAGE_SIZE) of `ident` seen by `cam`, and the person's box
    (x0, y0, x1, y1) in stored pixels: the extent of the body's coverage (occluders aside).
    `kinds_rng` draws the per-image part of the kinds that are off by default (the view, the
    camera's occluder); it is needed when `cam` has any of them."""
    view = "back" if rng.random() < cam.back_prob else "front"
    occluded = False
    if kinds_rng is not None:  # always the same draws, whatever the strengths
        preferred, occluded = kinds_rng.random(2) < (cam.view_prob, cam.occluder_prob)
        view = cam.view if preferred else view
        occluder_place = np.random.default_rng(kinds_rng.integers(2 ** 63))
    elif cam.view_prob > 0 or cam.occluder_prob > 0:
        raise ValueError("_render: a camera with a preferred view or its own occluders needs kinds_rng")
    layer = _draw_person(ident, rng, view)
    # Person coordinates -> canvas: mirror, lean about the feet, scale, shift.
    scale = cam.scale * rng.uniform(0.9, 1.06) * cam.size
    lean = rng.normal(0, 2.5)
    feet = (_CW / 2, _CH - 6)
    m = cv2.getRotationMatrix2D(feet, float(np.clip(lean, -6, 6)), float(scale))
    m[0, 2] += rng.uniform(-8, 8)
    m[1, 2] += rng.uniform(-8, 6) + (1 - scale) * _CH * 0.1
    if rng.random() < 0.5:
        m[0] = -m[0]
        m[0, 2] += _CW - 1
    m[:, 2] += cam.shift  # after mirroring: the camera's offset keeps its side
    person = cv2.warpAffine(layer.rgb, m, (_CW, _CH), flags=cv2.INTER_LINEAR).astype(np.float32)
    alpha = cv2.warpAffine(layer.alpha, m, (_CW, _CH), flags=cv2.INTER_LINEAR).astype(np.float32)[..., None] / 255

    oy, ox = rng.integers(0, 2 * _BG_MARGIN + 1, 2)
    bg = cam.background[oy:oy + _CH, ox:ox + _CW]
    img = bg * (1 - alpha) + person  # `person` is premultiplied: it is zero outside the body
    if occluded:
        _draw_camera_occluder(cam, occluder_place, img)
    if occluder_rng is not None:
        _draw_occluder(occluder_rng, img)

    img = img * cam.light
    img = ((img - 128) * cam.contrast + 128 + cam.brightness) * cam.gains * rng.uniform(0.93, 1.07)
    if cam.gamma is not None:  # the camera's response: a curve per channel, then hue and saturation
        img = (np.clip(img / 255, 0, 1) ** cam.gamma) @ (cam.mixing.T * 255)
    if cam.blur > 0:
        img = cv2.GaussianBlur(img, (0, 0), cam.blur)
    img = cv2.resize(img, (IMAGE_SIZE[1], IMAGE_SIZE[0]), interpolation=cv2.INTER_AREA)
    if cam.resolution > 1:
        low = (max(1, round(IMAGE_SIZE[1] / cam.resolution)), max(1, round(IMAGE_SIZE[0] / cam.resolution)))
        img = cv2.resize(cv2.resize(img, low, interpolation=cv2.INTER_AREA), (IMAGE_SIZE[1], IMAGE_SIZE[0]),
                         interpolation=cv2.INTER_LINEAR)
    img = img + rng.normal(0, cam.noise, img.shape).astype(np.float32)
    rows, cols = np.nonzero(alpha[..., 0] > 0.5)
    box = (cols.min() / _SS, rows.min() / _SS, (cols.max() + 1) / _SS, (rows.max() + 1) / _SS)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), box


def _write_image(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY]):
        raise OSError(f"SyntheticReID: could not write image {path}")


# ---------------------------------------------------------------------------- split plans

def _train_plan(seed: int, pid: int, num_cameras: int, images_per_id: int) -> List[int]:
    """The 1-based camera of each training image of `pid`: at least two cameras, uneven counts."""
    rng = _rng(seed, _SEED_PLAN, pid)
    k = int(rng.integers(2, num_cameras + 1))
    cams = np.sort(rng.permutation(num_cameras)[:k]) + 1
    spread = images_per_id // 4
    n = max(k, images_per_id + int(rng.integers(-spread, spread + 1)))
    counts = 1 + rng.multinomial(n - k, rng.dirichlet(np.full(k, 2.0)))
    return [int(c) for c, m in zip(cams, counts) for _ in range(m)]


def _test_plan(seed: int, pid: int, num_cameras: int) -> Tuple[List[int], List[int]]:
    """Query cameras (one image each) and gallery cameras of test identity `pid`.

    Every query has gallery images in other cameras; about half the query cameras also
    get gallery images of their own, which the evaluation protocol must discard.
    """
    rng = _rng(seed, _SEED_PLAN, pid)
    k = int(rng.integers(2, num_cameras + 1))
    cams = rng.permutation(num_cameras)[:k] + 1
    nq = int(rng.integers(1, k))
    query = sorted(int(c) for c in cams[:nq])
    gallery = []
    for c in sorted(int(c) for c in cams[nq:]):
        gallery += [c] * int(rng.integers(2, 5))
    for c in query:
        if rng.random() < 0.5:
            gallery += [c] * int(rng.integers(1, 3))
    return query, gallery


# ----------------------------------------------------------------------------- generation

def _params(num_cameras: int, num_train_ids: int, num_test_ids: int, images_per_id: int, occluded: bool,
            seed: int, strengths: Dict[str, float]) -> Dict[str, object]:
    return dict(num_cameras=int(num_cameras), num_train_ids=int(num_train_ids), num_test_ids=int(num_test_ids),
                images_per_id=int(images_per_id), occluded=bool(occluded), seed=int(seed),
                **{key: float(value) for key, value in strengths.items()})


def _read_marker(folder: Path) -> Optional[dict]:
    try:
        return json.loads((folder / _MARKER).read_text())
    except (OSError, ValueError):
        return None


def _recorded_params(marker: Optional[dict]) -> Optional[dict]:
    """The parameters a marker records; markers written before the bias strengths existed hold
    sets made at the default strengths (same bytes)."""
    if marker is None or not isinstance(marker.get("params"), dict):
        return None
    return {**BIAS_DEFAULTS, **marker["params"]}


def _is_current(marker: Optional[dict], params: Dict[str, object], recorded: Callable = _recorded_params,
                format_version: int = _FORMAT_VERSION) -> bool:
    """Whether a set's marker records `params` and this generator's format."""
    return recorded(marker) == params and marker.get("format_version") == format_version


def _write_set(folder: Path, params: Dict[str, object]) -> Dict[str, int]:
    seed, num_cameras = params["seed"], params["num_cameras"]
    for sub in _SUBDIRS:
        (folder / sub).mkdir()
    strengths = {key: params[key] for key in BIAS_DEFAULTS}
    cameras = {c: _make_camera(seed, c, **strengths) for c in range(1, num_cameras + 1)}
    counts = dict.fromkeys(_SUBDIRS, 0)
    boxes = []

    def emit(sub: str, pid: int, ident: _Identity, cam: int, idx: int, occlude: bool) -> None:
        occluder_rng = _rng(seed, _SEED_OCCLUDER, pid, idx) if occlude else None
        img, box = _render(ident, cameras[cam], _rng(seed, _SEED_IMAGE, pid, idx), occluder_rng,
                           _rng(seed, _SEED_IMAGE_KINDS, pid, idx))
        name = f"{pid:04d}_c{cam}_{idx:06d}.jpg"
        _write_image(folder / sub / name, img)
        boxes.append((f"{sub}/{name}", *box))
        counts[sub] += 1

    num_train = params["num_train_ids"]
    for pid in range(1, num_train + 1):
        ident = _make_identity(seed, pid)
        for idx, cam in enumerate(_train_plan(seed, pid, num_cameras, params["images_per_id"])):
            emit("bounding_box_train", pid, ident, cam, idx, False)
    for pid in range(num_train + 1, num_train + params["num_test_ids"] + 1):
        ident = _make_identity(seed, pid)
        query, gallery = _test_plan(seed, pid, num_cameras)
        for idx, cam in enumerate(query):
            emit("query", pid, ident, cam, idx, params["occluded"])
        for idx, cam in enumerate(gallery, start=len(query)):
            emit("bounding_box_test", pid, ident, cam, idx, False)
    with open(folder / _BOXES, "w", newline="") as f:
        csv.writer(f).writerows([("image", "x0", "y0", "x1", "y1")] + boxes)
    return counts


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def render_once(parent: Path, name: str, params: Dict[str, object], write: Callable[[Path], Dict[str, int]],
                dataset: str, format_version: int, recorded: Callable[[Optional[dict]], Optional[dict]],
                overwrite: bool = False) -> Path:
    """Render a generated dataset into `parent / name` once and return that folder.

    `write(folder)` renders into an empty folder and returns the image counts per split. An
    existing complete folder whose marker records `params` (as `recorded(marker)` reads them) and
    `format_version` is reused unless `overwrite`. The set is written into a hidden sibling folder
    and renamed into place at the end, so an interrupted run never leaves a folder that looks
    complete, and a set another process finished meanwhile is kept, not replaced under its readers.
    """
    target = parent / name
    if target.exists() and not overwrite:
        marker = _read_marker(target)
        if recorded(marker) != params:
            raise RuntimeError(
                f"{dataset}: {target} exists but its {_MARKER} is missing or records other parameters "
                f"than {params}; delete the folder or generate with overwrite=True")
        if _is_current(marker, params, recorded, format_version):
            return target
        logger.info(f"{dataset}: {target} was made by an older generator "
                    f"(format {marker.get('format_version')}, now {format_version}); regenerating it")

    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.glob(f".{name}.*"):  # left by a killed run: .<name>.tmp<pid> or .<name>.old<pid>
        suffix = stale.name[len(name) + 2:]
        if suffix[:3] in ("tmp", "old") and suffix[3:].isdigit() and not _pid_alive(int(suffix[3:])):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = parent / f".{name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    logger.info(f"Generating {dataset} ({params}) into {target} ...")
    start = time.perf_counter()
    try:
        counts = write(tmp)
        marker = dict(dataset=dataset, format_version=format_version, params=params,
                      image_size=list(IMAGE_SIZE), counts=counts)
        (tmp / _MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        if target.exists() and not overwrite and _is_current(_read_marker(target), params, recorded, format_version):
            # Another process (another run, another training rank) finished the same set while this
            # one rendered: keep its folder, which may already be read, and drop this copy.
            shutil.rmtree(tmp, ignore_errors=True)
            return target
        if target.exists():  # overwrite, or an older format: move it aside once the new set is complete
            old = parent / f".{name}.old{os.getpid()}"
            os.rename(target, old)
            shutil.rmtree(old)
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process (e.g. another training rank) finished the same set first.
            if recorded(_read_marker(target)) != params:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info(f"Generated {dataset} in {time.perf_counter() - start:.1f}s: {counts.get('bounding_box_train', 0)} train, "
                f"{counts.get('query', 0)} query, {counts.get('bounding_box_test', 0)} gallery images in {target}")
    return target


def generate_synthetic(root: Union[str, os.PathLike] = "datasets", num_cameras: int = 6, num_train_ids: int = 200,
                       num_test_ids: int = 100, images_per_id: int = 20, occluded: bool = False, seed: int = 0,
                       overwrite: bool = False, **strengths: float) -> Path:
    """Render the synthetic set under `<root>/SyntheticReID/<name>` and return that folder.

    `strengths` (keyword arguments named as `BIAS_DEFAULTS`' keys: colour_cast, view_bias ...)
    set the camera bias; the others keep their defaults. An existing complete set with the same
    parameters is reused unless `overwrite` (`render_once`); `synthetic.json` in it records them.
    """
    strengths = _strengths(strengths)
    _check_params(num_cameras, num_train_ids, num_test_ids, images_per_id, occluded, seed, strengths)
    params = _params(num_cameras, num_train_ids, num_test_ids, images_per_id, occluded, seed, strengths)
    return render_once(Path(root) / "SyntheticReID", synthetic_dir_name(**params), params,
                       functools.partial(_write_set, params=params), "SyntheticReID", _FORMAT_VERSION,
                       _recorded_params, overwrite)


@functools.lru_cache(maxsize=8)
def _read_boxes(folder: Path) -> Dict[str, Tuple[float, float, float, float]]:
    with open(folder / _BOXES, newline="") as f:
        rows = list(csv.reader(f))[1:]
    return {row[0]: tuple(float(v) for v in row[1:]) for row in rows}


def person_box(image_path: Union[str, os.PathLike]) -> Tuple[float, float, float, float]:
    """The person's box (x0, y0, x1, y1), in pixels of the stored image, of a synthetic image.

    Read from `person_boxes.csv` of the set the image belongs to (`<set>/<split>/<name>.jpg`).
    """
    path = Path(image_path).resolve()
    folder = path.parent.parent
    if not (folder / _BOXES).is_file():
        raise FileNotFoundError(f"{image_path} is not an image of a SyntheticReID set: no {_BOXES} in {folder} "
                                "(sets made before format 3 have none: delete the set to regenerate it)")
    key = f"{path.parent.name}/{path.name}"
    boxes = _read_boxes(folder)
    if key not in boxes:
        raise KeyError(f"{_BOXES} in {folder} has no box for {key}")
    return boxes[key]


# -------------------------------------------------------------------------------- dataset

@DATASET_REGISTRY.register()
class SyntheticReID(MarketLayoutDataset):
    """Procedurally rendered pedestrians in Market-1501 layout, generated on first use.

    Keyword arguments `synthetic_*` (filled from DATASETS.SYNTHETIC.*; the bias strengths as
    `synthetic_<BIAS_DEFAULTS key>`) choose the set; the data lives in
    `<root>/SyntheticReID/<synthetic_dir_name(...)>`. Other kwargs go to fast-reid's
    `ImageDataset`, which ignores unknown ones.
    """
    dataset_dir = "SyntheticReID"
    dataset_name = "synthetic"

    def __init__(self, root: str = "datasets", synthetic_num_cameras: int = 6, synthetic_num_train_ids: int = 200,
                 synthetic_num_test_ids: int = 100, synthetic_images_per_id: int = 20,
                 synthetic_occluded: bool = False, synthetic_seed: int = 0, **kwargs) -> None:
        self.root = root
        strengths = {key: kwargs.pop(f"synthetic_{key}") for key in BIAS_DEFAULTS if f"synthetic_{key}" in kwargs}
        folder = generate_synthetic(
            root, num_cameras=synthetic_num_cameras, num_train_ids=synthetic_num_train_ids,
            num_test_ids=synthetic_num_test_ids, images_per_id=synthetic_images_per_id,
            occluded=synthetic_occluded, seed=synthetic_seed, **strengths)
        super().__init__(folder, num_cameras=synthetic_num_cameras, **kwargs)
