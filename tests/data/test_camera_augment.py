"""lwtgpf.data.camera_augment: each camera-like step against a plain version written from its
docstring, on fresh random images, and how INPUT.CAMERA_AUG builds them."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

import lwtgpf  # noqa: F401
from fastreid.config import get_cfg

from lwtgpf.config import add_lwtgpf_config
from lwtgpf.data.camera_augment import (ChannelGamma, RandomLowResolution, RandomOccluder, RandomZoom,
                                        camera_augmentations)
from lwtgpf.data.seeding import seeded_rngs
from lwtgpf.data.transforms import build_test_transforms, build_train_transforms


def random_image(seed: int, h: int = 24, w: int = 12) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8), mode="RGB")


def smooth_image(seed: int, h: int = 40, w: int = 20) -> Image.Image:
    """Random low-frequency content, so that bilinear sampling is compared where it is well defined."""
    small = np.random.default_rng(seed).uniform(0, 255, (h // 4, w // 4, 3))
    return Image.fromarray(small.astype(np.uint8), mode="RGB").resize((w, h), Image.Resampling.BILINEAR)


def plain_bilinear(pixels: np.ndarray, x: float, y: float) -> np.ndarray:
    """The value at continuous position (x, y), pixel centres at integer + 0.5."""
    x, y = x - 0.5, y - 0.5
    x0, y0 = math.floor(x), math.floor(y)
    fx, fy = x - x0, y - y0
    return ((1 - fx) * (1 - fy) * pixels[y0, x0] + fx * (1 - fy) * pixels[y0, x0 + 1]
            + (1 - fx) * fy * pixels[y0 + 1, x0] + fx * fy * pixels[y0 + 1, x0 + 1])


@pytest.mark.parametrize("seed", range(4))
def test_zoom_samples_the_scaled_shifted_image(seed):
    img = smooth_image(seed)
    zoom = RandomZoom(1.5, 0.15, prob=1.0)
    with seeded_rngs(100 + seed):
        out = np.asarray(zoom(img), dtype=np.float64)
    with seeded_rngs(100 + seed):
        assert torch.rand(()).item() < 1  # the step's own draw of whether to apply
        scale, dx, dy = zoom.draw()
    assert 1 / 1.5 <= scale <= 1.5 and abs(dx) <= 0.15 and abs(dy) <= 0.15
    pixels = np.asarray(img, dtype=np.float64)
    w, h = img.size
    fill = pixels.reshape(-1, 3).mean(0)
    compared = 0
    for y in range(h):
        for x in range(w):
            # output position p shows the input at (p - centre - shift) / scale + centre
            u = (x + 0.5 - w / 2 - dx * w) / scale + w / 2
            v = (y + 0.5 - h / 2 - dy * h) / scale + h / 2
            if 1 <= u <= w - 1 and 1 <= v <= h - 1:
                assert np.abs(out[y, x] - plain_bilinear(pixels, u, v)).max() <= 1.0
                compared += 1
            elif not (-1 <= u <= w + 1 and -1 <= v <= h + 1):
                assert np.abs(out[y, x] - fill).max() <= 1.0  # uncovered: the image's mean colour
    assert compared > w * h / 4


def test_low_resolution_keeps_the_size_and_removes_fine_detail():
    img = random_image(1, 48, 24)  # white noise: all of its variation is fine detail
    step = RandomLowResolution(4.0, prob=1.0)
    out = [np.asarray(step(img), dtype=np.float64) for _ in range(5)]
    assert all(o.shape == (48, 24, 3) for o in out)
    assert max(o.std() for o in out) < np.asarray(img, dtype=np.float64).std()
    flat = Image.new("RGB", (24, 48), (30, 140, 200))
    assert np.array_equal(np.asarray(step(flat)), np.asarray(flat))


def test_low_resolution_factor_is_drawn_in_its_range():
    img = random_image(2, 60, 30)
    step = RandomLowResolution(3.0, prob=1.0)
    for seed in range(10):
        with seeded_rngs(seed):
            out = step(img)
        with seeded_rngs(seed):
            torch.rand(())
            factor = float(torch.empty(()).uniform_(1.0, 3.0))
        small = (max(1, round(30 / factor)), max(1, round(60 / factor)))
        plain = img.resize(small, Image.Resampling.BILINEAR).resize((30, 60), Image.Resampling.BILINEAR)
        assert np.array_equal(np.asarray(out), np.asarray(plain if small != (30, 60) else img))


@pytest.mark.parametrize("seed", range(3))
def test_each_channel_takes_its_drawn_gamma(seed):
    img = random_image(10 + seed)
    step = ChannelGamma(0.6, prob=1.0)
    with seeded_rngs(seed):
        out = np.asarray(step(img), dtype=np.float64)
    with seeded_rngs(seed):
        torch.rand(())
        gammas = torch.empty(3).uniform_(-0.6, 0.6).exp().tolist()
    pixels = np.asarray(img, dtype=np.float64)
    for c in range(3):
        plain = [round(255 * (value / 255) ** gammas[c]) for value in pixels[..., c].ravel()]
        assert np.abs(out[..., c].ravel() - plain).max() <= 1  # float rounding at .5 only
    assert len(set(np.round(gammas, 6))) == 3


def test_occluder_is_one_coloured_box_on_the_bottom_edge():
    img = random_image(20, 40, 20)
    step = RandomOccluder(0.5, prob=1.0)
    pixels = np.asarray(img)
    for seed in range(20):
        with seeded_rngs(seed):
            out = np.asarray(step(img))
        changed = np.any(out != pixels, axis=2)
        rows, cols = np.nonzero(changed)
        top, left, right = rows.min(), cols.min(), cols.max() + 1
        assert rows.max() == 39 and 10 - 1 <= 40 - top <= 20  # height in [max/2, max] of 40 rows
        assert 0.3 * 20 - 1 <= right - left <= 20
        box = out[top:, left:right].reshape(-1, 3)
        assert (box == box[0]).all()  # one colour
        assert np.array_equal(out[:top], pixels[:top])  # nothing above it changes
        assert np.array_equal(out[:, :left], pixels[:, :left]) and np.array_equal(out[:, right:], pixels[:, right:])


def test_prob_zero_changes_nothing_and_prob_is_a_share():
    img = random_image(30)
    for step in (RandomZoom(1.3, 0.1, 0.0), RandomLowResolution(3.0, 0.0), ChannelGamma(0.4, 0.0),
                 RandomOccluder(0.5, 0.0)):
        assert step(img) is img
    step = ChannelGamma(0.4, prob=0.3)
    with seeded_rngs(0):
        changed = sum(step(img) is not img for _ in range(400))
    assert 80 <= changed <= 160  # 120 expected


@pytest.mark.parametrize("make, message", [
    (lambda: RandomZoom(0.9, 0.1), "MAX_SCALE"), (lambda: RandomZoom(1.2, -0.1), "MAX_SHIFT"),
    (lambda: RandomLowResolution(0.5), "MAX_DOWNSCALE"), (lambda: ChannelGamma(float("nan")), "MAX_LOG_GAMMA"),
    (lambda: RandomOccluder(1.5), "OCCLUDER_HEIGHT"), (lambda: ChannelGamma(0.4, prob=2.0), "PROB")])
def test_bad_strengths_name_their_key(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_grey_images_are_refused_with_the_step_named():
    with pytest.raises(ValueError, match="RandomZoom expects an RGB image"):
        RandomZoom(1.3, 0.1)(Image.new("L", (4, 8)))


def test_config_builds_the_steps_in_camera_order_for_training_only():
    cfg = get_cfg()
    add_lwtgpf_config(cfg)
    cfg.merge_from_list(["INPUT.SIZE_TRAIN", "[32,16]", "INPUT.SIZE_TEST", "[32,16]"])
    assert camera_augmentations(cfg) == []  # off by default
    cfg.merge_from_list(["INPUT.CAMERA_AUG.ENABLED", "True", "INPUT.CAMERA_AUG.PROB", "0.7"])
    steps = camera_augmentations(cfg)
    assert [type(s) for s in steps] == [RandomZoom, RandomLowResolution, ChannelGamma, RandomOccluder]
    assert all(s.prob == 0.7 for s in steps)
    assert [type(t) for t in build_train_transforms(cfg).transforms[:4]] == [type(s) for s in steps]
    assert not any(isinstance(t, RandomZoom) for t in build_test_transforms(cfg).transforms)
    cfg.merge_from_list(["INPUT.CAMERA_AUG.MAX_SCALE", "1.0", "INPUT.CAMERA_AUG.MAX_SHIFT", "0.0",
                         "INPUT.CAMERA_AUG.OCCLUDER_HEIGHT", "0.0"])
    assert [type(s) for s in camera_augmentations(cfg)] == [RandomLowResolution, ChannelGamma]  # neutral ones left out
    with seeded_rngs(5):
        a = build_train_transforms(cfg)(random_image(6, 32, 16))
    with seeded_rngs(5):
        b = build_train_transforms(cfg)(random_image(6, 32, 16))
    assert torch.equal(a, b)  # a function of the sample's seed
    cfg.merge_from_list(["INPUT.CAMERA_AUG.MAX_DOWNSCALE", "0.5"])
    with pytest.raises(ValueError, match="INPUT.CAMERA_AUG.MAX_DOWNSCALE must be a finite number >= 1, got 0.5"):
        camera_augmentations(cfg)
