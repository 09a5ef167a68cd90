"""tools/search.py: the CSV against brute force, same-camera exclusion, rank-list pictures, and
the errors on bad feature files."""
import csv
import importlib.util
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from lwtgpf.inference.feature_file import FeatureSet, write_features

ROOT = Path(__file__).resolve().parents[2]
TILE_HEIGHT, TILE_WIDTH = 128 + 6, 64 + 6  # ranklist_picture's default size plus the 3-pixel frames


@pytest.fixture(scope="module")
def tool():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        spec = importlib.util.spec_from_file_location("search_tool", ROOT / "tools" / "search.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(ROOT / "tools"))


def feature_set(rng: np.random.Generator, pids: np.ndarray, camids: np.ndarray, centres: np.ndarray,
                prefix: str) -> FeatureSet:
    """Market-style names and noisy unit features around each person's centre."""
    names = np.array([f"{p:04d}_c{c + 1}s1_{prefix}{i:05d}_00.png" for i, (p, c) in enumerate(zip(pids, camids))])
    x = centres[pids] + 0.8 * rng.standard_normal((len(pids), centres.shape[1]))
    return FeatureSet(names, camids.astype(np.int64), (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32))


@pytest.fixture()
def files(tmp_path):
    """gallery.npz (40 images) and queries.npz (6) of 8 persons in 3 cameras, and their image folders."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((8, 16))
    gallery = feature_set(rng, rng.integers(0, 8, 40), rng.integers(0, 3, 40), centres, "1")
    queries = feature_set(rng, rng.integers(0, 8, 6), rng.integers(0, 3, 6), centres, "2")
    for folder, features in (("gallery", gallery), ("query", queries)):
        (tmp_path / folder).mkdir()
        for i, name in enumerate(features.names):
            cv2.imwrite(str(tmp_path / folder / name), np.full((16, 8, 3), 6 * i, np.uint8))
    write_features(tmp_path / "gallery.npz", gallery)
    write_features(tmp_path / "queries.npz", queries)
    return tmp_path, gallery, queries


def read_rows(path: Path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def expected_rows(gallery: FeatureSet, queries: FeatureSet, topk: int, exclude_same_camera: bool = False):
    sims = queries.features @ gallery.features.T
    rows = []
    for q, row in enumerate(np.argsort(-sims, axis=1)):
        if exclude_same_camera:
            row = row[gallery.camids[row] != queries.camids[q]]
        rows += [(queries.names[q], queries.camids[q], rank, gallery.names[g], gallery.camids[g], sims[q, g])
                 for rank, g in enumerate(row[:topk], start=1)]
    return rows


def assert_rows(actual, expected):
    assert len(actual) == len(expected)
    for got, (query, query_cam, rank, match, match_cam, similarity) in zip(actual, expected):
        assert (got["query"], int(got["query_camid"]), int(got["rank"])) == (query, query_cam, rank)
        assert (got["gallery"], int(got["gallery_camid"])) == (match, match_cam), got
        assert float(got["similarity"]) == pytest.approx(similarity, abs=2e-6)


@pytest.mark.parametrize("index", ["flat", "ivf"])
def test_csv_rows_equal_brute_force(tool, files, index, capsys):
    folder, gallery, queries = files
    # ivf probing every cell is exact too
    extra = ["--index", "ivf", "--nlist", "2", "--nprobe", "2"] if index == "ivf" else []
    assert tool.main(["--gallery", str(folder / "gallery.npz"), "--queries", str(folder / "queries.npz"),
                      "--topk", "5", *extra]) == 0
    output = folder / "queries_matches.csv"  # the default: next to the queries file
    assert f"Wrote {output} (30 matches)" in capsys.readouterr().out
    assert_rows(read_rows(output), expected_rows(gallery, queries, 5))
    assert [p.name for p in folder.iterdir() if p.name.startswith(".tmp-")] == []  # no temporary left


def test_same_camera_matches_are_left_out(tool, files):
    folder, gallery, queries = files
    output = folder / "out" / "matches.csv"
    assert tool.main(["--gallery", str(folder / "gallery.npz"), "--queries", str(folder / "queries.npz"),
                      "--topk", "20", "--output", str(output), "--exclude-same-camera"]) == 0
    rows = read_rows(output)
    assert all(row["query_camid"] != row["gallery_camid"] for row in rows)
    assert_rows(rows, expected_rows(gallery, queries, 20, exclude_same_camera=True))


def test_rank_lists_show_the_query_and_its_matches(tool, files):
    folder, gallery, queries = files
    output = folder / "matches.csv"
    assert tool.main(["--gallery", str(folder / "gallery.npz"), "--queries", str(folder / "queries.npz"),
                      "--topk", "4", "--output", str(output), "--ranklists", str(folder / "lists"),
                      "--num-ranklists", "3", "--gallery-images", str(folder / "gallery"),
                      "--query-images", str(folder / "query")]) == 0
    pictures = sorted((folder / "lists").iterdir())
    assert [p.name[:5] for p in pictures] == ["0000_", "0001_", "0002_"]
    rows = read_rows(output)
    marks = set()
    for q, path in enumerate(pictures):
        picture = cv2.imread(str(path))  # BGR
        gap, title, caption = 4, 18, 14
        assert picture.shape == (title + TILE_HEIGHT + 2 * gap + caption, 5 * TILE_WIDTH + 6 * gap, 3)
        for rank, row in enumerate(rows[4 * q:4 * q + 4], start=1):  # frames: green same person, red another
            same = row["gallery"][:4] == row["query"][:4]
            frame = picture[title + gap + 1, gap + rank * (TILE_WIDTH + gap) + 1]
            assert tuple(frame[::-1]) == ((0, 170, 0) if same else (220, 0, 0)), (path.name, rank)
            marks.add(same)
    assert marks == {True, False}


def test_mismatched_dimensions_name_both_files(tool, files, capsys):
    folder, _, queries = files
    wide = FeatureSet(queries.names, queries.camids, np.full((len(queries), 24), 24 ** -0.5, np.float32))
    write_features(folder / "wide.npz", wide)
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["--gallery", str(folder / "gallery.npz"), "--queries", str(folder / "wide.npz")])
    assert exit_info.value.code != 0
    error = capsys.readouterr().err
    assert f"the queries ({folder / 'wide.npz'}) have features of dimension 24 but the gallery " \
           f"({folder / 'gallery.npz'}) has 16" in error


def test_missing_file_or_key_is_named(tool, files, capsys):
    folder, gallery, _ = files
    with pytest.raises(SystemExit):
        tool.main(["--gallery", str(folder / "nowhere.npz"), "--queries", str(folder / "queries.npz")])
    assert "nowhere.npz" in capsys.readouterr().err
    np.savez(folder / "no_camids.npz", names=gallery.names, features=gallery.features)
    with pytest.raises(SystemExit):
        tool.main(["--gallery", str(folder / "no_camids.npz"), "--queries", str(folder / "queries.npz")])
    error = capsys.readouterr().err
    assert "no_camids.npz" in error and "camids" in error


def test_frame_colours_follow_market_person_ids(tool):
    green, red, grey = (0, 170, 0), (220, 0, 0), (160, 160, 160)
    assert tool.match_colour("0001_c1s1_000151_00.jpg", "sub/0001_c3s2_000020_01.jpg") == green
    assert tool.match_colour("0001_c1s1_000151_00.jpg", "0002_c1s1_000151_00.jpg") == red
    assert tool.match_colour("0001_c1s1_000151_00.jpg", "street_cam.jpg") == grey
    assert tool.match_colour("-1_c1s1_000151_00.jpg", "-1_c2s1_000020_00.jpg") == grey  # junk images
