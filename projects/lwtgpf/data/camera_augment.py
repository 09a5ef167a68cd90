"""Training augmentations that mimic how cameras differ beyond white balance (INPUT.CAMERA_AUG).

Two cameras see one person at another scale and position in the crop, at another resolution,
through another colour response and behind other objects. Each step below draws one such
difference at random, so that the features learn to ignore it; none uses identity labels. Hue and
saturation come from fast-reid's colour jitter (INPUT.CJ). An addition beyond the original code
(docs/METHOD.md section 9).

Every step draws from torch's global generator, so the loaders' per-sample seeding fixes it.
"""
import math
from typing import List, Tuple

import numpy as np
import torch
from fastreid.config import CfgNode
from PIL import Image, ImageStat

__all__ = ["ChannelGamma", "RandomLowResolution", "RandomOccluder", "RandomZoom", "camera_augmentations"]


def _uniform(low: float, high: float) -> float:
    return float(torch.empty(()).uniform_(low, high))


def _check_rgb(step: object, img: Image.Image) -> None:
    if img.mode != "RGB":
        raise ValueError(f"{type(step).__name__} expects an RGB image, got mode {img.mode!r}")


class _RandomStep:
    """A step applied to a share ``prob`` of the images; ``neutral`` when it would change none."""

    def __init__(self, prob: float):
        if not 0 <= prob <= 1:
            raise ValueError(f"INPUT.CAMERA_AUG.PROB must lie in [0, 1], got {prob}")
        self.prob = float(prob)

    def __call__(self, img: Image.Image) -> Image.Image:
        _check_rgb(self, img)
        if torch.rand(()).item() >= self.prob:
            return img
        return self.apply(img)

    @property
    def neutral(self) -> bool:
        raise NotImplementedError

    def apply(self, img: Image.Image) -> Image.Image:
        raise NotImplementedError


def _positive(key: str, value: float, floor: float) -> float:
    if not (math.isfinite(value) and value >= floor):
        raise ValueError(f"INPUT.CAMERA_AUG.{key} must be a finite number >= {floor:g}, got {value}")
    return float(value)


class RandomZoom(_RandomStep):
    """Scale the image about its centre by ``s = exp(u)``, ``u`` uniform in
    [-log max_scale, log max_scale], and shift it by up to ``max_shift`` of its width and height;
    uncovered pixels take the image's mean colour."""

    def __init__(self, max_scale: float, max_shift: float, prob: float = 0.5):
        super().__init__(prob)
        self.max_scale = _positive("MAX_SCALE", max_scale, 1.0)
        self.max_shift = _positive("MAX_SHIFT", max_shift, 0.0)

    @property
    def neutral(self) -> bool:
        return self.max_scale == 1 and self.max_shift == 0

    def draw(self) -> Tuple[float, float, float]:
        """Scale, horizontal shift and vertical shift (shares of the width and height)."""
        bound = math.log(self.max_scale)
        return (math.exp(_uniform(-bound, bound)), _uniform(-self.max_shift, self.max_shift),
                _uniform(-self.max_shift, self.max_shift))

    def apply(self, img: Image.Image) -> Image.Image:
        scale, dx, dy = self.draw()
        width, height = img.size
        cx, cy = width / 2, height / 2
        # PIL maps each output pixel p to the input pixel (p - centre - shift) / scale + centre
        inverse = (1 / scale, 0.0, cx - (cx + dx * width) / scale, 0.0, 1 / scale, cy - (cy + dy * height) / scale)
        fill = tuple(int(round(m)) for m in ImageStat.Stat(img).mean)
        return img.transform(img.size, Image.Transform.AFFINE, inverse, Image.Resampling.BILINEAR, fillcolor=fill)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_scale={self.max_scale}, max_shift={self.max_shift}, prob={self.prob})"


