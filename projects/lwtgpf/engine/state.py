"""What decides the rest of a training run, saved in every checkpoint for an exact `--resume`.

A checkpoint holds, besides the model and the optimizer, a `trainer` entry: the epoch and the
last finished iteration, the run's seed, every process's torch / CUDA / numpy / python RNG
states, the metric history the writers need and, inside an epoch, the epoch's pseudo labels and
proxy memory. Sampler order, augmentation and loader workers draw from streams derived from the
seed (`lwtgpf.data.seeding`), so a loader rebuilt at batch b continues exactly. A run resumed
from any checkpoint therefore trains on CPU exactly as the uninterrupted run did, bit for bit.

`checkpoint_state` writes that entry; `resume_state` reads it back as a frozen `ResumeState`,
which is all the trainer and its hooks know of the interrupted run; `restore_processes` puts
back each process's RNG states.
"""
import hashlib
import json
import logging
import os
import random
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch
from fastreid.utils import comm
from fastreid.utils.events import EventStorage
from fastreid.utils.history_buffer import HistoryBuffer

from .checkpoint import CheckpointError

__all__ = ["ResumeState", "resume_state", "restore_processes", "checkpoint_state", "rng_state", "set_rng_state",
           "storage_state", "restore_storage", "truncate_metrics", "parameters_digest", "persistent_buffers"]

logger = logging.getLogger("fastreid." + __name__)

_HISTORY_KEPT = 20  # fast-reid's JSON and TensorBoard writers smooth over the last 20 values


