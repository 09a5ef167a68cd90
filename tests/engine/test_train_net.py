"""End to end: tools/train_net.py trains on a tiny synthetic set, evaluates its checkpoint, and
continues after a real SIGKILL exactly as the uninterrupted run did (one and two processes)."""
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs/LWTGPF/synthetic.yml")
SUPERVISED = str(ROOT / "configs/Supervised/synthetic.yml")
PAUSING = str(Path(__file__).resolve().parent / "pausing_train_net.py")
TINY = [
    "MODEL.DEVICE", "cpu",
    "MODEL.BACKBONE.PRETRAIN", "False",  # random init: the demo's pretrained file is of another size
    "MODEL.BACKBONE.LEWINVIT.EMBED_DIM", "8",
    "MODEL.BACKBONE.LEWINVIT.DEPTHS", "[1,1,1,1]",
    "MODEL.BACKBONE.LEWINVIT.NUM_HEADS", "[1,1,2,2]",
    "MODEL.BACKBONE.NUM_CAMERAS", "3",
    "MODEL.BACKBONE.DROP_PATH_RATIO", "0.1",  # random layers: the model draws from torch's RNG too
    "INPUT.SIZE_TRAIN", "[96,32]", "INPUT.SIZE_TEST", "[96,32]",
    "DATASETS.SYNTHETIC.NUM_CAMERAS", "3",
    "DATASETS.SYNTHETIC.NUM_TRAIN_IDS", "12",
    "DATASETS.SYNTHETIC.NUM_TEST_IDS", "6",
    "DATASETS.SYNTHETIC.IMAGES_PER_ID", "8",
    "CLUSTER.EPS", "0.7", "CLUSTER.MIN_SAMPLES", "2", "CLUSTER.K1", "6", "CLUSTER.K2", "2",
    "MODEL.MEMORY.NEG_K", "5",
    "DATALOADER.NUM_WORKERS", "0",
    "SOLVER.IMS_PER_BATCH", "8", "SOLVER.WARMUP_EPOCHS", "1",
    "SOLVER.STEPS", "[1]", "SOLVER.CHECKPOINT_PERIOD", "0", "SOLVER.LOG_PERIOD", "1",
    "TEST.IMS_PER_BATCH", "16",
]
# 2 epochs x 4 iterations, model_last also after iterations 1 and 5, evaluation after each epoch
RUN = ["SOLVER.MAX_EPOCH", "2", "SOLVER.ITERS_PER_EPOCH", "4", "SOLVER.CHECKPOINT_ITERS", "2", "TEST.EVAL_PERIOD", "1"]
TIMING = {"time", "data_time", "eta_seconds", "cluster/seconds"}
MEASURED = ("_seconds", "_host_gb", "_device_gb")  # per-stage time and memory of the clustering


def train_net(data, *opts, flags=(), pause=None, check=True, config=CONFIG):
    """Run tools/train_net.py; with `pause` ("iter:N", "save:K", "cluster:E"), SIGKILL it there."""
    env = dict(os.environ, FASTREID_DATASETS=str(data), OMP_NUM_THREADS="1")  # 2 processes share 2 cores
    script = str(ROOT / "tools/train_net.py")
    if pause:
        marker = data.parent / f"pause-{time.monotonic_ns()}"
        env.update(PAUSE_AT=pause, PAUSE_MARKER=str(marker))
        script = PAUSING
    cmd = [sys.executable, script, "--config-file", config, *flags, *TINY, *opts]
    if not pause:
        result = subprocess.run(cmd, cwd=data.parent, env=env, capture_output=True, text=True, timeout=900)
        if check:
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result
    proc = subprocess.Popen(cmd, cwd=data.parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 900
    while not marker.exists():
        assert proc.poll() is None, f"exited {proc.returncode} before reaching {pause}: {proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: every rank of a multi-process run
    proc.wait()
    proc.stderr.close()


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def max_abs_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def metrics(output_dir):
    rows = [json.loads(line) for line in (output_dir / "metrics.json").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING and not k.endswith(MEASURED)} for r in rows]


def labels(output_dir, epoch):
    with open(output_dir / "pseudo_labels" / f"epoch_{epoch:03d}.csv") as f:
        return list(csv.reader(f))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tmp_path_factory.mktemp("lwtgpf") / "data"


@pytest.fixture(scope="module")
def reference(data):
    """The uninterrupted single-process run every other run is compared with."""
    out = data.parent / "reference"
    train_net(data, *RUN, "OUTPUT_DIR", str(out))
    return out


