"""Reading weight files and matching them with a model (`lwtgpf.weights`), on tiny CPU tensors."""
import logging

import pytest
import torch
from torch import nn

import lwtgpf  # noqa: F401  (fastreid compatibility first)
from lwtgpf.weights import (LoadReport, WeightsError, adapt_camera_table, adapt_rel_pos_table, load_backbone_weights,
                            load_model_weights, match_state_dict, read_weights, rel_pos_adapter, state_dict_in)


def reference_camera_table(table: torch.Tensor, rows: int) -> torch.Tensor:
    """The adaptation by its definition, row by row: the first rows kept, each new row the mean of the old ones."""
    out = []
    for i in range(rows):
        out.append(table[i] if i < table.shape[0] else sum(table[j] for j in range(table.shape[0])) / table.shape[0])
    return torch.stack(out)


class Net(nn.Module):
    def __init__(self, width: int = 4, cameras: int = 3, trailing: tuple = ()):
        super().__init__()
        self.proj = nn.Linear(width, width)
        self.sie_embed = nn.Parameter(torch.randn(cameras, *trailing, width))


@pytest.mark.parametrize("trailing", [(), (1,)], ids=["2d", "3d"])
@pytest.mark.parametrize("rows", [2, 3, 5])
def test_camera_table_keeps_first_rows_and_fills_new_ones_with_the_mean(trailing, rows):
    torch.manual_seed(0)
    table = torch.randn(3, *trailing, 4)
    with pytest.warns(UserWarning, match=rf"cams: the checkpoint has 3 rows, the model {rows}; kept {min(rows, 3)}"):
        adapted = adapt_camera_table(table, rows, "cams")
    assert adapted.shape == (rows, *trailing, 4)
    torch.testing.assert_close(adapted, reference_camera_table(table, rows))


@pytest.mark.parametrize("trailing", [(), (1,)], ids=["2d", "3d"])
@pytest.mark.parametrize("name", ["sie_embed", "cam_embed", "view_embed"])
def test_camera_tables_are_adapted_by_name_when_their_trailing_dims_match(trailing, name):
    torch.manual_seed(0)
    model = nn.Module()
    model.register_parameter(name, nn.Parameter(torch.zeros(5, *trailing, 4)))
    table = torch.randn(3, *trailing, 4)
    report = LoadReport(path="w.pth", format="test")
    with pytest.warns(UserWarning, match=rf"{name} in w\.pth: the checkpoint has 3 rows"):
        accepted = match_state_dict(model, {name: table}, report)
    torch.testing.assert_close(accepted[name], reference_camera_table(table, 5))
    assert report.adapted == [f"{name}: 3 -> 5 rows"] and report.mismatched == []

    other_width = {name: torch.randn(3, *trailing, 6)}  # a table of another model, not of another dataset
    report = LoadReport(path="w.pth", format="test")
    assert match_state_dict(model, other_width, report) == {}
    assert report.mismatched == [f"{name} file {(3, *trailing, 6)} vs model {(5, *trailing, 4)}"]


def test_nesting_and_prefixes_of_backbone_files():
    weight = torch.ones(2)
    dino = {"teacher": {"module.backbone.x": weight, "backbone.base.y": weight, "backbone.step": 3},
            "student": {"z": weight}}
    assert state_dict_in(dino, "dino.pth") == {"x": weight, "y": weight}
    mmcv = {"state_dict": {"model": {"base.module.w": weight}}, "meta": {}}
    assert state_dict_in(mmcv, "mmcv.pth") == {"module.w": weight}  # prefixes come off in order, once each
    with pytest.raises(WeightsError, match=r"t\.pth holds a Tensor, not a checkpoint"):
        state_dict_in(weight, "t.pth")


def test_checkpoints_accept_a_model_entry_or_a_bare_state_dict_and_strip_module_only():
    weight = torch.ones(2)
    strict = dict(nests=("model",), prefixes=("module.",), strict=True)
    fast_reid = {"model": {"module.backbone.w": weight}, "epoch": 3}
    assert state_dict_in(fast_reid, "c.pth", **strict) == {"backbone.w": weight}
    assert state_dict_in({"module.w": weight}, "c.pth", **strict) == {"w": weight}
    with pytest.raises(WeightsError, match=r"c\.pth holds a dict with keys \['epoch', 'state_dict'\] but no 'model'"):
        state_dict_in({"state_dict": {"w": weight}, "epoch": 1}, "c.pth", **strict)
    with pytest.raises(WeightsError, match=r"c\.pth: 'model' entries must be tensors; 'step' is a int"):
        state_dict_in({"model": {"w": weight, "step": 3}}, "c.pth", **strict)
    with pytest.raises(WeightsError, match=r"holds a dict with keys \[\] but no 'model'"):
        state_dict_in({}, "c.pth", **strict)