def rng_state() -> dict:
    """This process's global RNG states, in types `torch.load(weights_only=True)` reads back."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        # this process's device only: querying every device would open a context on each
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "internal": list(internal), "gauss": py_gauss},
    }


def set_rng_state(state: dict) -> None:
    """Put back what `rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))


def storage_state(storage: EventStorage, last_write: int) -> dict:
    """The scalars fast-reid's writers still need: the latest of each, the last values of each
    history (for their median smoothing), and the last iteration written to metrics.json."""
    return {
        "latest": {k: [float(v), int(it)] for k, (v, it) in storage.latest().items()},
        "hints": {k: bool(v) for k, v in storage.smoothing_hints().items()},
        "history": {k: [[float(v), int(it)] for v, it in buf.values()[-_HISTORY_KEPT:]]
                    for k, buf in storage.histories().items()},
        "last_write": int(last_write),
    }


def restore_storage(storage: EventStorage, state: dict) -> None:
    """Fill a fresh EventStorage with what `storage_state` saved."""
    for key, values in state["history"].items():
        buf = HistoryBuffer()
        for value, it in values:
            buf.update(value, it)
        storage._history[key] = buf
    storage._latest_scalars.update({k: (v, it) for k, (v, it) in state["latest"].items()})
    storage._smoothing_hints.update(state["hints"])


def truncate_metrics(path: str, last_iteration: int) -> int:
    """Cut metrics.json after the rows of iterations <= `last_iteration` (what the checkpoint's run
    had written), in place, so the resumed run writes every later iteration once. Rows are
    appended in time order, so the first later row (or a line cut short) starts the cut.
    Returns the number of rows removed."""
    if not os.path.isfile(path):
        return 0
    with open(path, "r+b") as f:
        lines = f.read().splitlines(keepends=True)
        keep = 0
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                break
            if not line.endswith(b"\n") or row.get("iteration", -1) > last_iteration:
                break
            keep += 1
        f.truncate(sum(len(line) for line in lines[:keep]))
    return len(lines) - keep


def parameters_digest(model: torch.nn.Module, *tensors: torch.Tensor) -> str:
    """SHA-1 of the model's parameters and `tensors`: equal on every process of a healthy
    data-parallel run (buffers are left out: BatchNorm statistics are per process)."""
    h = hashlib.sha1()
    for t in [p for p in model.parameters()] + list(tensors):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def persistent_buffers(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """The model's buffers that its state dict holds (BatchNorm statistics, ...), live."""
    keys = set(model.state_dict(keep_vars=True))
    return {name: buf for name, buf in model.named_buffers() if name in keys}


def gather_rng_states() -> List[dict]:
    """Every process's `rng_state()`, in rank order (a collective: all processes call it)."""
    state = rng_state()
    return comm.all_gather(state) if comm.get_world_size() > 1 else [state]


def check_same_everywhere(digest: str, what: str) -> List[str]:
    """Gather `digest` from every process and stop when they differ; return them in rank order."""
    digests = comm.all_gather(digest) if comm.get_world_size() > 1 else [digest]
    if len(set(digests)) > 1:
        raise RuntimeError(f"The processes diverged: their {what} differ (digests by rank: {digests}); "
                           f"the run cannot be checkpointed consistently")
    return digests


@dataclass(frozen=True)
class ResumeState:
    """Where a run starts, and what the checkpoint it resumes from gives back to the hooks.

    A fresh run is `ResumeState()`: epoch 0, nothing restored.
    - `start_epoch`, `start_iter`: the first epoch and iteration to train, `start_batch` the
      iteration's place in its epoch (> 0 for a checkpoint taken inside an epoch);
    - `seed`: the data seed of the checkpoint's run (None: the config's);
    - `finished_epoch`: the epoch the checkpoint closed; its evaluation may still be due;
    - `epoch_state`: a checkpoint taken inside an epoch holds that epoch's `pseudo_labels` and
      proxy `memory`, which the epoch continues with instead of clustering again;
    - `storage`, `metrics_written`: the writers' scalar history and the last iteration the
      checkpoint's run had written to metrics.json.
    """

    path: str = ""
    start_epoch: int = 0
    start_iter: int = 0
    start_batch: int = 0
    seed: Optional[int] = None
    finished_epoch: Optional[int] = None
    epoch_state: Optional[dict] = None
    storage: Optional[dict] = None
    metrics_written: Optional[int] = None

    def restores(self, epoch: int) -> bool:
        """Whether `epoch` continues with the checkpoint's pseudo labels and memory."""
        return self.epoch_state is not None and epoch == self.start_epoch


def resume_state(checkpoint: dict, path: str, iters_per_epoch: int) -> ResumeState:
    """The `ResumeState` of a loaded checkpoint's extra entries (`epoch`, `trainer`), for a run of
    `iters_per_epoch` iterations an epoch."""
    state = checkpoint.get("trainer")
    epoch = int(checkpoint.get("epoch", -1))
    if state is None:  # written before checkpoints held the run's state
        logger.warning(f"{path} holds no RNG or loader state: training continues at the next epoch, "
                       f"but not exactly as the interrupted run would have")
        start = (epoch + 1) * iters_per_epoch
        return ResumeState(path, epoch + 1, start, metrics_written=start - 1)
    common = dict(path=path, seed=state["seed"], storage=state["storage"],
                  metrics_written=state["storage"]["last_write"])
    if state["epoch_done"]:
        return ResumeState(start_epoch=epoch + 1, start_iter=(epoch + 1) * iters_per_epoch, finished_epoch=epoch,
                           **common)
    if state["iters_per_epoch"] != iters_per_epoch:
        raise CheckpointError(f"{path} was saved inside an epoch of {state['iters_per_epoch']} iterations; "
                              f"SOLVER.ITERS_PER_EPOCH is {iters_per_epoch}: resume with the same value")
    epoch_state = {key: state[key] for key in ("pseudo_labels", "memory") if key in state} or None
    start_iter = state["iteration"] + 1
    return ResumeState(start_epoch=epoch, start_iter=start_iter, start_batch=start_iter - epoch * iters_per_epoch,
                       epoch_state=epoch_state, **common)


def restore_processes(checkpoint: dict, model: torch.nn.Module, path: str) -> None:
    """Put back this process's RNG states and, inside an epoch, its BatchNorm statistics, from a
    loaded checkpoint's `trainer` entry. With another number of processes than the checkpoint's
    run, every process takes process 0's RNG states (the run can then not be exact)."""
    state = checkpoint.get("trainer")
    if state is None:
        return
    if state["world_size"] == comm.get_world_size():
        set_rng_state(state["rng"][comm.get_rank()])
        if "buffers" in state:
            model.load_state_dict(state["buffers"][comm.get_rank()], strict=False)
        return
    logger.warning(f"{path} was saved by {state['world_size']} processes, this run has "
                   f"{comm.get_world_size()}: the RNG states of the model's random layers differ "
                   f"from the interrupted run's")
    set_rng_state(state["rng"][0])


def checkpoint_state(model: torch.nn.Module, iteration: int, epoch_done: bool, *, iters_per_epoch: int, seed: int,
                     storage: EventStorage, last_write: int, epoch_state: Optional[dict] = None) -> dict:
    """The `trainer` entry of a checkpoint (see the module docstring): a collective call, every
    process makes it. `epoch_state` holds the epoch's `pseudo_labels` and `memory` of an
    unsupervised run; the caller passes it inside an epoch only (at an epoch's end the next epoch
    clusters again)."""
    state = {
        "iteration": iteration,
        "epoch_done": epoch_done,
        "iters_per_epoch": iters_per_epoch,
        "seed": seed,
        "world_size": comm.get_world_size(),
        "rng": gather_rng_states(),
        "storage": storage_state(storage, last_write),
    }
    tensors = []
    if comm.get_world_size() > 1 and not epoch_done:  # BatchNorm statistics differ between processes
        state["buffers"] = comm.all_gather({k: v.detach().cpu().clone() for k, v in persistent_buffers(model).items()})
    if epoch_state is not None:
        state.update(epoch_state)
        tensors = state["pseudo_labels"] + [state["memory"][k] for k in sorted(state["memory"])]
    state["digests"] = check_same_everywhere(parameters_digest(model, *tensors),
                                             "parameters, pseudo labels or proxy memories")
    return state
