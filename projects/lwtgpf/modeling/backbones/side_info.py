"""Side information embedding (SIE): the camera tables shared by the backbones that have them.

A camera id of `UNKNOWN_CAMERA` (-1) stands for an image whose camera is not known (a crop from a
new video, a web image): it gets the mean of the rows it could have had, the centre of what training
added to every image. Measured against the true camera on six trained models (docs/BENCHMARKS.md,
"Unknown cameras"), the mean ties with adding no embedding (0.1 mAP better on average), beats a
random camera's row on all six and camera 0's on five, and comes within 0.4 mAP on average of
averaging the features over every camera, which costs one forward pass per camera.
"""
from typing import Optional

import torch

__all__ = ["UNKNOWN_CAMERA", "checked_ids", "sie_vectors"]

UNKNOWN_CAMERA = -1


def checked_ids(ids: torch.Tensor, size: int, what: str, key: str, allow_unknown: bool = False) -> torch.Tensor:
    """`ids` as int64, after checking that it is [B] with values in 0..size-1 (config key `key` sets
    size), or `UNKNOWN_CAMERA` when `allow_unknown`.

    The range check is a host sync; it is skipped while compiling so that compiled graphs stay whole.
    """
    if ids.dim() != 1:
        raise ValueError(f"{what} ids must be a 1-D tensor [B], got shape {tuple(ids.shape)}")
    if not torch.compiler.is_compiling() and ids.numel():
        lowest = UNKNOWN_CAMERA if allow_unknown else 0
        low, high = (int(v) for v in torch.aminmax(ids))
        if low < lowest or high >= size:
            unknown = f" or {UNKNOWN_CAMERA} for an unknown {what}" if allow_unknown else ""
            raise ValueError(f"{what} id {low if low < lowest else high} out of range: {key} is {size}, "
                             f"so ids must lie in 0..{size - 1}{unknown}")
    return ids.long()


def sie_vectors(table: torch.Tensor, cam_ids: torch.Tensor, num_cameras: int,
                view_ids: Optional[torch.Tensor] = None, num_views: int = 0) -> torch.Tensor:
    """The SIE vectors [B, D] of `cam_ids` [B] (0-based, or `UNKNOWN_CAMERA`) from a table of one
    row per camera, or per (camera, view) pair (row camera * num_views + view) with `view_ids`.

    An unknown camera gets the mean over the cameras of its view's rows."""
    cams = checked_ids(cam_ids, num_cameras, "camera", "MODEL.BACKBONE.NUM_CAMERAS", allow_unknown=True)
    grid = table.view(num_cameras, max(num_views, 1), table.shape[-1])
    if num_views:
        views = checked_ids(view_ids, num_views, "view", "MODEL.BACKBONE.NUM_VIEWS")
    else:
        views = torch.zeros_like(cams)
    known = grid[cams.clamp(min=0), views]
    return torch.where((cams >= 0)[:, None], known, grid.mean(0)[views])
