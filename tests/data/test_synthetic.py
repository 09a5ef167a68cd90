"""SyntheticReID: determinism, Market-1501 layout, split structure, atomic writes, registry, camera bias."""
import json
import re
import runpy
import shutil
import sys
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

import lwtgpf  # noqa: F401  (fastreid compatibility fixes first)
from fastreid.data.datasets import DATASET_REGISTRY
from lwtgpf.data import synthetic
from lwtgpf.data.synthetic import SyntheticReID, generate_synthetic, person_box, synthetic_dir_name

TINY = dict(num_cameras=3, num_train_ids=6, num_test_ids=4, images_per_id=4)
SUBDIRS = ("bounding_box_train", "query", "bounding_box_test")
NAME = re.compile(r"^(\d{4})_c(\d)_(\d{6})\.jpg$")


def _files(folder: Path) -> dict:
    """Relative path -> bytes of every file of a generated set."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _parse(folder: Path) -> dict:
    """Split -> list of (pid, camera 1-based, index), parsed the plain way."""
    out = {}
    for sub in SUBDIRS:
        rows = []
        for p in sorted((folder / sub).iterdir()):
            m = NAME.match(p.name)
            assert m, p.name
            rows.append(tuple(int(g) for g in m.groups()))
        out[sub] = rows
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return generate_synthetic(tmp_path_factory.mktemp("syn"), **TINY)


def test_folder_name_and_marker(tiny):
    assert tiny.name == "c3_tr6_te4_n4_s0" == synthetic_dir_name(**TINY)
    assert tiny.parent.name == "SyntheticReID"
    assert synthetic_dir_name(occluded=True) == "c6_tr200_te100_n20_s0_occ"
    assert synthetic_dir_name(colour_cast=6, background_contrast=1.0, blur_noise=2.5, occluded=True) == \
        "c6_tr200_te100_n20_s0_cast6_bg1_bn2.5_occ"
    assert synthetic_dir_name(background_contrast=0.15, blur_noise=1) == "c6_tr200_te100_n20_s0"
    assert synthetic_dir_name(view_bias=1, scale_bias=0.5, low_resolution=2, camera_occluders=0.25,
                              colour_response=1) == "c6_tr200_te100_n20_s0_view1_scale0.5_res2_occl0.25_resp1"
    marker = json.loads((tiny / "synthetic.json").read_text())
    assert marker["params"] == dict(TINY, occluded=False, seed=0, **synthetic.BIAS_DEFAULTS)
    for sub in SUBDIRS:
        assert marker["counts"][sub] == len(list((tiny / sub).glob("*.jpg")))


def test_deterministic_bytes(tiny, tmp_path):
    again = generate_synthetic(tmp_path / "a", **TINY)
    assert _files(again) == _files(tiny)
    other = _files(generate_synthetic(tmp_path / "b", seed=1, **TINY))
    ours = _files(tiny)
    shared = set(other) & set(ours) - {"synthetic.json"}
    assert shared and all(other[k] != ours[k] for k in shared)


def test_layout_names_and_images(tiny):
    parsed = _parse(tiny)
    names = [p.name for sub in SUBDIRS for p in (tiny / sub).iterdir()]
    assert len(names) == len(set(names))
    for sub, rows in parsed.items():
        assert rows, sub
        assert all(1 <= cam <= TINY["num_cameras"] for _, cam, _ in rows)
    img = cv2.imread(str(next((tiny / "query").iterdir())))
    assert img.shape == (128, 64, 3)


def test_identities_and_cameras(tiny):
    parsed = _parse(tiny)
    train_cams, test_cams = defaultdict(set), defaultdict(set)
    for pid, cam, _ in parsed["bounding_box_train"]:
        train_cams[pid].add(cam)
    for pid, cam, _ in parsed["query"] + parsed["bounding_box_test"]:
        test_cams[pid].add(cam)
    assert sorted(train_cams) == list(range(1, 7))
    assert sorted(test_cams) == list(range(7, 11))
    assert not set(train_cams) & set(test_cams)
    assert all(len(c) >= 2 for c in train_cams.values())
    counts = np.bincount([pid for pid, _, _ in parsed["bounding_box_train"]])[1:]
    assert counts.min() >= 2 and counts.max() <= TINY["images_per_id"] + TINY["images_per_id"] // 4


def test_query_gallery_structure(tiny):
    parsed = _parse(tiny)
    gallery = defaultdict(list)
    for pid, cam, _ in parsed["bounding_box_test"]:
        gallery[pid].append(cam)
    per_pid_query_cams = defaultdict(list)
    for pid, cam, _ in parsed["query"]:
        per_pid_query_cams[pid].append(cam)
        assert any(c != cam for c in gallery[pid]), "every query needs a cross-camera match"
    # At most one query per camera per identity.
    assert all(len(c) == len(set(c)) for c in per_pid_query_cams.values())


def test_test_plan_has_same_camera_gallery():
    same_cam = 0
    for pid in range(1, 200):
        query, gallery = synthetic._test_plan(0, pid, 6)
        assert query and len(query) == len(set(query))
        assert set(gallery) - set(query), "gallery in another camera"
        same_cam += bool(set(query) & set(gallery))
    assert 40 < same_cam < 160  # some identities, not all, so the protocol's filter matters


def test_occluded_changes_queries_only(tiny, tmp_path):
    occ = generate_synthetic(tmp_path, occluded=True, **TINY)
    assert occ.name.endswith("_occ")
    plain, covered = _files(tiny), _files(occ)
    assert set(plain) == set(covered)
    for key in plain:
        if key.startswith("query/"):
            assert plain[key] != covered[key], key
        elif key != "synthetic.json":
            assert plain[key] == covered[key], key


def test_person_boxes(tiny, tmp_path):
    images = [p for sub in SUBDIRS for p in sorted((tiny / sub).iterdir())]
    for path in images:
        x0, y0, x1, y1 = person_box(path)
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 128, (path.name, (x0, y0, x1, y1))
        assert y1 - y0 > 0.6 * 128 and 8 < x1 - x0 < 64  # a standing person, taller than wide
    heights = {tuple(person_box(p)) for p in images}
    assert len(heights) > len(images) // 2  # pose, scale and offset vary per image
    stray = tmp_path / "query" / "0001_c1_000000.jpg"
    stray.parent.mkdir()
    stray.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="person_boxes.csv"):
        person_box(stray)


def test_atomic_generation(tmp_path, monkeypatch):
    writes = []
    real = synthetic._write_image

    def failing(path, img):
        if len(writes) == 10:
            raise OSError("disk full")
        writes.append(path)
        real(path, img)

    monkeypatch.setattr(synthetic, "_write_image", failing)
    with pytest.raises(OSError, match="disk full"):
        generate_synthetic(tmp_path, **TINY)
    assert list((tmp_path / "SyntheticReID").iterdir()) == []  # neither the set nor its temp folder
    monkeypatch.setattr(synthetic, "_write_image", real)
    folder = generate_synthetic(tmp_path, **TINY)
    assert (folder / "synthetic.json").is_file()
    assert [p.name for p in (tmp_path / "SyntheticReID").iterdir()] == [folder.name]


def test_existing_folder_reused_checked_and_overwritten(tmp_path, monkeypatch):
    folder = generate_synthetic(tmp_path, **TINY)
    monkeypatch.setattr(synthetic, "_write_set", lambda *a: pytest.fail("must reuse the complete set"))
    assert generate_synthetic(tmp_path, **TINY) == folder
    monkeypatch.undo()
    (folder / "synthetic.json").unlink()
    with pytest.raises(RuntimeError, match="synthetic.json"):
        generate_synthetic(tmp_path, **TINY)
    stale = tmp_path / "SyntheticReID" / f".{folder.name}.tmp999999999"  # a killed run's leftover
    stale.mkdir()
    assert generate_synthetic(tmp_path, overwrite=True, **TINY) == folder
    assert (folder / "synthetic.json").is_file()
    assert [p.name for p in (tmp_path / "SyntheticReID").iterdir()] == [folder.name]


def test_a_set_finished_by_another_process_meanwhile_is_kept(tmp_path, monkeypatch):
    # Two runs started on the same new set: the other one renames its copy into place while this
    # one renders; this one must neither delete nor replace it (the other may be reading it).
    real = synthetic._write_set
    other = generate_synthetic(tmp_path / "other", **TINY)

    def other_process_finishes_first(folder, params):
        counts = real(folder, params)
        target = tmp_path / "SyntheticReID" / other.name
        shutil.copytree(other, target)
        (target / "in_use").write_text("opened by the other run")
        return counts

    monkeypatch.setattr(synthetic, "_write_set", other_process_finishes_first)
    folder = generate_synthetic(tmp_path, **TINY)
    assert (folder / "in_use").read_text() == "opened by the other run"
    assert [p.name for p in (tmp_path / "SyntheticReID").iterdir()] == [folder.name]  # this copy dropped
    monkeypatch.undo()
    assert generate_synthetic(tmp_path, overwrite=True, **TINY) == folder  # overwrite still replaces it
    assert not (folder / "in_use").exists()


@pytest.mark.parametrize("key,value", [("num_cameras", 1), ("num_cameras", 10), ("images_per_id", 1),
                                       ("num_train_ids", 0), ("num_test_ids", 9999), ("seed", -1),
                                       ("occluded", "yes"), ("colour_cast", -1.0), ("colour_cast", "6"),
                                       ("background_contrast", 1.5), ("blur_noise", float("nan")),
                                       ("view_bias", 1.5), ("scale_bias", -0.5), ("low_resolution", 5.0),
                                       ("camera_occluders", True), ("colour_response", float("inf"))])
def test_bad_parameters(tmp_path, key, value):
    with pytest.raises(ValueError, match=key):
        generate_synthetic(tmp_path, **dict(TINY, **{key: value}))
    assert not (tmp_path / "SyntheticReID").exists()


def test_unknown_strength():
    with pytest.raises(TypeError, match="colour_gain.*expected some of colour_cast"):
        synthetic_dir_name(colour_gain=2.0)


def test_registered_and_readable(tiny):
    kwargs = {f"synthetic_{k}": v for k, v in TINY.items()}
    data = DATASET_REGISTRY.get("SyntheticReID")(root=str(tiny.parent.parent), some_unknown_key=1, **kwargs)
    assert isinstance(data, SyntheticReID)
    parsed = _parse(tiny)
    expected_train = sorted((str(tiny / "bounding_box_train" / f"{p:04d}_c{c}_{i:06d}.jpg"),
                             f"synthetic_{p}", f"synthetic_{c - 1}") for p, c, i in parsed["bounding_box_train"])
    assert sorted(data.train) == expected_train
    expected_query = sorted((str(tiny / "query" / f"{p:04d}_c{c}_{i:06d}.jpg"), p, c - 1)
                            for p, c, i in parsed["query"])
    assert sorted(data.query) == expected_query
    assert len(data.gallery) == len(parsed["bounding_box_test"])
    assert all(isinstance(pid, int) and 0 <= cam < 3 for _, pid, cam in data.gallery)


def test_generated_on_first_use(tmp_path):
    data = SyntheticReID(root=str(tmp_path), synthetic_num_cameras=2, synthetic_num_train_ids=2,
                         synthetic_num_test_ids=1, synthetic_images_per_id=2, synthetic_seed=3)
    assert (tmp_path / "SyntheticReID" / "c2_tr2_te1_n2_s3" / "synthetic.json").is_file()
    assert data.get_num_pids(data.train) == 2 and len(data.query) == 1


def test_cli(tmp_path, monkeypatch, capsys):
    script = Path(__file__).resolve().parents[2] / "tools" / "make_synthetic.py"
    monkeypatch.setattr(sys, "argv", ["make_synthetic.py", "--root", str(tmp_path), "--num-cameras", "2",
                                      "--num-train-ids", "2", "--num-test-ids", "1", "--images-per-id", "2"])
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert "c2_tr2_te1_n2_s0" in out and "bounding_box_train" in out


def _pixel_similarities(folder: Path):
    """Mean pixel cosine of training images: same id and camera, same id across cameras, other
    ids across cameras. Images are mean-centred: the shared mid-grey of muted scenery is no similarity."""
    paths = sorted((folder / "bounding_box_train").glob("*.jpg"))
    feats = np.stack([cv2.imread(str(p)).astype(np.float64).ravel() for p in paths])
    feats -= feats.mean(0)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    sim = feats @ feats.T
    pids = np.array([int(p.name[:4]) for p in paths])
    cams = np.array([int(p.name[6]) for p in paths])
    same_id, same_cam = pids[:, None] == pids[None], cams[:, None] == cams[None]
    not_self = ~np.eye(len(paths), dtype=bool)
    return sim[same_id & same_cam & not_self].mean(), sim[same_id & ~same_cam].mean(), sim[~same_id & ~same_cam].mean()


def test_camera_bias_and_identity_signal(tmp_path):
    """Same id looks more alike within a camera than across, yet more alike than other ids across."""
    folder = generate_synthetic(tmp_path, num_cameras=4, num_train_ids=16, num_test_ids=1, images_per_id=8)
    sid_scam, sid_xcam, did_xcam = _pixel_similarities(folder)
    assert sid_scam > sid_xcam + 0.1
    assert sid_xcam > did_xcam + 0.1


def test_marker_without_bias_strengths_is_reused(tiny, tmp_path, monkeypatch):
    """Sets written before the strengths existed were made at the defaults (same bytes): reused."""
    legacy = tmp_path / "SyntheticReID" / tiny.name
    shutil.copytree(tiny, legacy)
    marker = json.loads((legacy / "synthetic.json").read_text())
    for key in synthetic.BIAS_DEFAULTS:
        del marker["params"][key]
    (legacy / "synthetic.json").write_text(json.dumps(marker))
    monkeypatch.setattr(synthetic, "_write_set", lambda *a: pytest.fail("must reuse the legacy set"))
    assert generate_synthetic(tmp_path, **TINY) == legacy
    # Under a stronger set's name, the same marker records other parameters.
    legacy.rename(legacy.parent / synthetic_dir_name(**TINY, blur_noise=2.0))
    with pytest.raises(RuntimeError, match="other parameters"):
        generate_synthetic(tmp_path, blur_noise=2.0, **TINY)


def test_strengths_scale_the_camera_effects_only():
    base = synthetic._make_camera(0, 2)
    strong = synthetic._make_camera(0, 2, colour_cast=3.0, background_contrast=1.0, blur_noise=2.0)
    np.testing.assert_allclose(strong.gains, base.gains.astype(np.float64) ** 3, rtol=1e-6)
    np.testing.assert_allclose(strong.background - 128, (base.background - 128) / 0.15, atol=1e-3)
    assert (strong.blur, strong.noise) == (2 * base.blur, 2 * base.noise)
    for field in ("light", "contrast", "brightness", "scale", "back_prob"):
        assert np.array_equal(getattr(strong, field), getattr(base, field)), field


def test_colour_cast_tints_the_whole_image():
    """Without blur and noise, a stronger cast multiplies every pixel, person and scenery alike,
    by the camera's channel gains."""
    ident = synthetic._make_identity(0, 1)
    plain = synthetic._make_camera(0, 3, colour_cast=0.0, blur_noise=0.0)
    cast = synthetic._make_camera(0, 3, colour_cast=6.0, blur_noise=0.0)
    assert np.ptp(np.log(cast.gains)) > 0.1
    a = synthetic._render(ident, plain, synthetic._rng(0, 9))[0].astype(np.float64)
    b = synthetic._render(ident, cast, synthetic._rng(0, 9))[0].astype(np.float64)
    unclipped = (b > 0) & (b < 255)
    assert unclipped.mean() > 0.9
    assert np.abs(b - a * cast.gains)[unclipped].max() <= 0.5 * cast.gains.max() + 0.5 + 1e-6


