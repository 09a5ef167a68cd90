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


def with_keys(cfg, **values):
    """A copy of `cfg` with the dotted keys (`__` for `.`) set to the values."""
    cfg = cfg.clone()
    cfg.merge_from_list([item for key, value in values.items() for item in (key.replace("__", "."), value)])
    return cfg


def test_each_method_runs_its_config(sweep, tmp_path, monkeypatch):
    """What the sweep hands each method, read as tools/train_net.py reads it: the method's own file
    (with its _BASE_ chain) and the sweep's options."""
    given = []

    def fake_untrained(config, opts):
        given.append(merged(config, opts=opts))
        return {"mAP": 1.0, "Rank-1": 1.0}

    def fake_train(config, output_dir, opts, console=None):
        output_dir.mkdir(parents=True)
        (output_dir / "metrics.json").write_text("")
        return fake_untrained(config, opts)

    monkeypatch.setattr(sweep, "train", fake_train)
    monkeypatch.setattr(sweep, "untrained", fake_untrained)
    sweep.main(["--points", "cast6", "--methods", ",".join(sweep.METHODS), "--output-dir", str(tmp_path)])
    cfg = dict(zip(sweep.METHODS, given, strict=True))
    base = merged(ROOT / "configs/LWTGPF/Base-LWTGPF.yml")
    published, plus = cfg["published"], cfg["plus"]
    assert all(c.DATASETS.SYNTHETIC.COLOUR_CAST == 6.0 for c in given)
    assert published.CLUSTER.CAMERA_NORM == base.CLUSTER.CAMERA_NORM == "none"
    assert not published.INPUT.GRAY_WORLD and published.MODEL.BACKBONE.PRETRAIN
    assert plus.CLUSTER.CAMERA_NORM == "center" and plus.INPUT.GRAY_WORLD
    assert with_keys(plus, CLUSTER__CAMERA_NORM="none", INPUT__GRAY_WORLD="False",
                     OUTPUT_DIR=published.OUTPUT_DIR) == published  # the additions, nothing else
    assert cfg["direct"] == published
    assert not cfg["random_init"].MODEL.BACKBONE.PRETRAIN
    assert with_keys(cfg["random_init"], MODEL__BACKBONE__PRETRAIN="True") == published
    supervised, sup_plus = cfg["supervised"], cfg["supervised_plus"]
    assert supervised.MODEL.META_ARCHITECTURE == "Baseline" and not supervised.INPUT.GRAY_WORLD
    assert (supervised.MODEL.BACKBONE.PRETRAIN, supervised.MODEL.BACKBONE.PRETRAIN_PATH) == \
        (published.MODEL.BACKBONE.PRETRAIN, published.MODEL.BACKBONE.PRETRAIN_PATH)
    assert sup_plus.INPUT.GRAY_WORLD
    assert with_keys(sup_plus, INPUT__GRAY_WORLD="False") == supervised  # the plus inputs, nothing else
    ca = cfg["ca_jaccard"]
    assert ca.CLUSTER.CAMERA_JACCARD.ENABLED and not published.CLUSTER.CAMERA_JACCARD.ENABLED
    assert ca.CLUSTER.EPS == 0.6
    assert with_keys(ca, CLUSTER__CAMERA_JACCARD__ENABLED="False", CLUSTER__EPS=str(published.CLUSTER.EPS),
                     OUTPUT_DIR=published.OUTPUT_DIR) == published  # the distance and its eps, nothing else
    assert with_keys(cfg["ca_plus"], CLUSTER__CAMERA_JACCARD__ENABLED="False",
                     CLUSTER__EPS=str(plus.CLUSTER.EPS)) == plus  # the same on top of the additions


def test_random_start_is_the_earlier_demo_recipe(sweep):
    """--start random runs every method with the recipe the demo had before its pretrained start."""
    for method in ("published", "plus", "supervised", "random_init"):
        cfg = merged(ROOT / "configs/LWTGPF/synthetic.yml", opts=sweep.method_opts(method, "random"))
        assert not cfg.MODEL.BACKBONE.PRETRAIN
        assert (cfg.SOLVER.OPT, cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_EPOCH, cfg.SOLVER.ITERS_PER_EPOCH) == \
            ("Adam", 0.00035, 15, 60)
        assert list(cfg.SOLVER.STEPS) == [12] and cfg.SOLVER.WARMUP_EPOCHS == 2
        assert cfg.MODEL.BACKBONE.LEWINVIT.FINAL_NORM and cfg.MODEL.BACKBONE.DROP_PATH_RATIO == 0.0


