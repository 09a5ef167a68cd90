"""Checks of the data that stop a run before it trains: unreadable images (all of them listed at
once), test sets that cannot be evaluated, camera ids without a camera embedding."""
import logging
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np
from fastreid.config import CfgNode
from fastreid.utils import comm

from ..evaluation.protocol import valid_queries
from .io import UnreadableImageError, find_unreadable, unreadable_message

__all__ = ["DataCheckError", "usable_splits", "check_cross_camera", "check_camera_ids"]

logger = logging.getLogger("fastreid." + __name__)

Item = Tuple[str, object, object]
_LISTED = 50  # unreadable files named in the message; a longer list goes to a file


class DataCheckError(ValueError):
    """The data cannot give a meaningful run (a test set without cross-camera matches, camera ids
    without an embedding, no training image); the message says why."""


def usable_splits(cfg: CfgNode, splits: Dict[str, Sequence[Item]]) -> Dict[str, List[Item]]:
    """`splits` (name -> items) without unreadable images, or an error naming every one of them.

    The main process opens every image header (PIL verify) in DATALOADER.NUM_WORKERS processes and
    shares the result with the other processes. Unreadable images stop the run with one
    `UnreadableImageError` listing them split by split, unless DATALOADER.SKIP_UNREADABLE is True:
    then they are left out, with a warning that lists them. DATALOADER.CHECK_IMAGES False skips the
    check (a bad image then stops the run when it is read, with its name).
    """
    splits = {name: list(items) for name, items in splits.items()}
    if not cfg.DATALOADER.CHECK_IMAGES:
        return splits
    bad: Dict[str, str] = {}
    if comm.is_main_process():
        paths = list(dict.fromkeys(path for items in splits.values() for path, _, _ in items))
        bad = dict(find_unreadable(paths, workers=max(cfg.DATALOADER.NUM_WORKERS, 1)))
    if comm.get_world_size() > 1:
        bad = comm.all_gather(bad)[0]
    if not bad:
        return splits

    per_split = {name: [(p, bad[p]) for p, _, _ in items if p in bad] for name, items in splits.items()}
    total = sum(len(items) for items in splits.values())
    listing = "\n".join(f"{name}: " + unreadable_message(found, len(splits[name]), _LISTED)
                        for name, found in per_split.items() if found)
    if len(bad) > _LISTED and cfg.OUTPUT_DIR and comm.is_main_process():
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        full = os.path.join(cfg.OUTPUT_DIR, "unreadable_images.txt")
        with open(full, "w") as f:
            f.writelines(f"{p}\t{why}\n" for p, why in sorted(bad.items()))
        listing += f"\nThe full list: {full}"
    if not cfg.DATALOADER.SKIP_UNREADABLE:
        raise UnreadableImageError(
            f"{len(bad)} of {total} images cannot be read.\n{listing}\nReplace or delete them, or set "
            f"DATALOADER.SKIP_UNREADABLE True to leave them out.", sorted(bad))
    logger.warning(f"DATALOADER.SKIP_UNREADABLE: leaving out {len(bad)} of {total} images that cannot be read.\n"
                   f"{listing}")
    return {name: [item for item in items if item[0] not in bad] for name, items in splits.items()}


def _pids_and_cams(items: Sequence[Item]) -> Tuple[np.ndarray, np.ndarray]:
    """The identities and cameras of `items` as arrays, the protocol's inputs."""
    return np.array([pid for _, pid, _ in items]), np.array([cam for _, _, cam in items])


def check_cross_camera(name: str, query: Sequence[Item], gallery: Sequence[Item]) -> None:
    """Stop when no query of test set `name` has a gallery image of its identity from another camera.

    The standard protocol ignores gallery images of the query's own camera, so such a test set has
    nothing to retrieve; the message says why (one camera, no shared identity, or same-camera
    matches only). Queries without a match are otherwise skipped by the protocol; their count is
    logged.
    """
    matched = int(valid_queries(*_pids_and_cams(query), *_pids_and_cams(gallery)).sum())
    if matched == len(query) and query:
        return
    if matched:
        logger.info(f"{name}: {len(query) - matched} of {len(query)} queries have no gallery image of their "
                    f"identity from another camera; the protocol skips them")
        return
    cameras = sorted({cam for _, _, cam in query} | {cam for _, _, cam in gallery})
    shared = {pid for _, pid, _ in query} & {pid for _, pid, _ in gallery}
    if not query or not gallery:
        why = f"the query has {len(query)} images and the gallery {len(gallery)}"
    elif len(cameras) == 1:
        why = (f"all its images come from one camera (camera id {cameras[0]}); re-identification is across "
               f"cameras, so a test set needs at least two")
    elif not shared:
        why = "no query identity appears in the gallery at all (check that query and gallery use the same ids)"
    else:
        why = (f"the gallery images of the {len(shared)} shared identities all come from the query's own camera, "
               f"which the protocol ignores")
    raise DataCheckError(f"Test set {name} cannot be evaluated: no query has a gallery image of its identity from "
                     f"another camera ({len(query)} queries, {len(gallery)} gallery images, cameras {cameras}): {why}.")


def check_camera_ids(cfg: CfgNode, splits: Dict[str, Sequence[Item]]) -> None:
    """Stop when a split holds a camera id the model has no camera embedding for
    (MODEL.BACKBONE.NUM_CAMERAS > 0 rows; camera ids are 0-based)."""
    rows = cfg.MODEL.BACKBONE.NUM_CAMERAS
    if rows <= 0:
        return
    over = {name: max(cam for _, _, cam in items) for name, items in splits.items()
            if items and max(cam for _, _, cam in items) >= rows}
    if over:
        need = max(over.values()) + 1
        raise DataCheckError(f"MODEL.BACKBONE.NUM_CAMERAS is {rows} but " + ", ".join(
            f"{name} has camera id {cam}" for name, cam in over.items())
            + f"; set it to {need} (a checkpoint with another camera count loads with its table adapted)")