def _camera_margin(folder: Path) -> float:
    sid_scam, sid_xcam, _ = _pixel_similarities(folder)
    return sid_scam - sid_xcam


def test_colour_cast_and_scenery_make_the_camera_bias_stronger(tmp_path):
    small = dict(num_cameras=4, num_train_ids=12, num_test_ids=1, images_per_id=8)
    default = _camera_margin(generate_synthetic(tmp_path, **small))
    for strength in (dict(colour_cast=6.0), dict(background_contrast=1.0)):
        assert _camera_margin(generate_synthetic(tmp_path, **small, **strength)) > default + 0.2, strength


# ---------------------------------------------------------------- the kinds that are off by default

KINDS = dict(view_bias=1.0, scale_bias=1.0, low_resolution=1.0, camera_occluders=1.0, colour_response=1.0)


def _renders(ident_pid: int, cam: "synthetic._Camera", count: int, kinds: bool = True):
    """`count` renders of one identity by `cam` with fixed per-image streams."""
    ident = synthetic._make_identity(0, ident_pid)
    return [synthetic._render(ident, cam, synthetic._rng(0, 9, i), None,
                              synthetic._rng(0, 10, i) if kinds else None) for i in range(count)]


def test_kinds_at_zero_leave_the_camera_and_the_pixels_as_they_were():
    """The kinds draw from streams of their own: a default camera renders the same pixels with or
    without them, and a camera with any of them keeps every older effect."""
    base = synthetic._make_camera(0, 2)
    with_kinds = _renders(4, base, 3)
    for (a, box_a), (b, box_b) in zip(with_kinds, _renders(4, base, 3, kinds=False)):
        assert np.array_equal(a, b) and box_a == box_b
    strong = synthetic._make_camera(0, 2, **KINDS)
    for field in ("background", "light", "gains", "contrast", "brightness", "blur", "noise", "scale", "back_prob"):
        assert np.array_equal(getattr(strong, field), getattr(base, field)), field
    with pytest.raises(ValueError, match="kinds_rng"):
        synthetic._render(synthetic._make_identity(0, 1), strong, synthetic._rng(0, 9))


