"""Images as the model sees them: the test transform (lwtgpf.data.transforms), camera ids from Market-style names."""
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from fastreid.config import CfgNode

from ..data.datasets.market_layout import parse_market_name
from ..data.io import read_image
from ..data.transforms import build_test_transforms

__all__ = ["camera_id", "load_batch"]


def camera_id(path: str, camera: Optional[int] = None) -> int:
    """0-based camera id from a Market-style file name (`0001_c3_...` -> 2), else `camera`."""
    parsed = parse_market_name(path)
    if parsed is not None:
        return parsed[1] - 1
    if camera is None:
        raise ValueError(f"cannot read a camera from the file name {os.path.basename(path)} (expected "
                         "PPPP_cC..., camera C from 1): give the 0-based camera id with --camera")
    return int(camera)


def load_batch(cfg: CfgNode, paths: Sequence[str], camids: Sequence[int]) -> Tuple[dict, List[np.ndarray]]:
    """A batch as fast-reid's test loader gives it (images float [B, 3, H, W] in 0-255 at
    INPUT.SIZE_TEST, camera ids int64 [B], paths), and the images as read (RGB uint8, own size)."""
    transform = build_test_transforms(cfg)
    images, originals = [], []
    for path in paths:
        img = read_image(path, "RGB")
        originals.append(np.asarray(img))
        images.append(transform(img))
    batch = {
        "images": torch.stack(images).float(),
        "camids": torch.as_tensor(list(camids), dtype=torch.long),
        "img_paths": list(paths),
    }
    return batch, originals
