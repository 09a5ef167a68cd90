"""The single-query re-id protocol's rule, in one place for the ranking, the pictures and the data checks.

A query's ranking leaves out the gallery images of its identity seen by its own camera (finding
them is not re-identification); the other images of its identity are its true matches, and a
query counts only when it has at least one.
"""
import numpy as np

__all__ = ["kept_mask", "valid_queries"]


def kept_mask(q_pid, q_cam, g_pids, g_cams) -> np.ndarray:
    """Which gallery images stay in a query's ranking: all but those of its identity and camera.

    Arguments broadcast like numpy arrays, so one query against the gallery, the [Q, G] matrix
    (`q_pids[:, None]` against `g_pids[None]`) and aligned (query, gallery) pairs all use this one rule.
    """
    return ~((np.asarray(g_pids) == q_pid) & (np.asarray(g_cams) == q_cam))


def _count_rows(gallery: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """How many rows of `gallery` [G, k] equal each row of `queries` [Q, k] (no [Q, G] matrix)."""
    keys, inverse = np.unique(np.concatenate([gallery, queries]), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    return np.bincount(inverse[:len(gallery)], minlength=len(keys))[inverse[len(gallery):]]


def valid_queries(q_pids, q_cams, g_pids, g_cams) -> np.ndarray:
    """[Q] bool: whether each query has a gallery image of its identity from another camera.

    Counted rather than compared pairwise, so that a large test set (or the data checks, which have
    no distances) needs no [Q, G] matrix: a query has such an image exactly when its identity has
    more gallery images than its (identity, camera) pair has.
    """
    q_pids, q_cams, g_pids, g_cams = (np.asarray(a).reshape(-1) for a in (q_pids, q_cams, g_pids, g_cams))
    same_pid = _count_rows(g_pids[:, None], q_pids[:, None])
    same_pid_and_cam = _count_rows(np.stack([g_pids, g_cams], 1), np.stack([q_pids, q_cams], 1))
    return same_pid > same_pid_and_cam
