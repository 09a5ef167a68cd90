"""tools/sweep.py: what each method runs, reuse of finished runs, the table."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

import lwtgpf  # noqa: F401
from fastreid.config import get_cfg

from lwtgpf.config import add_lwtgpf_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sweep():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        spec = importlib.util.spec_from_file_location("sweep", ROOT / "tools" / "sweep.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(ROOT / "tools"))


def merged(*files, opts=()):
    cfg = get_cfg()
    add_lwtgpf_config(cfg)
    for f in files:
        cfg.merge_from_file(str(f))
    cfg.merge_from_list(list(opts))
    return cfg


def test_published_runs_restore_every_remedy_to_the_base_recipe(sweep):
    base = merged(ROOT / "configs/LWTGPF/Base-LWTGPF.yml")
    published = merged(ROOT / "configs/LWTGPF/synthetic.yml", opts=sweep.published_opts())
    default = get_cfg()
    add_lwtgpf_config(default)
    for key in sweep.REMEDY_KEYS:
        node_b, node_p, node_d = base, published, default
        for part in key.split("."):
            node_b, node_p, node_d = node_b[part], node_p[part], node_d[part]
        assert node_p == node_b == node_d, key  # the published recipe is the package default: remedies off
    improved = merged(ROOT / "configs/LWTGPF/synthetic.yml", opts=sweep.IMPROVED)
    assert improved.CLUSTER.CAMERA_NORM == "center" != base.CLUSTER.CAMERA_NORM
    assert improved.INPUT.GRAY_WORLD and not base.INPUT.GRAY_WORLD and not published.INPUT.GRAY_WORLD
    supervised = merged(ROOT / "configs/LWTGPF/synthetic.yml", ROOT / "configs/Supervised/synthetic.yml")
    assert not supervised.INPUT.GRAY_WORLD  # the reference sees the images as published


def test_points_set_the_generator(sweep):
    cfg = merged(ROOT / "configs/LWTGPF/synthetic.yml", opts=sweep.point_opts("all", 3))
    syn = cfg.DATASETS.SYNTHETIC
    assert (syn.SEED, syn.COLOUR_CAST, syn.BACKGROUND_CONTRAST, syn.BLUR_NOISE) == (3, 6.0, 1.0, 3.0)
    cfg = merged(ROOT / "configs/LWTGPF/synthetic.yml", opts=sweep.point_opts("default", 1))
    assert (cfg.DATASETS.SYNTHETIC.COLOUR_CAST, cfg.DATASETS.SYNTHETIC.BACKGROUND_CONTRAST) == (1.0, 0.15)
    assert all(len(sweep.GRID[p]) == 1 for p in sweep.GRID if p not in ("default", "all"))
    for key in ("COLOUR_CAST", "BACKGROUND_CONTRAST", "BLUR_NOISE"):  # three strengths of each bias
        assert len({sweep.GRID[p].get(key) for p in sweep.GRID if p != "all"}) == 3, key


def test_finished_runs_are_reused_and_the_table_is_written(sweep, tmp_path, monkeypatch, capsys):
    calls = []

    def fake_train(config, output_dir, opts, console=None):
        calls.append((Path(config).name, list(opts)))
        output_dir.mkdir(parents=True)
        (output_dir / "metrics.json").write_text(json.dumps({"cluster/ari": 0.25}) + "\n")
        if "Supervised" in str(config):  # the reference with the improved inputs scores 40
            return {"mAP": 40.0 if "center" in opts else 30.0, "Rank-1": 40.0}
        return {"mAP": 20.0, "Rank-1": 40.0}

    monkeypatch.setattr(sweep, "train", fake_train)
    untrained_opts = []

    def fake_untrained(config, opts):
        untrained_opts.append(list(opts))
        return {"mAP": 5.0, "Rank-1": 8.0}

    monkeypatch.setattr(sweep, "untrained", fake_untrained)
    args = ["--points", "default,cast6", "--output-dir", str(tmp_path), "SOLVER.MAX_EPOCH", "2"]
    sweep.main(args)
    assert len(calls) == 8  # 2 points x (published, improved, supervised, supervised_improved)
    norms = [opts[opts.index("CLUSTER.CAMERA_NORM") + 1] for _, opts in calls if "CLUSTER.CAMERA_NORM" in opts]
    assert norms == ["'none'", "center", "center"] * 2  # published, improved, supervised_improved of each point
    assert [opts[opts.index("INPUT.GRAY_WORLD") + 1] for _, opts in calls if "INPUT.GRAY_WORLD" in opts] == \
        ["False", "True", "True"] * 2
    assert sum("CLUSTER.CAMERA_NORM" not in opts for _, opts in calls) == 2  # the supervised reference as published
    assert untrained_opts and all(opts[-4:] == sweep.published_opts() for opts in untrained_opts)
    assert all(opts[opts.index("SOLVER.MAX_EPOCH") + 1] == "2" for _, opts in calls)
    table = (tmp_path / "table.md").read_text()
    assert "| cast6 | 6 | 0.15 | 1 | 5.0 | 20.0 | 0.25 | 67% | 4.0x | 20.0 | 0.25 | 50% | 4.0x | 30.0 | 40.0 |" in table  # each recipe vs its own reference
    sweep.main(args)  # everything reused
    assert len(calls) == 8
    sweep.main(args[:-1] + ["3"])  # another command: run again, the old run kept aside
    assert len(calls) == 16
    assert len(list(tmp_path.glob("cast6/improved.replaced-*"))) == 1
    assert table.splitlines()[0] in capsys.readouterr().out


def test_bad_arguments(sweep):
    with pytest.raises(SystemExit):
        sweep.main(["--points", "cast7"])
    with pytest.raises(SystemExit):
        sweep.main(["--methods", "improved", "SOLVER.MAX_EPOCH"])