def test_points_set_the_generator(sweep):
    cfg = merged(ROOT / "configs/LWTGPF/synthetic.yml", opts=sweep.point_opts("all", 3))
    syn = cfg.DATASETS.SYNTHETIC
    assert (syn.SEED, syn.COLOUR_CAST, syn.BACKGROUND_CONTRAST, syn.BLUR_NOISE) == (3, 6.0, 1.0, 3.0)
    cfg = merged(ROOT / "configs/LWTGPF/synthetic.yml", opts=sweep.point_opts("default", 1))
    assert (cfg.DATASETS.SYNTHETIC.COLOUR_CAST, cfg.DATASETS.SYNTHETIC.BACKGROUND_CONTRAST) == (1.0, 0.15)
    together = ("default", "all", "kinds", "every")
    assert all(len(sweep.GRID[p]) == 1 for p in sweep.GRID if p not in together)
    for key in ("COLOUR_CAST", "BACKGROUND_CONTRAST", "BLUR_NOISE", *sweep.NEW_KINDS):  # three strengths of each
        assert len({sweep.GRID[p].get(key) for p in sweep.GRID if p not in together}) == 3, key
    cfg = merged(ROOT / "configs/LWTGPF/synthetic.yml", opts=sweep.point_opts("every", 2))
    syn = cfg.DATASETS.SYNTHETIC
    assert (syn.COLOUR_CAST, syn.BACKGROUND_CONTRAST, syn.BLUR_NOISE) == (6.0, 1.0, 3.0)
    assert [syn[key] for key in sweep.NEW_KINDS] == [1.0] * 5
    assert sweep.point_opts("occl0.5", 1)[-2:] == ["DATASETS.SYNTHETIC.CAMERA_OCCLUDERS", "0.5"]


def test_finished_runs_are_reused_and_the_table_is_written(sweep, tmp_path, monkeypatch, capsys):
    calls = []

    def fake_train(config, output_dir, opts, console=None):
        calls.append((Path(config).name, list(opts)))
        output_dir.mkdir(parents=True)
        (output_dir / "metrics.json").write_text(json.dumps({"cluster/ari": 0.25}) + "\n")
        if "Supervised" in str(config):  # the reference with the plus inputs scores 40
            return {"mAP": 40.0 if "INPUT.GRAY_WORLD" in opts else 30.0, "Rank-1": 40.0}
        return {"mAP": 20.0 if Path(config).name == "synthetic.yml" else 24.0, "Rank-1": 40.0}

    monkeypatch.setattr(sweep, "train", fake_train)
    evaluated = []

    def fake_untrained(config, opts):
        evaluated.append(list(opts))
        return {"mAP": 5.0 if "MODEL.BACKBONE.PRETRAIN" in opts else 10.0, "Rank-1": 8.0}

    monkeypatch.setattr(sweep, "untrained", fake_untrained)
    methods = "random_init,direct,published,plus,supervised,supervised_plus"
    args = ["--points", "default,cast6", "--methods", methods, "--output-dir", str(tmp_path), "SOLVER.MAX_EPOCH", "2"]
    sweep.main(args)
    assert len(calls) == 8 and len(evaluated) == 4  # 2 points x (published, plus, supervised, supervised_plus)
    assert [name for name, _ in calls[:4]] == ["synthetic.yml", "synthetic_plus.yml", "synthetic.yml", "synthetic.yml"]
    assert sum("INPUT.GRAY_WORLD" in opts for _, opts in calls) == 2  # supervised_plus of each point
    assert all(opts[-2:] == ["SOLVER.MAX_EPOCH", "2"] for _, opts in calls)  # the user's overrides win
    assert [("MODEL.BACKBONE.PRETRAIN" in opts) for opts in evaluated] == [True, False] * 2  # random init, direct
    table = (tmp_path / "table.md").read_text()
    # published vs supervised (20 / 30), plus vs supervised_plus (24 / 40); both vs direct transfer (10)
    assert "| cast6 | 6 | 0.15 | 1 | - | 5.0 | 10.0 | 20.0 | 0.25 | 67% | 2.0x | 24.0 | 0.25 | 60% | 2.4x | 30.0 | 40.0 |" \
        in table
    sweep.main(args)  # everything reused
    assert len(calls) == 8
    sweep.main(args[:-1] + ["3"])  # another command: run again, the old run kept aside
    assert len(calls) == 16
    assert len(list(tmp_path.glob("cast6/plus.replaced-*"))) == 1
    assert table.splitlines()[0] in capsys.readouterr().out


def test_random_start_table_compares_with_random_init(sweep, tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "train", lambda config, output_dir, opts, console=None: (
        output_dir.mkdir(parents=True), (output_dir / "metrics.json").write_text(""),
        {"mAP": 30.0 if "Supervised" in str(config) else 15.0, "Rank-1": 1.0})[-1])
    monkeypatch.setattr(sweep, "untrained", lambda config, opts: {"mAP": 3.0, "Rank-1": 1.0})
    sweep.main(["--start", "random", "--points", "bg1,occl1", "--output-dir", str(tmp_path),
                "--methods", "random_init,published,plus,supervised,ca_jaccard,ca_plus"])
    assert not (tmp_path / "bg1" / "direct").exists()
    table = (tmp_path / "table.md").read_text()
    lwtgpf = "15.0 | - | 50% | 5.0x | " * 4  # published, plus, ca_jaccard, ca_plus
    assert f"| occl1 | 1 | 0.15 | 1 | occl 1 | 3.0 | {lwtgpf}30.0 | - |" in table
    assert f"| bg1 | 1 | 1 | 1 | - | 3.0 | {lwtgpf}30.0 | - |" in table


def test_bad_arguments(sweep):
    with pytest.raises(SystemExit):
        sweep.main(["--points", "cast7"])
    with pytest.raises(SystemExit):
        sweep.main(["--methods", "plus", "SOLVER.MAX_EPOCH"])
