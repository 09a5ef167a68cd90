"""ONNX export: dynamic batch, camera ids, parity with PyTorch for LewinViT and both baselines."""
import numpy as np
import onnx
import pytest
import torch

from lwtgpf.analysis.export import export_onnx, onnx_session, parity, run_session

from .conftest import BASELINE, TINY_LEWINVIT, TINY_RESNET, TINY_VIT, tiny_model


def check(tmp_path, opts, half=False):
    _, model = tiny_model(*opts)
    path = str(tmp_path / "model.onnx")
    exported = export_onnx(model, path, (64, 32), batch_size=2, half=half)
    graph = onnx.load(path).graph
    assert [i.name for i in graph.input][:1] == ["images"] and graph.output[0].name == "features"
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named, dynamic batch
    session = onnx_session(path)
    g = torch.Generator().manual_seed(3)
    images, camids = torch.rand(3, 3, 64, 32, generator=g) * 255, torch.tensor([2, 0, 1])
    tolerance = 5e-3 if half else 1e-4
    assert parity(session, exported, images, camids) < tolerance
    assert parity(session, exported, images[:1], camids[:1]) < tolerance
    return model, session, images, camids


def test_lewinvit_parity_and_camera_input(tmp_path):
    model, session, images, camids = check(tmp_path, [TINY_LEWINVIT])
    inputs = {i.name: i.type.tensor_type.elem_type for i in onnx.load(str(tmp_path / "model.onnx")).graph.input}
    assert inputs == {"images": onnx.TensorProto.FLOAT, "camids": onnx.TensorProto.INT64}
    # the camera embedding reaches the graph: other cameras, other features
    same = run_session(session, images, camids)
    other = run_session(session, images, (camids + 1) % 3)
    assert np.abs(same - other).max() > 1e-3
    with torch.no_grad():  # and the features are the evaluation's
        np.testing.assert_allclose(same, model({"images": images, "camids": camids}).numpy(), atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet", "vit", "baseline-lewinvit-fp16"])
def test_baselines_parity(tmp_path, name):
    opts = {"resnet": [TINY_RESNET], "vit": [TINY_VIT],
            "baseline-lewinvit-fp16": [TINY_LEWINVIT, BASELINE, ["MODEL.BACKBONE.FEAT_DIM", "64"]]}[name]
    check(tmp_path, opts, half=name.endswith("fp16"))
