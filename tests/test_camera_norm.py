"""lwtgpf.camera_norm: per-camera normalisation removes what a camera adds, exactly, and off is a no-op."""
import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

import lwtgpf  # noqa: F401
from lwtgpf.camera_norm import camera_normalise
from lwtgpf.clustering import pseudo_labels


def features(n=300, dim=24, cams=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, dim)), rng.integers(0, cams, n)


def reference(x, cams, mode):
    """Camera by camera, from the definition."""
    out = np.empty_like(x, dtype=np.float64)
    for c in np.unique(cams):
        rows = x[cams == c].astype(np.float64)
        if len(rows) == 1:
            out[cams == c] = rows
            continue
        centred = rows - rows.mean(0)
        std = centred.std(0)
        out[cams == c] = centred / np.maximum(std, 1e-3 * std.mean()) if mode == "standardize" else centred
    return out


def test_none_is_the_input_itself():
    x, cams = features()
    t = torch.from_numpy(x)
    assert camera_normalise(x, cams, "none") is x
    assert camera_normalise(t, cams, "none") is t


@pytest.mark.parametrize("mode", ["center", "standardize"])
def test_matches_the_definition(mode):
    x, cams = features(seed=1)
    out = camera_normalise(torch.from_numpy(x).float(), torch.from_numpy(cams), mode)
    assert out.dtype == torch.float32 and out.shape == x.shape
    np.testing.assert_allclose(out.numpy(), reference(x.astype(np.float32), cams, mode), rtol=1e-5, atol=1e-5)
    again = camera_normalise(x, cams, mode)
    assert again.dtype == np.float32 and np.array_equal(again, camera_normalise(x, cams, mode))


def test_centring_removes_a_per_camera_offset_exactly():
    y, cams = features(seed=2)
    offsets = np.random.default_rng(3).standard_normal((4, y.shape[1])) * 10
    np.testing.assert_allclose(camera_normalise(y + offsets[cams], cams, "center"),
                               camera_normalise(y, cams, "center"), rtol=0, atol=1e-5)


def test_standardizing_removes_a_per_camera_affine_map_exactly():
    y, cams = features(seed=4)
    rng = np.random.default_rng(5)
    scales, offsets = rng.uniform(0.2, 5, (4, y.shape[1])), rng.standard_normal((4, y.shape[1])) * 10
    np.testing.assert_allclose(camera_normalise(y * scales[cams] + offsets[cams], cams, "standardize"),
                               camera_normalise(y, cams, "standardize"), rtol=0, atol=1e-5)


def test_clusters_join_cameras_again():
    """Identities seen by every camera, each camera adding a large offset: without normalisation
    every cluster stays inside one camera; centred, the clusters are the identities."""
    rng = np.random.default_rng(6)
    ids, dim = 10, 32
    pid = np.repeat(np.arange(ids), 8)
    cams = np.tile(np.arange(4), ids * 2)
    clean = rng.standard_normal((ids, dim))[pid] * 3 + rng.standard_normal((len(pid), dim)) * 0.5
    biased = clean + (rng.standard_normal((4, dim)) * 12)[cams]
    raw, _ = pseudo_labels(biased, cams, k1=8, k2=3)
    assert raw.max() >= 3 and all(len(set(cams[raw == c])) == 1 for c in range(raw.max() + 1))
    centred, proxies = pseudo_labels(camera_normalise(biased, cams, "center"), cams, k1=8, k2=3)
    assert adjusted_rand_score(pid, centred) == 1.0
    assert np.array_equal(centred, pseudo_labels(camera_normalise(clean, cams, "center"), cams, k1=8, k2=3)[0])
    assert proxies.max() + 1 == 4 * ids


def test_single_image_camera_is_left_as_it_is():
    x, cams = features(n=50)
    cams[7] = 9
    out = camera_normalise(x, cams, "standardize")
    np.testing.assert_allclose(out[7], x[7].astype(np.float32))
    assert np.isfinite(out).all()


def test_training_stops_early_on_an_unknown_mode():
    from fastreid.config import get_cfg

    from lwtgpf.config import add_lwtgpf_config
    from lwtgpf.engine.hooks import ClusterHook

    cfg = add_lwtgpf_config(get_cfg())
    assert cfg.CLUSTER.CAMERA_NORM == "none"  # the published recipe by default
    cfg.merge_from_list(["CLUSTER.CAMERA_NORM", "whiten"])
    with pytest.raises(ValueError, match="CLUSTER.CAMERA_NORM.*'whiten'"):
        ClusterHook(cfg, [])


def test_bad_arguments():
    x, cams = features(n=10)
    with pytest.raises(ValueError, match="CLUSTER.CAMERA_NORM.*'centre'"):
        camera_normalise(x, cams, "centre")
    with pytest.raises(ValueError, match=r"cams \[N\]"):
        camera_normalise(x, cams[:5], "center")
