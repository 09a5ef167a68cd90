"""lwtgpf.data.transforms: grey-world balance and the white-balance jitter against their formulas, and where they run."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

import lwtgpf  # noqa: F401
from fastreid.config import get_cfg

from lwtgpf.config import add_lwtgpf_config
from lwtgpf.data.seeding import seeded_rngs
from lwtgpf.data.transforms import ChannelGain, GrayWorld, build_test_transforms, build_train_transforms


def random_image(seed: int, h: int = 12, w: int = 6) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8), mode="RGB")


def test_each_channel_is_scaled_by_its_drawn_gain():
    img = random_image(0)
    jitter = ChannelGain(0.7, prob=1.0)
    with seeded_rngs(5):
        gains = jitter.gains()
    with seeded_rngs(5):
        out = np.asarray(jitter(img))
    assert not np.allclose(gains, 1) and np.all(np.abs(np.log(gains)) <= 0.7 + 1e-6)
    pixels = np.asarray(img, dtype=np.float64)
    for c in range(3):  # the plain formula, channel by channel: round(x * g_c), clipped to 0..255
        expected = np.clip(np.floor(pixels[..., c] * float(gains[c]) + 0.5), 0, 255)
        assert np.abs(out[..., c] - expected).max() <= 1  # float32 product vs float64: at most one level
        assert np.mean(out[..., c] == expected) > 0.99


def test_gains_cover_the_range_uniformly_in_log_and_respect_the_probability():
    jitter = ChannelGain(0.5, prob=0.3)
    torch.manual_seed(0)
    draws = np.stack([jitter.gains() for _ in range(4000)])
    kept = np.all(draws == 1, axis=1)
    assert abs(kept.mean() - 0.7) < 0.03
    logs = np.log(draws[~kept])
    assert logs.min() >= -0.5 - 1e-6 and logs.max() <= 0.5 + 1e-6
    assert abs(logs.mean()) < 0.02 and abs(logs.std() - 0.5 / math.sqrt(3)) < 0.01  # uniform on [-a, a]
    img = random_image(2)
    assert np.array_equal(np.asarray(ChannelGain(0.5, prob=0.0)(img)), np.asarray(img))


def test_bad_settings_and_inputs_are_named():
    with pytest.raises(ValueError, match="MAX_LOG.*-0.1"):
        ChannelGain(-0.1)
    with pytest.raises(ValueError, match="PROB.*1.5"):
        ChannelGain(0.5, prob=1.5)
    with pytest.raises(ValueError, match="RGB.*'L'"):
        ChannelGain(0.5, prob=1.0)(Image.new("L", (4, 4)))
    with pytest.raises(ValueError, match="RGB.*'L'"):
        GrayWorld()(Image.new("L", (4, 4)))


def test_gray_world_follows_its_formula():
    pixels = np.random.default_rng(0).integers(0, 256, (10, 5, 3)).astype(np.float64)
    out = np.asarray(GrayWorld()(Image.fromarray(pixels.astype(np.uint8))), dtype=np.float64)
    mean_r, mean_g, mean_b = (float(pixels[..., c].sum()) / pixels[..., c].size for c in range(3))
    grey = (mean_r + mean_g + mean_b) / 3
    for c, mean_c in enumerate((mean_r, mean_g, mean_b)):
        expected = np.clip(np.round(pixels[..., c] * grey / mean_c), 0, 255)
        assert np.abs(out[..., c] - expected).max() <= 1
    black_blue = pixels.copy()
    black_blue[..., 2] = 0
    out = np.asarray(GrayWorld()(Image.fromarray(black_blue.astype(np.uint8))))
    assert not out[..., 2].any()  # a channel with mean 0 stays 0 (no division by zero)


def test_gray_world_leaves_one_brightness_factor_of_any_per_channel_gain():
    for seed in range(5):
        rng = np.random.default_rng(seed)
        pixels = np.rint(rng.uniform(20, 120, (16, 8, 3)))
        gains = rng.uniform(0.4, 2.0, 3)  # a strong white-balance error that clips nothing
        cast = np.rint(pixels * gains)
        plain_out = np.asarray(GrayWorld()(Image.fromarray(pixels.astype(np.uint8))), dtype=np.float64)
        cast_out = np.asarray(GrayWorld()(Image.fromarray(cast.astype(np.uint8))), dtype=np.float64)
        brightness = cast.mean() / pixels.mean()  # what is left: the change of the mean grey level
        assert np.abs(cast_out - brightness * plain_out).max() <= 2.5
        assert np.abs(cast / brightness - pixels).max() > 20  # the cast itself was far from a brightness change


def test_config_puts_the_jitter_first_in_training_only():
    cfg = get_cfg()
    add_lwtgpf_config(cfg)
    cfg.merge_from_list(["INPUT.SIZE_TRAIN", "[32,16]"])
    assert not any(isinstance(t, ChannelGain) for t in build_train_transforms(cfg).transforms)  # off by default
    cfg.merge_from_list(["INPUT.CHANNEL_GAIN.ENABLED", "True", "INPUT.CHANNEL_GAIN.MAX_LOG", "0.3",
                         "INPUT.CHANNEL_GAIN.PROB", "0.8"])
    first = build_train_transforms(cfg).transforms[0]
    assert isinstance(first, ChannelGain) and (first.max_log_gain, first.prob) == (0.3, 0.8)
    with seeded_rngs(3):
        a = build_train_transforms(cfg)(random_image(4, 32, 16))
    with seeded_rngs(3):
        b = build_train_transforms(cfg)(random_image(4, 32, 16))
    assert torch.equal(a, b)  # a function of the sample's seed, as every other augmentation
    assert not any(isinstance(t, ChannelGain) for t in build_test_transforms(cfg).transforms)  # training only


def test_gray_world_runs_in_training_and_at_test_time():
    cfg = get_cfg()
    add_lwtgpf_config(cfg)
    cfg.merge_from_list(["INPUT.SIZE_TRAIN", "[32,16]", "INPUT.SIZE_TEST", "[32,16]"])
    assert not any(isinstance(t, GrayWorld) for t in build_test_transforms(cfg).transforms)  # off by default
    cfg.merge_from_list(["INPUT.GRAY_WORLD", "True", "INPUT.CHANNEL_GAIN.ENABLED", "True"])
    train, test = build_train_transforms(cfg).transforms, build_test_transforms(cfg).transforms
    assert isinstance(train[0], GrayWorld) and isinstance(train[1], ChannelGain)  # balance, then jitter
    assert isinstance(test[0], GrayWorld) and not any(isinstance(t, ChannelGain) for t in test)
    img = random_image(6, 32, 16)
    balanced = build_test_transforms(cfg)(img)
    cfg.merge_from_list(["INPUT.GRAY_WORLD", "False"])
    assert torch.equal(balanced, build_test_transforms(cfg)(GrayWorld()(img)))
