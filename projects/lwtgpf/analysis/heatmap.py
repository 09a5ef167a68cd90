"""Heat maps of a model's retrieval feature (attention rollout or a CAM method), as pictures, and
the share of heat inside a box."""
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from fastreid.config import CfgNode
from torch import nn

from ..modeling.backbones.lewinvit import LewinBlock
from .cam import CAM_METHODS, class_activation_maps
from .rollout import attention_rollout

__all__ = ["HEATMAP_METHODS", "heat_maps", "heat_share_in_box", "heatmap_method", "heatmap_panels", "overlay",
           "side_by_side"]

HEATMAP_METHODS = ("rollout",) + tuple(CAM_METHODS)


def heatmap_method(cfg: CfgNode, model: nn.Module) -> str:
    """ANALYSIS.HEATMAP_METHOD, with `auto` resolved: rollout for a window-attention model, else gradcam."""
    method = cfg.ANALYSIS.HEATMAP_METHOD
    if method == "auto":
        return "rollout" if any(isinstance(m, LewinBlock) for m in model.modules()) else "gradcam"
    if method not in HEATMAP_METHODS:
        raise ValueError(f"ANALYSIS.HEATMAP_METHOD is {method!r}; expected auto or one of {HEATMAP_METHODS}")
    return method


def heat_maps(cfg: CfgNode, model: nn.Module, batched_inputs: dict, method: str,
              reference: Optional[Dict[str, torch.Tensor]] = None) -> np.ndarray:
    """Heat [B, H, W] in [0, 1] at the model's input size for an eval-mode model (ANALYSIS.* settings).

    `reference` (CAM methods only): the batch whose features are the similarity targets.
    """
    if method == "rollout":
        if reference is not None:
            raise ValueError("attention rollout explains the image's own feature; --pair needs a CAM method")
        rollout = cfg.ANALYSIS.ROLLOUT
        device = next(model.parameters()).device
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batched_inputs.items()}
        return attention_rollout(model, batch, rollout.HEAD_FUSION, rollout.DISCARD_RATIO).cpu().numpy()
    return class_activation_maps(model, batched_inputs, method, cfg.ANALYSIS.CAM_LAYER, reference)


def heatmap_panels(heats: np.ndarray, originals: Sequence[np.ndarray],
                   extra: Optional[np.ndarray] = None) -> List[np.ndarray]:
    """One picture per image: the image and its heat overlaid, side by side, at the image's own
    size (the heat resized to it), then `extra` (e.g. the pair image) if given."""
    panels = []
    for heat, image in zip(heats, originals):
        heat = cv2.resize(heat, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
        row = [image, overlay(image, heat)]
        if extra is not None:
            row.append(cv2.resize(extra, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_AREA))
        panels.append(side_by_side(row))
    return panels


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """RGB uint8 image [H, W, 3] blended with a heat map [H, W] in [0, 1] (jet colours)."""
    if heat.shape != image.shape[:2]:
        raise ValueError(f"heat map {heat.shape} and image {image.shape[:2]} differ in size")
    colours = cv2.applyColorMap(np.uint8(np.clip(heat, 0, 1) * 255), cv2.COLORMAP_JET)[..., ::-1]
    return np.uint8(np.clip((1 - alpha) * image.astype(np.float32) + alpha * colours, 0, 255))


def side_by_side(images: Sequence[np.ndarray], gap: int = 4, scale: int = 1,
                 title: Optional[str] = None) -> np.ndarray:
    """RGB images of one height in a row on white, each enlarged `scale` times, with an optional title."""
    heights = {img.shape[0] for img in images}
    if len(heights) != 1:
        raise ValueError(f"side_by_side needs images of one height, got {sorted(heights)}")
    tiles = [cv2.resize(img, (img.shape[1] * scale, img.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
             for img in images]
    height = tiles[0].shape[0]
    top = 18 if title else 0
    width = sum(t.shape[1] for t in tiles) + gap * (len(tiles) + 1)
    canvas = np.full((height + 2 * gap + top, width, 3), 255, np.uint8)
    x = gap
    for tile in tiles:
        canvas[top + gap:top + gap + height, x:x + tile.shape[1]] = tile
        x += tile.shape[1] + gap
    if title:
        cv2.putText(canvas, title, (gap, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def heat_share_in_box(heat: np.ndarray, box: Tuple[float, float, float, float]) -> float:
    """Share of a non-negative heat map's total inside box (x0, y0, x1, y1) in pixels, pixels
    partly covered counting by the covered fraction."""
    x0, y0, x1, y1 = box
    height, width = heat.shape

    def coverage(low: float, high: float, size: int) -> np.ndarray:
        edges = np.arange(size, dtype=np.float64)
        return np.clip(np.minimum(edges + 1, high) - np.maximum(edges, low), 0, 1)

    weights = np.outer(coverage(y0, y1, height), coverage(x0, x1, width))
    total = float(heat.sum())
    if total <= 0:
        raise ValueError("heat map sums to zero: no share can be taken")
    return float((heat * weights).sum() / total)