@pytest.mark.slow
def test_outputs_and_eval_only(data, reference):
    for name in ("model_last.pth", "model_final.pth", "config.yaml", "log.txt", "last_checkpoint"):
        assert (reference / name).is_file(), name
    assert sorted(p.name for p in (reference / "pseudo_labels").iterdir()) == ["epoch_000.csv", "epoch_001.csv"]
    assert any(p.name.startswith("events.out.tfevents") for p in reference.iterdir())
    rows = metrics(reference)
    assert [r["iteration"] for r in rows] == list(range(9))  # 8 steps + the final evaluation, each once
    for key in ("global_off", "global_on", "part_off", "part_on", "lr", "cluster/num_clusters", "cluster/nmi",
                "cluster/largest_cluster_fraction"):
        assert any(key in r for r in rows), key
    evaluations = [r for r in rows if "mAP" in r]
    assert [r["iteration"] for r in evaluations] == [4, 8]

    # --eval-only (written after the KEY VALUE pairs) on the final weights gives the final numbers
    result = train_net(data, "MODEL.WEIGHTS", str(reference / "model_final.pth"),
                       "OUTPUT_DIR", str(data.parent / "eval"), "--eval-only")
    log = result.stdout + result.stderr
    assert f"{evaluations[-1]['mAP']:.2f}" in log and f"{evaluations[-1]['Rank-1']:.2f}" in log
    assert "Loaded 1" in log and "Starting training" not in log


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_resume_after_sigkill_equals_the_uninterrupted_run(data, reference):
    out = data.parent / "killed"
    opts = [*RUN, "OUTPUT_DIR", str(out)]
    train_net(data, *opts, pause="iter:2")  # mid-epoch 0: resumes after iteration 1
    train_net(data, *opts, flags=["--resume"], pause="save:1")  # while writing the end of epoch 0
    assert [p.name for p in out.iterdir() if p.name.startswith(".tmp-")], "the kill left a half-written file"
    train_net(data, *opts, flags=["--resume"], pause="cluster:1")  # clustering of epoch 1, evaluation 0 done
    result = train_net(data, *opts, flags=["--resume"])  # from the end of epoch 0: evaluation 0 again, epoch 1
    log = result.stdout + result.stderr
    assert "Removed 1 temporary file(s)" not in log and not [p for p in out.iterdir() if p.name.startswith(".tmp-")]
    assert "Resuming from" in log and "at epoch 1" in log

    assert max_abs_diff(weights(out / "model_final.pth"), weights(reference / "model_final.pth")) == 0
    assert metrics(out) == metrics(reference)  # every iteration once, every value equal
    for epoch in (0, 1):
        assert labels(out, epoch) == labels(reference, epoch)
    second = (out / "log.txt").read_text()
    assert "Removed 1 temporary file(s) left by a save that was interrupted" in second
    assert "at epoch 0, iteration 2 of 4" in second


@pytest.mark.slow
def test_two_processes(data, reference):
    opts = [*RUN, "SOLVER.CHECKPOINT_ITERS", "3"]
    full = data.parent / "ddp"
    log = train_net(data, *opts, "OUTPUT_DIR", str(full), flags=["--num-gpus", "2"]).stdout
    assert "World size: 2" in log

    # both processes continue exactly after a SIGKILL of the whole run
    killed = data.parent / "ddp_killed"
    train_net(data, *opts, "OUTPUT_DIR", str(killed), flags=["--num-gpus", "2"], pause="iter:3")
    state = torch.load(killed / "model_last.pth", weights_only=True)["trainer"]
    assert state["iteration"] == 2 and not state["epoch_done"] and len(state["rng"]) == 2
    assert len(state["buffers"]) == 2 and len(set(state["digests"])) == 1  # same weights, labels, memory
    train_net(data, *opts, "OUTPUT_DIR", str(killed), flags=["--num-gpus", "2", "--resume"])
    assert max_abs_diff(weights(killed / "model_final.pth"), weights(full / "model_final.pth")) == 0
    assert metrics(killed) == metrics(full)

    # Same global batch, same images and augmentation as one process: the first pseudo labels agree.
    # Afterwards the runs differ (docs/RELIABILITY.md): BatchNorm normalises each process's half batch.
    assert labels(full, 0) == labels(reference, 0)
    final = torch.load(full / "model_final.pth", weights_only=True)["trainer"]
    assert len(set(final["digests"])) == 1