def test_view_bias_shows_the_preferred_view(monkeypatch):
    views = []
    draw = synthetic._draw_person
    monkeypatch.setattr(synthetic, "_draw_person", lambda ident, rng, view: views.append(view) or draw(ident, rng, view))
    cams = [synthetic._make_camera(0, c, view_bias=1.0) for c in range(1, 10)]
    assert {cam.view for cam in cams} == {"front", "back", "side"}
    for cam in cams:
        views.clear()
        _renders(1, cam, 6)
        assert views == [cam.view] * 6
    half = synthetic._make_camera(0, 1, view_bias=0.5)
    views.clear()
    _renders(1, half, 200)
    today = synthetic._make_camera(0, 1)
    preferred = np.mean([v == half.view for v in views])
    # preferred with chance 0.5, else today's draw (back with chance back_prob)
    expected = 0.5 + 0.5 * (today.back_prob if half.view == "back" else 1 - today.back_prob if half.view == "front" else 0)
    assert abs(preferred - expected) < 0.12


def test_side_view_is_narrower():
    ident = synthetic._make_identity(0, 5)
    widths = {view: (synthetic._draw_person(ident, synthetic._rng(0, 1), view).alpha > 0).any(0).sum()
              for view in ("front", "side")}
    assert widths["side"] < 0.85 * widths["front"]


