"""Transforms: fast-reid's, optionally preceded by colour steps against camera white balance.

A camera's white balance scales each colour channel of the whole image by its own gain; images
of one person under two cameras then differ by a per-channel factor that has nothing to do with
the person. Two answers, each a config key and an addition beyond the original code
(docs/METHOD.md section 9): ``GrayWorld`` divides the factors out of every image up to one
brightness factor, in training and at test time alike; ``ChannelGain`` draws such factors at
random during training, so that the features learn to ignore them.
"""
import math

import numpy as np
import torch
from fastreid.config import CfgNode
from fastreid.data.transforms import build_transforms
from PIL import Image
from torchvision import transforms as T

__all__ = ["ChannelGain", "GrayWorld", "build_test_transforms", "build_train_transforms"]


class ChannelGain:
    """With probability ``prob``, multiply the R, G and B channels of an image by ``exp(u_c)``,
    ``u_c`` drawn uniformly from [-max_log_gain, max_log_gain] per channel, clipped to [0, 255].

    Draws from torch's global generator, so the loaders' per-sample seeding fixes it."""

    def __init__(self, max_log_gain: float, prob: float = 0.5):
        if not (math.isfinite(max_log_gain) and max_log_gain >= 0):
            raise ValueError(f"INPUT.CHANNEL_GAIN.MAX_LOG must be a finite number >= 0, got {max_log_gain}")
        if not 0 <= prob <= 1:
            raise ValueError(f"INPUT.CHANNEL_GAIN.PROB must lie in [0, 1], got {prob}")
        self.max_log_gain = float(max_log_gain)
        self.prob = float(prob)

    def gains(self) -> np.ndarray:
        """The next three gains (ones when the jitter is skipped)."""
        if torch.rand(()).item() >= self.prob:
            return np.ones(3, dtype=np.float32)
        return torch.empty(3).uniform_(-self.max_log_gain, self.max_log_gain).exp().numpy()

    def __call__(self, img: Image.Image) -> Image.Image:
        if img.mode != "RGB":
            raise ValueError(f"ChannelGain expects an RGB image, got mode {img.mode!r}")
        gains = self.gains()
        if np.all(gains == 1):
            return img
        scaled = np.asarray(img, dtype=np.float32) * gains
        return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="RGB")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_log_gain={self.max_log_gain}, prob={self.prob})"


class GrayWorld:
    """Grey-world white balance: scale each channel of an image so that its mean becomes the mean
    of the three channel means, ``x_c * (m / m_c)``, rounded and clipped to [0, 255].

    An image whose channels were multiplied by any positive gains (with no clipping) comes out as
    the image without them times one brightness factor, up to rounding: the colour of the cast is
    removed, the exposure is not. A channel with mean 0 is left as it is."""

    def __call__(self, img: Image.Image) -> Image.Image:
        if img.mode != "RGB":
            raise ValueError(f"GrayWorld expects an RGB image, got mode {img.mode!r}")
        pixels = np.asarray(img, dtype=np.float64)
        means = pixels.reshape(-1, 3).mean(0)
        scale = np.divide(means.mean(), means, out=np.ones(3), where=means > 0)
        return Image.fromarray(np.clip(np.rint(pixels * scale), 0, 255).astype(np.uint8), mode="RGB")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _colour_steps(cfg: CfgNode, is_train: bool) -> list:
    steps = [GrayWorld()] if cfg.INPUT.GRAY_WORLD else []
    if is_train and cfg.INPUT.CHANNEL_GAIN.ENABLED:
        steps.append(ChannelGain(cfg.INPUT.CHANNEL_GAIN.MAX_LOG, cfg.INPUT.CHANNEL_GAIN.PROB))
    return steps


def build_train_transforms(cfg: CfgNode) -> T.Compose:
    """fast-reid's training transforms, preceded by ``GrayWorld`` (INPUT.GRAY_WORLD) and
    ``ChannelGain`` (INPUT.CHANNEL_GAIN.ENABLED) when they are on."""
    return T.Compose(_colour_steps(cfg, True) + build_transforms(cfg, is_train=True).transforms)


def build_test_transforms(cfg: CfgNode) -> T.Compose:
    """fast-reid's test transforms, preceded by ``GrayWorld`` when INPUT.GRAY_WORLD is on."""
    return T.Compose(_colour_steps(cfg, False) + build_transforms(cfg, is_train=False).transforms)
