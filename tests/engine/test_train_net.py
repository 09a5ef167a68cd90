"""End to end: tools/train_net.py trains on a tiny synthetic set, resumes, and evaluates its checkpoint."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "MODEL.DEVICE", "cpu",
    "MODEL.BACKBONE.LEWINVIT.EMBED_DIM", "8",
    "MODEL.BACKBONE.LEWINVIT.DEPTHS", "[1,1,1,1]",
    "MODEL.BACKBONE.LEWINVIT.NUM_HEADS", "[1,1,2,2]",
    "MODEL.BACKBONE.NUM_CAMERAS", "3",
    "INPUT.SIZE_TRAIN", "[96,32]", "INPUT.SIZE_TEST", "[96,32]",
    "DATASETS.SYNTHETIC.NUM_CAMERAS", "3",
    "DATASETS.SYNTHETIC.NUM_TRAIN_IDS", "12",
    "DATASETS.SYNTHETIC.NUM_TEST_IDS", "6",
    "DATASETS.SYNTHETIC.IMAGES_PER_ID", "8",
    "CLUSTER.EPS", "0.7", "CLUSTER.MIN_SAMPLES", "2", "CLUSTER.K1", "6", "CLUSTER.K2", "2",
    "MODEL.MEMORY.NEG_K", "5",
    "DATALOADER.NUM_WORKERS", "0",
    "SOLVER.IMS_PER_BATCH", "8", "SOLVER.ITERS_PER_EPOCH", "3", "SOLVER.WARMUP_EPOCHS", "1",
    "SOLVER.STEPS", "[1]", "SOLVER.CHECKPOINT_PERIOD", "0", "SOLVER.LOG_PERIOD", "1",
    "TEST.IMS_PER_BATCH", "16",
]


def train_net(tmp_path, *opts, flags=()):
    env = dict(os.environ, FASTREID_DATASETS=str(tmp_path / "data"))
    cmd = [sys.executable, str(ROOT / "tools/train_net.py"), "--config-file",
           str(ROOT / "configs/LWTGPF/synthetic.yml"), *flags, *opts]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def evaluations(output_dir):
    rows = [json.loads(line) for line in (output_dir / "metrics.json").read_text().splitlines()]
    return [r for r in rows if "mAP" in r]


@pytest.mark.slow
def test_train_resume_and_eval_only(tmp_path):
    out = tmp_path / "run"
    log = train_net(tmp_path, *TINY, "SOLVER.MAX_EPOCH", "2", "TEST.EVAL_PERIOD", "2", "OUTPUT_DIR", str(out))
    assert "Evaluation results" in log
    for name in ("model_last.pth", "model_final.pth", "config.yaml", "log.txt", "last_checkpoint"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "pseudo_labels").iterdir()) == ["epoch_000.csv", "epoch_001.csv"]
    assert any(p.name.startswith("events.out.tfevents") for p in out.iterdir())
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    for key in ("global_off", "global_on", "part_off", "part_on", "lr", "cluster/num_clusters", "cluster/nmi"):
        assert any(key in r for r in rows), key
    trained = evaluations(out)[-1]

    # --resume continues at the epoch after the last checkpoint (epoch 2 of 3).
    log = train_net(tmp_path, *TINY, "SOLVER.MAX_EPOCH", "3", "TEST.EVAL_PERIOD", "3", "OUTPUT_DIR", str(out),
                    flags=["--resume"])
    assert "Starting training from epoch 2" in log
    assert (out / "pseudo_labels" / "epoch_002.csv").is_file()

    # --eval-only on the first run's weights gives the first run's numbers.
    weights = tmp_path / "first.pth"
    train_net(tmp_path, *TINY, "SOLVER.MAX_EPOCH", "2", "TEST.EVAL_PERIOD", "2",
              "OUTPUT_DIR", str(tmp_path / "again"))
    (tmp_path / "again" / "model_final.pth").rename(weights)
    again = evaluations(tmp_path / "again")[-1]
    log = train_net(tmp_path, *TINY, "MODEL.WEIGHTS", str(weights), "OUTPUT_DIR", str(tmp_path / "eval"),
                    flags=["--eval-only"])
    assert f"{again['mAP']:.2f}" in log and f"{again['Rank-1']:.2f}" in log
    assert trained["mAP"] >= 0


def test_eval_only_without_weights_is_a_clear_error(tmp_path):
    env = dict(os.environ, FASTREID_DATASETS=str(tmp_path / "data"))
    cmd = [sys.executable, str(ROOT / "tools/train_net.py"), "--config-file",
           str(ROOT / "configs/LWTGPF/synthetic.yml"), "--eval-only", *TINY, "OUTPUT_DIR", str(tmp_path / "o")]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "MODEL.WEIGHTS" in result.stderr


@pytest.mark.slow
def test_two_cpu_processes(tmp_path):
    # --num-gpus with MODEL.DEVICE cpu: gloo processes, one global batch, one memory.
    out = tmp_path / "ddp"
    log = train_net(tmp_path, *TINY, "SOLVER.MAX_EPOCH", "1", "TEST.EVAL_PERIOD", "1", "OUTPUT_DIR", str(out),
                    flags=["--num-gpus", "2"])
    assert "World size: 2" in log and "Evaluation results" in log
    assert (out / "model_final.pth").is_file()