def test_scale_bias_moves_and_scales_the_person_per_camera():
    for c in range(1, 5):
        base, placed = synthetic._make_camera(0, c), synthetic._make_camera(0, c, scale_bias=1.0)
        assert 0.74 <= placed.size <= 1.35 and abs(placed.shift[0]) <= 0.15 * 128 and abs(placed.shift[1]) <= 0.1 * 256
        for (_, a), (_, b) in zip(_renders(2, base, 4), _renders(2, placed, 4)):
            height_a, height_b = a[3] - a[1], b[3] - b[1]
            if b[1] > 0.5 and b[3] < 127.5:  # the whole person is in the crop
                assert height_b / height_a == pytest.approx(placed.size, rel=0.06)
            if b[3] < 127.5:  # the feet are in the crop: they move by the camera's offset and by the
                # lift that smaller people get, (1 - scale) x 0.1 of the canvas (stored pixels: half)
                assert b[3] - a[3] == pytest.approx(placed.shift[1] / 2 + (1 - placed.size) * 12.8, abs=3.5)


def _laplacian_energy(img: np.ndarray) -> float:
    return float(np.abs(cv2.Laplacian(img.astype(np.float64), cv2.CV_64F)).mean())


def test_low_resolution_removes_detail():
    base = synthetic._make_camera(0, 3, blur_noise=0.0)
    low = synthetic._make_camera(0, 3, blur_noise=0.0, low_resolution=1.0)
    assert 2.0 <= low.resolution <= 4.0
    for (a, _), (b, _) in zip(_renders(6, base, 3), _renders(6, low, 3)):
        assert _laplacian_energy(b) < 0.6 * _laplacian_energy(a)
        # what is left is the image seen at the lower resolution: a down-up round trip keeps it
        size = (round(64 / low.resolution), round(128 / low.resolution))
        again = cv2.resize(cv2.resize(b.astype(np.float32), size, interpolation=cv2.INTER_AREA), (64, 128))
        assert np.abs(again - b).mean() < 0.5 * np.abs(cv2.resize(cv2.resize(
            a.astype(np.float32), size, interpolation=cv2.INTER_AREA), (64, 128)) - a).mean()


