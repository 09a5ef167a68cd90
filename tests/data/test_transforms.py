"""lwtgpf.data.transforms: the random white balance and where it sits in the pipelines."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

import lwtgpf  # noqa: F401
from fastreid.config import get_cfg

from lwtgpf.config import add_lwtgpf_config
from lwtgpf.data.transforms import RandomChannelGain, build_transforms


def image(seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(40, 120, (16, 8, 3), dtype=np.uint8))


def test_gains_are_per_channel_and_log_uniform():
    img = image()
    src = np.asarray(img, np.float64)
    torch.manual_seed(0)
    ratios = []
    for _ in range(400):
        out = np.asarray(RandomChannelGain(max_gain=2.0, prob=1.0)(img), np.float64)
        ratio = out.sum((0, 1)) / src.sum((0, 1))  # one gain per channel (up to rounding)
        assert np.allclose(out, np.clip(np.rint(src * ratio), 0, 255), atol=1.0)
        ratios.append(ratio)
    logs = np.log(np.array(ratios))
    assert logs.min() > -math.log(2) - 0.01 and logs.max() < math.log(2) + 0.01
    assert abs(logs.mean()) < 0.06 and abs(logs.std() - math.log(2) / math.sqrt(3)) < 0.05  # uniform in log
    assert np.corrcoef(logs.T)[0, 1] ** 2 < 0.05  # channels drawn independently


def test_probability_and_seeding():
    img = image(1)
    torch.manual_seed(3)
    kept = sum(np.array_equal(np.asarray(RandomChannelGain(1.5, 0.3)(img)), np.asarray(img)) for _ in range(500))
    assert 300 < kept < 400
    torch.manual_seed(7)
    a = np.asarray(RandomChannelGain(1.5, 1.0)(img))
    torch.manual_seed(7)
    assert np.array_equal(a, np.asarray(RandomChannelGain(1.5, 1.0)(img)))


@pytest.mark.parametrize("key,value", [("MAX_GAIN", 0.5), ("PROB", 1.5)])
def test_bad_settings_name_the_key(key, value):
    with pytest.raises(ValueError, match=f"INPUT.CHANNEL_GAIN.{key}"):
        RandomChannelGain(**{"max_gain": 2.0, "prob": 0.5, key.lower(): value})


def test_only_training_pipelines_change():
    cfg = get_cfg()
    add_lwtgpf_config(cfg)
    off = [type(t).__name__ for t in build_transforms(cfg, is_train=True).transforms]
    assert "RandomChannelGain" not in off
    cfg.merge_from_list(["INPUT.CHANNEL_GAIN.ENABLED", "True"])
    on = build_transforms(cfg, is_train=True).transforms
    assert isinstance(on[0], RandomChannelGain) and [type(t).__name__ for t in on[1:]] == off
    test = [type(t).__name__ for t in build_transforms(cfg, is_train=False).transforms]
    assert "RandomChannelGain" not in test
