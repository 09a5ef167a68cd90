"""Rank lists and retrieval curves from the evaluator's `Ranking` (its distances, re-ranked when
TEST.RERANK is on, and its protocol: gallery images of the query's identity seen by the query's
camera are left out, the other images of its identity are the true matches)."""
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from ..data.io import read_image
from ..evaluation.evaluator import Ranking
from ..evaluation.protocol import kept_mask
from .heatmap import side_by_side

__all__ = ["GREEN", "GREY", "QUERY_ORDERS", "RED", "cmc_figure", "ranked_gallery", "ranklist_image",
           "ranklist_picture", "roc_curve", "roc_figure", "select_queries"]

QUERY_ORDERS = ("first", "best", "worst")
GREEN, RED, GREY = (0, 170, 0), (220, 0, 0), (160, 160, 160)  # frames: true match, false match, query / unknown
_GAP = 4


def ranked_gallery(ranking: Ranking, query: int, topk: int) -> Tuple[np.ndarray, np.ndarray]:
    """Gallery indices of the query's top `topk` under the protocol, and whether each is a true match."""
    order = np.argsort(ranking.distmat[query])  # numpy's default sort, as the evaluator ranks
    kept = kept_mask(ranking.q_pids[query], ranking.q_camids[query], ranking.g_pids[order], ranking.g_camids[order])
    same_pid = ranking.g_pids[order] == ranking.q_pids[query]
    return order[kept][:topk], same_pid[kept][:topk]


def select_queries(ranking: Ranking, num: int, order: str = "first") -> List[int]:
    """`num` query indices: the first ones, or those with the best / worst AP (queries with a match)."""
    if order not in QUERY_ORDERS:
        raise ValueError(f"query order must be one of {QUERY_ORDERS}, got {order!r}")
    if order == "first":
        return list(range(min(num, len(ranking.q_pids))))
    valid = np.flatnonzero(~np.isnan(ranking.average_precision))
    ap = ranking.average_precision[valid]
    ranked = valid[np.argsort(-ap if order == "best" else ap, kind="stable")]
    return [int(q) for q in ranked[:num]]


def _framed(path: str, size: Tuple[int, int], colour: Tuple[int, int, int], width: int = 3) -> np.ndarray:
    image = cv2.resize(np.asarray(read_image(path, "RGB")), (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return cv2.copyMakeBorder(image, width, width, width, width, cv2.BORDER_CONSTANT, value=colour)


def ranklist_picture(query_path: str, gallery_paths: Sequence[str], colours: Sequence[Tuple[int, int, int]],
                     title: str, size: Tuple[int, int] = (128, 64),
                     captions: Optional[Sequence[str]] = None) -> np.ndarray:
    """RGB picture: the query image (grey frame), then the gallery images framed in `colours` (RGB),
    each resized to `size` (height, width), under `title`; `captions` (one per gallery image, e.g.
    its similarity) are written under the tiles."""
    if len(colours) != len(gallery_paths):
        raise ValueError(f"{len(gallery_paths)} gallery images but {len(colours)} frame colours")
    if captions is not None and len(captions) != len(gallery_paths):
        raise ValueError(f"{len(gallery_paths)} gallery images but {len(captions)} captions")
    tiles = [_framed(query_path, size, GREY)] + [_framed(p, size, c) for p, c in zip(gallery_paths, colours)]
    picture = side_by_side(tiles, gap=_GAP, title=title)
    if captions is None:
        return picture
    strip = np.full((14, picture.shape[1], 3), 255, np.uint8)
    step = tiles[0].shape[1] + _GAP  # side_by_side puts tile i at x = gap + i * (tile width + gap)
    for i, caption in enumerate(captions, start=1):
        cv2.putText(strip, caption, (_GAP + i * step, 10), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([picture, strip])


def ranklist_image(ranking: Ranking, query: int, topk: int = 10, size: Tuple[int, int] = (128, 64)) -> np.ndarray:
    """RGB picture: the query (grey frame), then its top-`topk` gallery images, green frames for true
    matches and red for false ones; the title gives the query's AP."""
    if not ranking.q_paths:
        raise ValueError("the evaluation kept no image paths: the loader's batches need `img_paths`")
    gallery, matches = ranked_gallery(ranking, query, topk)
    ap = ranking.average_precision[query]
    title = f"{ranking.q_paths[query].rsplit('/', 1)[-1]}  AP {ap * 100:.1f}%" if not np.isnan(ap) else \
        f"{ranking.q_paths[query].rsplit('/', 1)[-1]}  no true match in another camera"
    return ranklist_picture(ranking.q_paths[query], [ranking.g_paths[g] for g in gallery],
                            [GREEN if m else RED for m in matches], title, size)


def roc_curve(ranking: Ranking) -> Tuple[np.ndarray, np.ndarray]:
    """False and true positive rates over every (query, kept gallery image) pair, scored by -distance."""
    from sklearn.metrics import roc_curve as sk_roc_curve

    kept = kept_mask(ranking.q_pids[:, None], ranking.q_camids[:, None], ranking.g_pids[None], ranking.g_camids[None])
    same_pid = ranking.q_pids[:, None] == ranking.g_pids[None]
    fpr, tpr, _ = sk_roc_curve(same_pid[kept], -ranking.distmat[kept], drop_intermediate=True)
    return fpr, tpr


def _figure_png(draw) -> np.ndarray:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3), dpi=100)
    try:
        draw(ax)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.canvas.draw()
        return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    finally:
        plt.close(fig)


def cmc_figure(ranking: Ranking) -> np.ndarray:
    """RGB plot of the CMC curve (rank 1 to its length)."""
    cmc = np.asarray(ranking.cmc) * 100

    def draw(ax):
        ax.plot(np.arange(1, len(cmc) + 1), cmc, marker=".", markersize=3)
        ax.set(xlabel="rank", ylabel="matching rate (%)", ylim=(0, 100),
               title=f"CMC (Rank-1 {cmc[0]:.1f}%, mAP {np.nanmean(ranking.average_precision) * 100:.1f}%)")
    return _figure_png(draw)


def roc_figure(ranking: Ranking) -> np.ndarray:
    """RGB plot of the ROC curve, false positive rate on a log axis."""
    from sklearn.metrics import auc

    fpr, tpr = roc_curve(ranking)

    def draw(ax):
        ax.plot(np.maximum(fpr, 1e-6), tpr)
        ax.set(xscale="log", xlabel="false positive rate", ylabel="true positive rate", ylim=(0, 1.01),
               title=f"ROC (AUC {auc(fpr, tpr):.3f})")
    return _figure_png(draw)