class RandomLowResolution(_RandomStep):
    """Downsample by a factor drawn uniformly from [1, max_factor], then upsample back to the
    image's size (both bilinear): the detail of a camera farther away or of a lower resolution."""

    def __init__(self, max_factor: float, prob: float = 0.5):
        super().__init__(prob)
        self.max_factor = _positive("MAX_DOWNSCALE", max_factor, 1.0)

    @property
    def neutral(self) -> bool:
        return self.max_factor == 1

    def apply(self, img: Image.Image) -> Image.Image:
        factor = _uniform(1.0, self.max_factor)
        width, height = img.size
        small = (max(1, round(width / factor)), max(1, round(height / factor)))
        if small == img.size:
            return img
        return img.resize(small, Image.Resampling.BILINEAR).resize(img.size, Image.Resampling.BILINEAR)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_factor={self.max_factor}, prob={self.prob})"


class ChannelGamma(_RandomStep):
    """Raise each colour channel to its own gamma, ``255 (x / 255) ** exp(u_c)`` with ``u_c``
    uniform in [-max_log, max_log]: a colour response that no per-channel gain undoes."""

    def __init__(self, max_log: float, prob: float = 0.5):
        super().__init__(prob)
        self.max_log = _positive("MAX_LOG_GAMMA", max_log, 0.0)

    @property
    def neutral(self) -> bool:
        return self.max_log == 0

    def apply(self, img: Image.Image) -> Image.Image:
        gammas = torch.empty(3).uniform_(-self.max_log, self.max_log).exp().numpy()
        levels = np.arange(256, dtype=np.float64)[:, None] / 255
        table = np.rint(255 * levels ** gammas).astype(np.uint8)  # one lookup table per channel
        return img.point(table.T.ravel().tolist())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_log={self.max_log}, prob={self.prob})"


class RandomOccluder(_RandomStep):
    """Hide the bottom of the image behind a box of one random colour: a share of the height drawn
    uniformly from [max_height / 2, max_height], a share of the width from [0.3, 1], anywhere
    along the bottom edge, as a bench, a car or a railing hides a pedestrian's legs."""

    def __init__(self, max_height: float, prob: float = 0.5):
        super().__init__(prob)
        self.max_height = _positive("OCCLUDER_HEIGHT", max_height, 0.0)
        if self.max_height > 1:
            raise ValueError(f"INPUT.CAMERA_AUG.OCCLUDER_HEIGHT must lie in [0, 1], got {max_height}")

    @property
    def neutral(self) -> bool:
        return self.max_height == 0

    def box(self, width: int, height: int) -> Tuple[int, int, int, int]:
        """Left, top, right, bottom of the next occluder in pixels."""
        box_height = round(_uniform(self.max_height / 2, self.max_height) * height)
        box_width = max(1, round(_uniform(0.3, 1.0) * width))
        left = int(torch.randint(0, width - box_width + 1, ()).item())
        return left, height - box_height, left + box_width, height

    def apply(self, img: Image.Image) -> Image.Image:
        left, top, right, bottom = self.box(*img.size)
        colour = tuple(int(c) for c in torch.randint(0, 256, (3,)))
        out = img.copy()
        out.paste(colour, (left, top, right, bottom))
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_height={self.max_height}, prob={self.prob})"


def camera_augmentations(cfg: CfgNode) -> List[_RandomStep]:
    """The steps that INPUT.CAMERA_AUG turns on, in the order a camera applies them: framing,
    resolution, colour response, then what stands in front of the person. A step whose strength is
    neutral (MAX_SCALE 1 and MAX_SHIFT 0, MAX_DOWNSCALE 1, MAX_LOG_GAMMA 0, OCCLUDER_HEIGHT 0) is left out."""
    aug = cfg.INPUT.CAMERA_AUG
    if not aug.ENABLED:
        return []
    steps = [RandomZoom(aug.MAX_SCALE, aug.MAX_SHIFT, aug.PROB), RandomLowResolution(aug.MAX_DOWNSCALE, aug.PROB),
             ChannelGamma(aug.MAX_LOG_GAMMA, aug.PROB), RandomOccluder(aug.OCCLUDER_HEIGHT, aug.PROB)]
    return [step for step in steps if not step.neutral]
