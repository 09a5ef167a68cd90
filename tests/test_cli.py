"""Command line: options after the KEY VALUE pairs, unknown keys with a suggestion."""
from pathlib import Path

import pytest

import lwtgpf  # noqa: F401
from lwtgpf.cli import ConfigError, load_config, parse_args

CONFIG = str(Path(__file__).resolve().parents[1] / "configs/LWTGPF/synthetic.yml")


def test_options_may_follow_the_overrides():
    args = parse_args(["--config-file", CONFIG, "MODEL.WEIGHTS", "w.pth", "--eval-only", "SOLVER.BASE_LR", "0.1",
                       "--num-gpus", "2", "--dist-url=tcp://127.0.0.1:1"])
    assert args.eval_only and args.num_gpus == 2 and args.dist_url == "tcp://127.0.0.1:1"
    assert args.opts == ["MODEL.WEIGHTS", "w.pth", "SOLVER.BASE_LR", "0.1"]
    assert load_config(args.config_file, args.opts).SOLVER.BASE_LR == 0.1


def test_bad_command_lines_are_explained(capsys):
    for argv, message in ((["SOLVER.BASE_LR", "0.1", "--eval-onyl"], "unknown option --eval-onyl"),
                          (["SOLVER.BASE_LR", "0.1", "OUTPUT_DIR"], "OUTPUT_DIR has no value")):
        with pytest.raises(SystemExit):
            parse_args(["--config-file", CONFIG, *argv])
        assert message in capsys.readouterr().err


def test_unknown_keys_suggest_the_closest(tmp_path):
    with pytest.raises(ConfigError, match="command line: unknown config key SOLVER.BASE_LRR; did you mean SOLVER.BASE_LR"):
        load_config(CONFIG, ["SOLVER.BASE_LRR", "0.1"])
    with pytest.raises(ConfigError, match="unknown config key CLUSTR.EPS; did you mean CLUSTER.EPS"):
        load_config(CONFIG, ["CLUSTR.EPS", "0.1"])
    yml = tmp_path / "mine.yml"
    yml.write_text(f"_BASE_: {CONFIG}\nMODEL:\n  WEIGHT: x.pth\n")
    with pytest.raises(ConfigError, match=r"mine\.yml: unknown config key MODEL\.WEIGHT; did you mean MODEL\.WEIGHTS"):
        load_config(str(yml))
