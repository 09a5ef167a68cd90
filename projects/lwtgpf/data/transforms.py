"""Image transforms LWTGPF adds to fast-reid's (additions beyond the original code).

`RandomChannelGain` is a random white balance: every colour channel of a training image is
multiplied by its own gain, so that the model cannot tell a camera by its colour cast and the
images of one pseudo-identity in several casts are pulled to one proxy.
"""
import math

import numpy as np
import torch
import torchvision.transforms as T
from fastreid.config import CfgNode
from fastreid.data.transforms import build_transforms as build_fastreid_transforms
from PIL import Image

__all__ = ["RandomChannelGain", "build_transforms"]


class RandomChannelGain:
    """With probability `prob`, multiply each channel of an RGB PIL image by a gain drawn
    log-uniformly from [1 / max_gain, max_gain], independently per channel; values are rounded
    and clipped to 0-255. Draws come from torch's generator (seeded per loader worker)."""

    def __init__(self, max_gain: float, prob: float):
        if not (math.isfinite(max_gain) and max_gain >= 1):
            raise ValueError(f"INPUT.CHANNEL_GAIN.MAX_GAIN must be a number >= 1, got {max_gain!r}")
        if not 0 <= prob <= 1:
            raise ValueError(f"INPUT.CHANNEL_GAIN.PROB must lie in [0, 1], got {prob!r}")
        self.log_gain = math.log(max_gain)
        self.prob = prob

    def __call__(self, img: Image.Image) -> Image.Image:
        if torch.rand(()).item() >= self.prob:
            return img
        gains = torch.empty(3, dtype=torch.float64).uniform_(-self.log_gain, self.log_gain).exp().numpy()
        rgb = np.asarray(img.convert("RGB"), dtype=np.float64) * gains
        return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_gain={math.exp(self.log_gain):g}, prob={self.prob:g})"


def build_transforms(cfg: CfgNode, is_train: bool = True) -> T.Compose:
    """fast-reid's transforms, preceded in training by `RandomChannelGain` when
    INPUT.CHANNEL_GAIN.ENABLED (evaluation images are never changed)."""
    transforms = build_fastreid_transforms(cfg, is_train=is_train)
    gain = cfg.INPUT.CHANNEL_GAIN
    if is_train and gain.ENABLED:
        transforms = T.Compose([RandomChannelGain(gain.MAX_GAIN, gain.PROB), *transforms.transforms])
    return transforms