def test_camera_occluders_hide_the_legs_at_the_camera_rate():
    for c in range(1, 4):
        base = synthetic._make_camera(0, c, blur_noise=0.0)
        occ = synthetic._make_camera(0, c, blur_noise=0.0, camera_occluders=1.0)
        assert 0.4 <= occ.occluder_prob <= 1.0
        changed = []
        for (a, _), (b, _) in zip(_renders(3, base, 60), _renders(3, occ, 60)):
            assert np.array_equal(a[:58], b[:58])  # above the occluder's highest top (0.5 - 0.04 of 128)
            changed.append(not np.array_equal(a, b))
        assert abs(np.mean(changed) - occ.occluder_prob) < 0.15, (c, np.mean(changed), occ.occluder_prob)


def test_grey_axis_mixing_against_its_definition():
    identity = synthetic._grey_axis_mixing(0.0, 1.0)
    np.testing.assert_allclose(identity, np.eye(3), atol=1e-12)
    # a third of a turn about the grey axis sends red to green, green to blue, blue to red
    turn = synthetic._grey_axis_mixing(2 * np.pi / 3, 1.0)
    np.testing.assert_allclose(turn @ np.eye(3), np.roll(np.eye(3), 1, axis=0), atol=1e-12)
    rng = np.random.default_rng(0)
    hue, sat = rng.uniform(-1, 1), rng.uniform(0.3, 2)
    m = synthetic._grey_axis_mixing(hue, sat)
    np.testing.assert_allclose(m @ np.full(3, 0.7), np.full(3, 0.7), atol=1e-12)  # greys stay
    v = rng.uniform(0, 1, 3)
    chroma, out = v - v.mean(), m @ v - (m @ v).mean()
    assert np.linalg.norm(out) == pytest.approx(sat * np.linalg.norm(chroma))  # saturation scales chroma
    assert np.dot(out, chroma) / (np.linalg.norm(out) * np.linalg.norm(chroma)) == pytest.approx(np.cos(hue))


