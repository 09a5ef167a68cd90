"""The run state a checkpoint holds: RNG states, metric history, metrics.json after a crash."""
import json
import logging
import random

import numpy as np
import pytest
import torch
from fastreid.utils.events import EventStorage, JSONWriter

import lwtgpf  # noqa: F401
from lwtgpf.engine.cluster_health import check_cluster_sizes
from lwtgpf.engine.state import restore_storage, rng_state, set_rng_state, storage_state, truncate_metrics


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


def test_one_giant_cluster_is_reported_with_a_smaller_eps(caplog):
    stats = {"nn_dist_p10": 0.0, "nn_dist_p50": 0.21, "nn_dist_p90": 0.4,
             "core_dist_p10": 0.1, "core_dist_p50": 0.347, "core_dist_p90": 0.6}
    labels = np.array([0] * 6 + [1, 1, -1, -1])
    with caplog.at_level(logging.WARNING):
        check_cluster_sizes(labels, stats, eps=0.6, max_fraction=0.5)
    assert stats["largest_cluster_fraction"] == 0.6
    assert "One cluster holds 6 of 10 samples (60% > CLUSTER.MAX_CLUSTER_FRACTION 50%)" in caplog.text
    assert "core_dist_p50 0.347" in caplog.text and "try CLUSTER.EPS 0.34" in caplog.text
    caplog.clear()
    stats = {"core_dist_p50": 0.7}
    with caplog.at_level(logging.WARNING):
        check_cluster_sizes(labels, stats, eps=0.6, max_fraction=0.5)
    assert "try CLUSTER.EPS 0.50" in caplog.text
    caplog.clear()
    check_cluster_sizes(np.array([0, 0, 1, 1, 2]), stats, eps=0.6, max_fraction=0.5)
    assert stats["largest_cluster_fraction"] == 0.4 and not caplog.text


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
