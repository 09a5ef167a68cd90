"""The run state a checkpoint holds: RNG states, metric history, metrics.json after a crash."""
import json
import logging
import random

import numpy as np
import pytest
import torch
from fastreid.utils.events import EventStorage, JSONWriter

import lwtgpf  # noqa: F401
from lwtgpf.engine.checkpoint import CheckpointError
from lwtgpf.engine.state import (ResumeState, restore_storage, resume_state, rng_state, set_rng_state, storage_state,
                               truncate_metrics)


def draws():
    return torch.rand(2).tolist(), np.random.rand(2).tolist(), np.random.randn(), [random.random(), random.gauss(0, 1)]


def test_rng_states_survive_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.randn(), random.gauss(0, 1)  # leave cached Gaussians behind: they are state too
    torch.save({"rng": rng_state()}, tmp_path / "s.pth")
    expected = draws()
    draws()
    set_rng_state(torch.load(tmp_path / "s.pth", weights_only=True)["rng"])
    assert draws() == expected


def test_storage_restores_what_the_writers_print(tmp_path):
    def run(storage, start, stop):
        for it in range(start, stop):
            storage.iter = it
            storage.put_scalar("loss", float(it * it % 7))
            storage.put_scalar("lr", 0.1 * it, smoothing_hint=False)

    full = EventStorage(0)
    run(full, 0, 30)
    saved = storage_state(full, last_write=29)
    torch.save(saved, tmp_path / "s.pth")
    run(full, 30, 35)

    resumed = EventStorage(30)
    restore_storage(resumed, torch.load(tmp_path / "s.pth", weights_only=True))
    run(resumed, 30, 35)
    assert resumed.latest_with_smoothing_hint(20) == full.latest_with_smoothing_hint(20)


def test_metrics_json_is_cut_after_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.json"
    rows = [{"iteration": 3, "loss": 1.0}, {"iteration": 4, "mAP": 5.0}, {"iteration": 5, "loss": 2.0},
            {"iteration": 7, "loss": 3.0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"iteration": 8, "lo')  # killed mid-line
    assert truncate_metrics(str(path), 5) == 2
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows[:3]
    with EventStorage(6) as storage:  # fast-reid's writer appends after the cut
        writer = JSONWriter(str(path))
        writer._last_write = 5
        storage.put_scalar("loss", 9.0)
        writer.write()
        writer.close()
    assert [json.loads(line)["iteration"] for line in path.read_text().splitlines()] == [3, 4, 5, 6]
    assert truncate_metrics(str(tmp_path / "none.json"), 5) == 0


def test_diverged_processes_stop_the_checkpoint(monkeypatch):
    from fastreid.utils import comm

    from lwtgpf.engine import state

    model, copy = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    copy.load_state_dict(model.state_dict())
    digest = state.parameters_digest(model)
    assert state.parameters_digest(copy) == digest
    with torch.no_grad():
        copy.bias[0] += 1e-7
    assert state.parameters_digest(copy) != digest
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(comm, "all_gather", lambda value: [value, "0" * 40])
    with pytest.raises(RuntimeError, match="The processes diverged: their weights differ"):
        state.check_same_everywhere(digest, "weights")


def saved_state(epoch_done, iteration, **extra):
    return {"iteration": iteration, "epoch_done": epoch_done, "iters_per_epoch": 10, "seed": 77, "world_size": 1,
            "rng": [rng_state()], "storage": {"latest": {}, "hints": {}, "history": {}, "last_write": iteration},
            **extra}


def test_resume_state_after_a_finished_epoch():
    state = resume_state({"epoch": 2, "trainer": saved_state(True, 29)}, "c.pth", iters_per_epoch=10)
    assert state == ResumeState(path="c.pth", start_epoch=3, start_iter=30, seed=77, finished_epoch=2,
                                storage=state.storage, metrics_written=29)
    assert not state.restores(3)


def test_resume_state_inside_an_epoch_restores_that_epoch_only():
    labels = [torch.tensor([0, 1, -1]), torch.tensor([0, 2, -1])]
    memory = {"memory": torch.ones(1, 3, 4)}
    trainer = saved_state(False, 24, pseudo_labels=labels, memory=memory)
    state = resume_state({"epoch": 2, "trainer": trainer}, "c.pth", iters_per_epoch=10)
    assert (state.start_epoch, state.start_iter, state.start_batch, state.finished_epoch) == (2, 25, 5, None)
    assert state.epoch_state["pseudo_labels"] is labels and state.epoch_state["memory"] is memory
    assert state.restores(2) and not state.restores(3)
    # a supervised run has no epoch state to give back, only where to start
    supervised = resume_state({"epoch": 2, "trainer": saved_state(False, 24)}, "c.pth", iters_per_epoch=10)
    assert supervised.start_batch == 5 and supervised.epoch_state is None and not supervised.restores(2)
    with pytest.raises(CheckpointError, match="c.pth was saved inside an epoch of 10 iterations; SOLVER.ITERS_PER_EPOCH is 12"):
        resume_state({"epoch": 2, "trainer": trainer}, "c.pth", iters_per_epoch=12)


def test_resume_state_of_a_checkpoint_without_run_state(caplog):
    with caplog.at_level(logging.WARNING):
        state = resume_state({"epoch": 1}, "old.pth", iters_per_epoch=10)
    assert state == ResumeState(path="old.pth", start_epoch=2, start_iter=20, metrics_written=19)
    assert "old.pth holds no RNG or loader state" in caplog.text
    assert ResumeState() == ResumeState(start_epoch=0, start_iter=0) and not ResumeState().restores(0)
