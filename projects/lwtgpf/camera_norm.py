"""Camera-aware feature normalisation before clustering (an addition beyond the original code).

Each camera shifts the colours and the scenery of all its images, and early in training that
shift dominates the features: every image's nearest neighbours come from its own camera, so
the clusters never join cameras and the camera-aware proxies have nothing to align. Centring
the features of every camera on that camera's mean (optionally also scaling every dimension
to unit spread within the camera) removes what all images of a camera share before the
k-reciprocal search. It is the idea of camera-based batch normalisation (CBN, Zhuang et al.,
ECCV 2020: normalise with each camera's own statistics) applied to the features that feed the
clustering. Only the pseudo labels see the normalised features; the proxy memory keeps the
model's own features. Camera ids are known without labels; no identity label is used.
"""
from typing import Union

import numpy as np
import torch

__all__ = ["CAMERA_NORM_MODES", "check_camera_norm", "camera_normalise"]

ArrayLike = Union[np.ndarray, torch.Tensor]

CAMERA_NORM_MODES = ("none", "center", "standardize")

# Floor on a dimension's within-camera standard deviation, relative to the camera's average
# one: a dimension that is constant in one camera must not be blown up.
_STD_FLOOR = 1e-3


def check_camera_norm(mode: str) -> str:
    """`mode` if it is a known camera normalisation, else a ValueError naming the config key."""
    if mode not in CAMERA_NORM_MODES:
        raise ValueError(f"camera normalisation must be one of {CAMERA_NORM_MODES} (config key "
                         f"CLUSTER.CAMERA_NORM), got {mode!r}")
    return mode


def camera_normalise(features: ArrayLike, cams: ArrayLike, mode: str = "none") -> ArrayLike:
    """Features [N, D] with what every camera shares removed; `cams` [N] camera ids.

    - "none": `features` itself, untouched (the published method);
    - "center": each row minus the mean of its camera's rows;
    - "standardize": centred, then every dimension divided by its standard deviation within the
      camera (floored at 1e-3 of the camera's average one).

    Computed in float64 camera by camera, on the device of `features`, with fixed-order reductions
    (every process of a distributed run gets the same result); returned as float32, a tensor on
    that device for a tensor, else a NumPy array. The rows are L2-normalised afterwards by the
    clustering, as before. A camera with a single image would become a zero row under centring;
    it is left as it was instead.
    """
    if check_camera_norm(mode) == "none":
        return features
    x = features.detach() if isinstance(features, torch.Tensor) else torch.from_numpy(np.asarray(features))
    cam_ids = torch.as_tensor(np.asarray(cams.cpu() if isinstance(cams, torch.Tensor) else cams))
    if x.ndim != 2 or tuple(cam_ids.shape) != (x.shape[0],):
        raise ValueError(f"features must be [N, D] and cams [N], got shapes {tuple(x.shape)} and "
                         f"{tuple(cam_ids.shape)}")
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    for cam in torch.unique(cam_ids):
        rows = torch.nonzero(cam_ids == cam).squeeze(1).to(x.device)
        block = x[rows].to(torch.float64)
        if len(rows) > 1:
            block -= block.mean(0)
            if mode == "standardize":
                std = block.square().mean(0).sqrt()
                block /= std.clamp_min(_STD_FLOOR * std.mean())
        out[rows] = block.to(torch.float32)
    return out if isinstance(features, torch.Tensor) else out.numpy()
