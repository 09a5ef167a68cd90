"""What decides the rest of a training run, saved in every checkpoint for an exact `--resume`.

A checkpoint holds, besides the model and the optimizer, a `trainer` entry: the epoch and the
last finished iteration, the run's seed, every process's torch / CUDA / numpy / python RNG
states, the metric history the writers need and, inside an epoch, the epoch's pseudo labels and
proxy memory. Sampler order, augmentation and loader workers draw from streams derived from the
seed (`lwtgpf.data.seeding`), so a loader rebuilt at batch b continues exactly. A run resumed
from any checkpoint therefore trains on CPU exactly as the uninterrupted run did, bit for bit.
"""
import hashlib
import json
import logging
import os
import random
from typing import Dict, List

import numpy as np
import torch
from fastreid.engine.train_loop import HookBase
from fastreid.utils import comm
from fastreid.utils.events import EventStorage
from fastreid.utils.history_buffer import HistoryBuffer

__all__ = ["CheckpointHook", "rng_state", "set_rng_state", "storage_state", "restore_storage",
           "truncate_metrics", "parameters_digest", "persistent_buffers"]

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


class CheckpointHook(HookBase):
    """Saves the run's full state (see the module docstring) after every epoch, as `model_last`,
    `model_XXXX` every `period` epochs and `model_final` after the last one, and as `model_last`
    every `iters` iterations inside an epoch (0: never). It runs before the evaluation hook, so an
    evaluation that fails loses nothing. Every process takes part (their RNG states are
    gathered); the main process writes."""

    def __init__(self, checkpointer, period: int, iters: int, max_epoch: int, iters_per_epoch: int):
        self.checkpointer = checkpointer
        self.period = period
        self.iters = iters
        self.max_epoch = max_epoch
        self.iters_per_epoch = iters_per_epoch

    def after_step(self):
        it = self.trainer.iter
        last_of_epoch = (it + 1) % self.iters_per_epoch == 0
        if self.iters > 0 and (it + 1) % self.iters == 0 and not last_of_epoch:
            self._save("model_last", it, epoch_done=False)

    def after_epoch(self):
        epoch = self.trainer.epoch
        if epoch + 1 >= self.max_epoch:
            name = "model_final"
        elif self.period > 0 and (epoch + 1) % self.period == 0:
            name = f"model_{epoch:04d}"
        else:
            name = "model_last"
        self._save(name, self.trainer.iter - 1, epoch_done=True)

    def _save(self, name: str, iteration: int, epoch_done: bool) -> None:
        state = self.trainer.training_state(iteration, epoch_done)
        self.checkpointer.save(name, epoch=self.trainer.epoch, iteration=iteration, trainer=state)

