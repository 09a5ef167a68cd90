"""End to end: tools/train_net.py trains on a tiny synthetic set, resumes, and evaluates its checkpoint."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_cpu_processes_from_num_gpus_and_torchrun(tmp_path):
    # One epoch with one process, then with two gloo processes started three ways: --num-gpus 2,
    # torchrun --nproc-per-node 2, and torchrun on two "nodes" of one process each (static
    # rendezvous on this machine). Same seeds and one thread per process everywhere.
    env = dict(os.environ, FASTREID_DATASETS=str(tmp_path / "data"), OMP_NUM_THREADS="1")
    opts = [*TINY, "SOLVER.MAX_EPOCH", "1", "TEST.EVAL_PERIOD", "1", "SEED", "0"]
    train = [str(ROOT / "tools/train_net.py"), "--config-file", str(ROOT / "configs/LWTGPF/synthetic.yml")]
    torchrun = [sys.executable, "-m", "torch.distributed.run"]

    def run(cmds, name, batch, flags=()):
        procs = [subprocess.Popen(cmd + train + list(flags) + opts + ["TEST.IMS_PER_BATCH", str(batch), "OUTPUT_DIR",
                                                                       str(tmp_path / name)],
                                  cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for cmd in cmds]
        logs = [proc.communicate(timeout=600)[0] for proc in procs]
        for proc, log in zip(procs, logs):
            assert proc.returncode == 0, log[-3000:]
        return "".join(logs)

    # every process extracts batches of 8 images, so each image's features come from the same computation
    run([[sys.executable]], "one", 8)
    assert "World size: 2" in run([[sys.executable]], "spawn", 16, ["--num-gpus", "2"])
    log = run([torchrun + ["--nproc-per-node", "2", "--master-port", str(_free_port())]], "torchrun", 16)
    assert "World size: 2" in log
    port = str(_free_port())
    run([torchrun + ["--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1",
                     "--master-addr", "127.0.0.1", "--master-port", port] for node in range(2)], "nodes", 16)

    labels = (tmp_path / "one" / "pseudo_labels" / "epoch_000.csv").read_text()
    assert len(set(row.split(",")[2] for row in labels.splitlines()[1:])) > 3  # several clusters
    weights = torch.load(tmp_path / "spawn" / "model_final.pth", weights_only=False)["model"]
    for name in ("spawn", "torchrun", "nodes"):
        assert (tmp_path / name / "pseudo_labels" / "epoch_000.csv").read_text() == labels, name
        other = torch.load(tmp_path / name / "model_final.pth", weights_only=False)["model"]
        assert other.keys() == weights.keys()
        assert all(torch.equal(other[k], weights[k]) for k in weights), name
    with pytest.raises(subprocess.CalledProcessError) as error:  # torchrun and --num-gpus do not mix
        subprocess.run(torchrun + ["--nproc-per-node", "1", *train, "--num-gpus", "2", *opts],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=True)
    assert "leave out --num-gpus" in error.value.stderr