def test_colour_response_is_not_a_per_channel_gain():
    """The best per-channel gain explains a colour cast (up to rounding) but not the camera
    response (gamma, hue, saturation), which grey-world balance therefore cannot undo."""
    def gain_residual(a, b):
        a, b = a.astype(np.float64).reshape(-1, 3), b.astype(np.float64).reshape(-1, 3)
        keep = ((b > 0) & (b < 255)).all(1)
        a, b = a[keep], b[keep]
        gains = (a * b).sum(0) / (a * a).sum(0)
        return np.abs(b - a * gains).mean()

    plain = synthetic._make_camera(0, 4, colour_cast=0.0, blur_noise=0.0)
    cast = synthetic._make_camera(0, 4, colour_cast=6.0, blur_noise=0.0)
    response = synthetic._make_camera(0, 4, colour_cast=0.0, blur_noise=0.0, colour_response=1.0)
    for (a, _), (b, _), (c, _) in zip(_renders(8, plain, 4), _renders(8, cast, 4), _renders(8, response, 4)):
        assert gain_residual(a, b) < 1.0
        assert gain_residual(a, c) > 2.0


def test_every_kind_makes_the_camera_bias_stronger(tmp_path):
    small = dict(num_cameras=4, num_train_ids=12, num_test_ids=1, images_per_id=8)
    default = _camera_margin(generate_synthetic(tmp_path, **small))
    for key, value in KINDS.items():
        folder = generate_synthetic(tmp_path, **small, **{key: value})
        assert json.loads((folder / "synthetic.json").read_text())["params"][key] == value
        assert _camera_margin(folder) > default + 0.02, key