def test_strict_loading_stops_with_the_report_and_partial_loading_warns(caplog):
    torch.manual_seed(0)
    source, model = Net(), Net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {**source.state_dict(), "head.weight": torch.zeros(1)}
    state["proj.weight"] = torch.zeros(5, 5)
    del state["proj.bias"]
    with pytest.raises(WeightsError) as info:
        load_model_weights(model, state, "s.pth")
    assert str(info.value).splitlines()[:4] == [
        "s.pth does not fit the model: 1 model tensors missing from the file, 1 file tensors unknown to the model, "
        "1 of another shape.",
        "  missing: proj.bias", "  unexpected: head.weight", "  other shape: proj.weight file (5, 5) vs model (4, 4)"]
    assert "MODEL.WEIGHTS_PARTIAL" in str(info.value)
    for key, value in before.items():
        assert torch.equal(model.state_dict()[key], value), key

    with caplog.at_level(logging.WARNING):
        report = load_model_weights(model, state, "s.pth", partial=True)
    assert "other shape: proj.weight file (5, 5) vs model (4, 4)" in caplog.text and "PARTIAL is True" in caplog.text
    assert report.loaded == ["sie_embed"]
    torch.testing.assert_close(model.sie_embed, source.sie_embed)
    torch.testing.assert_close(model.proj.weight, before["proj.weight"])

    with pytest.raises(WeightsError, match=r"s\.pth: none of its 1 tensors fits the model \(Net\)"):
        load_model_weights(model, {"fc.weight": torch.zeros(1)}, "s.pth", partial=True)


def test_backbone_loading_reports_gaps_but_stops_on_another_shape():
    model = Net()
    report = LoadReport(path="b.pth", format="test")
    load_backbone_weights(model, {"proj.weight": torch.ones(4, 4), "head.weight": torch.ones(1)}, report,
                          "Net", fit_hint="check WIDTH")
    assert report.loaded == ["proj.weight"] and report.missing == ["sie_embed", "proj.bias"]
    assert report.unused == {"head.weight": "no matching tensor in Net"}
    torch.testing.assert_close(model.proj.weight, torch.ones(4, 4))
    with pytest.raises(WeightsError, match=r"b\.pth do not fit this Net \(test format; check WIDTH\): "
                                           r"proj\.weight file \(5, 5\) vs model \(4, 4\)"):
        load_backbone_weights(model, {"proj.weight": torch.ones(5, 5)}, LoadReport("b.pth", "test"), "Net",
                              "check WIDTH")


class WindowAttention(nn.Module):
    def __init__(self, window, heads: int = 2):
        super().__init__()
        self.window_size = window
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window[0] - 1) * (2 * window[1] - 1), heads))


def test_relative_position_crop_gives_every_offset_its_bias():
    """A 4x4-window table cropped for a 3x2 window: offset (dy, dx) keeps the bias it had."""
    torch.manual_seed(0)
    table = torch.randn(7 * 7, 2)
    cropped = adapt_rel_pos_table(table, (3, 2), torch.Size((5 * 3, 2)))
    for dy in range(-2, 3):
        for dx in range(-1, 2):
            assert torch.equal(cropped[(dy + 2) * 3 + (dx + 1)], table[(dy + 3) * 7 + (dx + 3)])

    model = nn.Module()
    model.attn = WindowAttention((3, 2))
    report = LoadReport(path="swin.pth", format="test")
    accepted = match_state_dict(model, {"attn.relative_position_bias_table": table}, report, rel_pos_adapter(model))
    assert torch.equal(accepted["attn.relative_position_bias_table"], cropped)
    assert report.adapted == ["attn.relative_position_bias_table: window resized to (3, 2)"]
    report = LoadReport(path="swin.pth", format="test")
    match_state_dict(model, {"attn.relative_position_bias_table": torch.zeros(48, 2)}, report, rel_pos_adapter(model))
    assert report.mismatched == ["attn.relative_position_bias_table file (48, 2) vs model (15, 2) "
                                 "(relative-position table of 48 rows is not of a square window)"]


def test_reading_names_the_file_and_what_it_should_be(tmp_path):
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(WeightsError, match=r"notes\.txt is not a PyTorch checkpoint: torch\.load cannot") as info:
        read_weights(str(tmp_path / "notes.txt"))
    assert "\n" not in str(info.value)
    torch.save(Net(), tmp_path / "module.pth")
    with pytest.raises(WeightsError, match=r"module\.pth holds pickled Python objects \(.*Net\)"):
        read_weights(str(tmp_path / "module.pth"))
    safetensors = pytest.importorskip("safetensors.torch")
    safetensors.save_file({"w": torch.arange(3.0)}, str(tmp_path / "w.safetensors"))
    assert torch.equal(read_weights(str(tmp_path / "w.safetensors"))["w"], torch.arange(3.0))