@pytest.mark.slow
def test_supervised_run_resumes_exactly(data):
    opts = [*RUN, "SOLVER.CHECKPOINT_ITERS", "3", "MODEL.BACKBONE.FEAT_DIM", "64"]  # 8 x TINY's EMBED_DIM
    full = data.parent / "supervised"
    train_net(data, *opts, "OUTPUT_DIR", str(full), config=SUPERVISED)
    killed = data.parent / "supervised_killed"
    train_net(data, *opts, "OUTPUT_DIR", str(killed), config=SUPERVISED, pause="iter:3")  # mid-epoch 0
    state = torch.load(killed / "model_last.pth", weights_only=True)["trainer"]
    assert (state["iteration"], state["epoch_done"]) == (2, False) and "pseudo_labels" not in state
    log = train_net(data, *opts, "OUTPUT_DIR", str(killed), config=SUPERVISED, flags=["--resume"]).stdout
    assert "at epoch 0, iteration 3 of 4" in (killed / "log.txt").read_text()
    assert max_abs_diff(weights(killed / "model_final.pth"), weights(full / "model_final.pth")) == 0
    assert metrics(killed) == metrics(full)
    assert "Evaluation results" in log


@pytest.mark.slow
def test_resume_with_another_number_of_processes(data, reference):
    out = data.parent / "two_then_one"
    opts = [*RUN, "OUTPUT_DIR", str(out)]
    train_net(data, *opts, flags=["--num-gpus", "2"], pause="iter:3")  # model_last after iteration 1
    saved = torch.load(out / "model_last.pth", weights_only=True)["trainer"]
    assert saved["world_size"] == 2 and saved["iteration"] == 1
    first_labels = labels(out, 0)
    train_net(data, *opts, flags=["--resume"])
    log = (out / "log.txt").read_text()
    assert "was saved by 2 processes, this run has 1" in log and "at epoch 0, iteration 2 of 4" in log
    # epoch 0 goes on with the two-process run's pseudo labels and memory; epoch 1 clusters again
    assert labels(out, 0) == first_labels
    assert [r["iteration"] for r in metrics(out)] == sorted({r["iteration"] for r in metrics(out)})
    assert {r["iteration"] for r in metrics(out)} >= set(range(8))
    final = torch.load(out / "model_final.pth", weights_only=True)
    assert final["trainer"]["world_size"] == 1 and final["iteration"] == 7
    assert max_abs_diff(weights(out / "model_final.pth"), weights(reference / "model_final.pth")) > 0


@pytest.mark.slow
def test_failed_evaluation_keeps_the_final_checkpoint(data, reference):
    # A copy of the synthetic set with a query image cut short: its header reads, its pixels do not.
    folder = data.parent / "cut"
    shutil.copytree(next((data / "SyntheticReID").iterdir()), folder)
    victim = sorted((folder / "query").iterdir())[0]
    intact = victim.read_bytes()
    victim.write_bytes(intact[: len(intact) // 2])
    out = data.parent / "cut_run"
    opts = ["SOLVER.MAX_EPOCH", "1", "SOLVER.ITERS_PER_EPOCH", "2", "DATASETS.NAMES", '("MarketLayout",)',
            "DATASETS.TESTS", '("MarketLayout",)', "DATASETS.CUSTOM_DIR", str(folder), "OUTPUT_DIR", str(out)]
    result = train_net(data, *opts, check=False)
    assert result.returncode != 0
    assert f"error: Evaluation after epoch 0 failed: UnreadableImageError: cannot read image {victim}" in result.stderr
    assert f"saved in {out / 'model_final.pth'}" in result.stderr
    assert (out / "model_final.pth").is_file()

    victim.write_bytes(intact)
    log = train_net(data, *opts, flags=["--resume"]).stdout
    assert "Evaluation results" in log and "Starting training from epoch 1" in log
    assert [r["iteration"] for r in metrics(out) if "mAP" in r] == [2]


def test_eval_only_rejects_a_foreign_checkpoint(data, tmp_path):
    foreign = tmp_path / "resnet18.pth"
    torch.save({"model": timm.create_model("resnet18").state_dict()}, foreign)
    result = train_net(data, "--eval-only", "MODEL.WEIGHTS", str(foreign), "OUTPUT_DIR", str(tmp_path / "o"),
                       check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {foreign}: none of its ")


def test_eval_only_without_weights_is_a_clear_error(data, tmp_path):
    result = train_net(data, "OUTPUT_DIR", str(tmp_path / "o"), "--eval-only", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error: --eval-only needs a checkpoint: add MODEL.WEIGHTS" in result.stderr


@pytest.mark.slow
def test_two_cpu_processes_from_num_gpus_and_torchrun(tmp_path):
    # One epoch with one process, then with two gloo processes started three ways: --num-gpus 2,
    # torchrun --nproc-per-node 2, and torchrun on two "nodes" of one process each (static
    # rendezvous on this machine). Same seeds and one thread per process everywhere.
    env = dict(os.environ, FASTREID_DATASETS=str(tmp_path / "data"), OMP_NUM_THREADS="1")
    opts = [*TINY, "SOLVER.MAX_EPOCH", "1", "SOLVER.ITERS_PER_EPOCH", "3", "TEST.EVAL_PERIOD", "1", "SEED", "0"]
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
