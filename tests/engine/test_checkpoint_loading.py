"""Strict checkpoint loading: what fits loads, what does not stops with the keys named."""
import logging
import os

import pytest
import timm
import torch
from torch import nn

import lwtgpf  # noqa: F401
from lwtgpf.engine.checkpoint import AtomicCheckpointer, CheckpointError


class Net(nn.Module):
    def __init__(self, width: int = 4, cameras: int = 3, sie_shape: str = "2d"):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.proj = nn.Linear(width, width)
        rows = (cameras, width) if sie_shape == "2d" else (cameras, 1, width)
        self.backbone.sie_embed = nn.Parameter(torch.randn(rows))
        self.head = nn.BatchNorm1d(width)


def save(tmp_path, name, obj):
    path = str(tmp_path / name)
    torch.save(obj, path)
    return path


def test_own_checkpoint_and_bare_state_dict_load_exactly(tmp_path):
    source = Net()
    for obj in ({"model": source.state_dict(), "epoch": 3}, source.state_dict(),
                {"model": {f"module.{k}": v for k, v in source.state_dict().items()}}):
        target = Net()
        AtomicCheckpointer(target).load(save(tmp_path, "w.pth", obj))
        for key, value in source.state_dict().items():
            assert torch.equal(target.state_dict()[key], value), key


def test_foreign_checkpoint_stops_with_counts_and_keys(tmp_path):
    model = Net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = save(tmp_path, "resnet18.pth", {"model": timm.create_model("resnet18").state_dict()})
    with pytest.raises(CheckpointError, match=r"resnet18\.pth: none of its \d+ tensors fits the model"):
        AtomicCheckpointer(model).load(path)

    wider = save(tmp_path, "wide.pth", {"model": Net(width=6).state_dict()})
    with pytest.raises(CheckpointError) as info:
        AtomicCheckpointer(model).load(wider)
    message = str(info.value)
    assert "wide.pth does not fit the model: 0 model tensors missing from the file, 0 file tensors unknown " \
           "to the model, 7 of another shape" in message
    assert "backbone.proj.weight file (6, 6) vs model (4, 4)" in message and "MODEL.WEIGHTS_PARTIAL" in message
    for key, value in before.items():  # nothing was loaded
        assert torch.equal(model.state_dict()[key], value)

    extra = Net().state_dict()
    extra["classifier.weight"] = torch.zeros(2, 4)
    del extra["head.running_mean"]
    with pytest.raises(CheckpointError, match=r"1 model tensors missing.*1 file tensors unknown.*\n  missing: "
                                              r"head\.running_mean\n  unexpected: classifier\.weight"):
        AtomicCheckpointer(model).load(save(tmp_path, "extra.pth", extra))


def test_partial_loading_warns_and_loads_what_fits(tmp_path, caplog):
    source = Net()
    state = source.state_dict()
    state["backbone.proj.weight"] = torch.zeros(5, 5)
    model = Net()
    with caplog.at_level(logging.WARNING):
        AtomicCheckpointer(model, partial=True).load(save(tmp_path, "p.pth", {"model": state}))
    assert "backbone.proj.weight file (5, 5) vs model (4, 4)" in caplog.text and "MODEL.WEIGHTS_PARTIAL" in caplog.text
    assert torch.equal(model.backbone.proj.bias, source.backbone.proj.bias)
    assert not torch.equal(model.backbone.proj.weight, torch.zeros(4, 4))


@pytest.mark.parametrize("sie_shape", ["2d", "3d"])
def test_camera_table_of_another_dataset_is_adapted(tmp_path, sie_shape):
    market = Net(cameras=6, sie_shape=sie_shape)
    duke = Net(cameras=8, sie_shape=sie_shape)
    with pytest.warns(UserWarning, match="backbone.sie_embed in .*has 6 rows, the model 8"):
        AtomicCheckpointer(duke).load(save(tmp_path, "market.pth", {"model": market.state_dict()}))
    assert torch.equal(duke.backbone.sie_embed[:6], market.backbone.sie_embed)
    assert torch.allclose(duke.backbone.sie_embed[6:], market.backbone.sie_embed.mean(0, keepdim=True).expand(2, *duke.backbone.sie_embed.shape[1:]))
    assert torch.equal(duke.backbone.proj.weight, market.backbone.proj.weight)


def test_files_that_are_no_checkpoint_give_one_line(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    with pytest.raises(CheckpointError, match=r"notes\.txt is not a PyTorch checkpoint: torch\.load cannot read it") as info:
        AtomicCheckpointer(Net()).load(str(text))
    assert "\n" not in str(info.value)
    cases = {"nested.pth": ({"state_dict": Net().state_dict(), "epoch": 1}, r"nested\.pth holds a dict with keys "
                                                                            r"\['epoch', 'state_dict'\] but no 'model'"),
             "tensor.pth": (torch.zeros(3), r"tensor\.pth holds a Tensor, not a checkpoint"),
             "module.pth": (Net(), r"module\.pth holds pickled Python objects \(.*Net\), which loading with "
                                   r"weights_only refuses")}
    for name, (obj, message) in cases.items():
        with pytest.raises(CheckpointError, match=message):
            AtomicCheckpointer(Net()).load(save(tmp_path, name, obj))


def test_orphan_temporaries_are_removed(tmp_path):
    model = Net()
    ckpt = AtomicCheckpointer(model, str(tmp_path))
    ckpt.save("model_last", epoch=0)
    for name in (".tmp-abc123model_last.pth", ".tmp-x1last_checkpoint"):
        (tmp_path / name).write_bytes(b"half a checkpoint")
    (tmp_path / "notes.tmp").write_text("mine")
    removed = ckpt.remove_orphan_temporaries()
    assert sorted(os.path.basename(p) for p in removed) == [".tmp-abc123model_last.pth", ".tmp-x1last_checkpoint"]
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_last.pth", "notes.tmp"]


def test_resume_into_another_optimizer_setup_names_the_file(tmp_path):
    model = Net()
    two_groups = torch.optim.SGD([{"params": [model.backbone.proj.weight]},
                                  {"params": [p for n, p in model.named_parameters() if n != "backbone.proj.weight"]}],
                                 lr=0.1, momentum=0.9)
    AtomicCheckpointer(model, str(tmp_path), optimizer=two_groups).save("model_last")
    one_group = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(CheckpointError, match=r"model_last\.pth: its optimizer state does not fit this run"):
        AtomicCheckpointer(model, optimizer=one_group).load(str(tmp_path / "model_last.pth"))
