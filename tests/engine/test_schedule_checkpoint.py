import os

import pytest
import torch

import lwtgpf  # noqa: F401
from lwtgpf.engine.checkpoint import AtomicCheckpointer
from lwtgpf.engine.hooks import EpochLRScheduler


def reference_lr(base, epoch, steps=(20, 40), gamma=0.1, warmup_factor=0.01, warmup_epochs=10):
    # METHOD.md section 5, written out: linear warm-up over 10 epochs from 0.01x, x0.1 at 20 and 40.
    lr = base
    if epoch < warmup_epochs:
        lr *= warmup_factor + (1 - warmup_factor) * epoch / warmup_epochs
    for s in steps:
        if epoch >= s:
            lr *= gamma
    return lr


def test_epoch_schedule_follows_the_published_recipe():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD([{"params": params[:1], "lr": 3.5e-4}, {"params": params[1:], "lr": 7e-4}], lr=1.0)
    sched = EpochLRScheduler(opt, steps=[40, 20], gamma=0.1, warmup_factor=0.01, warmup_epochs=10)
    for epoch in list(range(50)) + [3, 0]:  # also going back (resume from an earlier epoch)
        sched.set_epoch(epoch)
        assert opt.param_groups[0]["lr"] == pytest.approx(reference_lr(3.5e-4, epoch), rel=1e-12)
        assert opt.param_groups[1]["lr"] == pytest.approx(reference_lr(7e-4, epoch), rel=1e-12)


def test_checkpoint_is_written_atomically(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    ckpt = AtomicCheckpointer(model, str(tmp_path))
    ckpt.save("model_last", epoch=3)
    before = (tmp_path / "model_last.pth").read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # killed half-way through writing

    monkeypatch.setattr(torch, "save", crash)
    with torch.no_grad():
        model.weight.add_(1)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("model_last", epoch=4)
    assert (tmp_path / "model_last.pth").read_bytes() == before
    assert (tmp_path / "last_checkpoint").read_text() == "model_last.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_last.pth"]  # no temporary left


def test_checkpoint_round_trip_and_missing_file(tmp_path):
    model = torch.nn.Linear(3, 2)
    AtomicCheckpointer(model, str(tmp_path)).save("model_final", epoch=7)
    other = torch.nn.Linear(3, 2)
    extra = AtomicCheckpointer(other).load(str(tmp_path / "model_final.pth"))
    assert extra["epoch"] == 7
    assert torch.equal(other.weight, model.weight)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        AtomicCheckpointer(other).load(str(tmp_path / "nope.pth"))
