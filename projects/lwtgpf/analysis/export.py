"""ONNX export of an eval-mode re-id model, and its parity check with ONNX Runtime.

The graph takes `images` float [B, 3, H, W] in 0-255 (as fast-reid's loaders give them) and
`camids` int64 [B], and returns `features`, the model's retrieval feature; the batch is dynamic.

Export goes through `torch.export` (torch.onnx's dynamo exporter). Scaled-dot-product attention
is traced with the math backend only: on CPU, the default backend's kernel lays its output out
as [B, N, heads, d] in memory, so the `reshape` after timm's `transpose(1, 2)` is recorded as a
view, and when the exporter then decomposes attention into plain operators (their output is laid
out [B, heads, N, d]) that view is invalid and the export fails ("Cannot view a tensor with shape
... as a tensor with shape ..."). With the math backend tracing and decomposition agree; the
graph computes the same softmax(q k^T * scale + bias + mask) v with MatMul and Softmax nodes.
"""
import copy
import logging
from typing import Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .retrieval import RetrievalModel

__all__ = ["export_onnx", "onnx_session", "parity", "run_session"]

logger = logging.getLogger("fastreid." + __name__)

INPUT_NAMES = ("images", "camids")
OUTPUT_NAME = "features"


def export_onnx(model: nn.Module, path: str, image_size: Tuple[int, int], batch_size: int = 2,
                half: bool = False, opset: Optional[int] = None) -> nn.Module:
    """Export `model`'s eval-mode retrieval feature to `path` (one file, weights inside) and return
    the exported module (a `RetrievalModel`, fp16 with `half`) for parity checks.

    `batch_size` is the example batch (at least 2: torch.export specialises a dimension of 1).
    """
    wrapped = RetrievalModel(copy.deepcopy(model)).eval()
    device = next(wrapped.parameters()).device
    dtype = torch.float16 if half else torch.float32
    wrapped = wrapped.to(dtype)
    batch = max(int(batch_size), 2)
    images = torch.rand(batch, 3, *image_size, device=device, dtype=dtype) * 255
    camids = torch.zeros(batch, dtype=torch.long, device=device)
    dim = torch.export.Dim("batch", min=1)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        program = torch.onnx.export(
            wrapped, (images, camids), input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
            dynamic_shapes={"images": {0: dim}, "camids": {0: dim}}, opset_version=opset, dynamo=True,
            verbose=False)
    program.save(path, external_data=False)
    return wrapped


def onnx_session(path: str, threads: int = 0, device: str = "cpu"):
    """An ONNX Runtime session on `device` ("cpu", "cuda" or "cuda:N"; CUDA needs the
    onnxruntime-gpu package) with `threads` CPU threads (0: its default) that sleep when idle: by
    default they spin after each run and take the cores from whatever runs next (PyTorch, in a
    benchmark)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    kind, _, index = device.partition(":")
    if kind == "cpu":
        providers = ["CPUExecutionProvider"]
    elif kind == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError(f"ONNX Runtime cannot run on {device}: this onnxruntime offers "
                               f"{ort.get_available_providers()} (install onnxruntime-gpu, or use device 'cpu')")
        providers = [("CUDAExecutionProvider", {"device_id": int(index or 0)}), "CPUExecutionProvider"]
    else:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return ort.InferenceSession(path, options, providers=providers)


def run_session(session, images: torch.Tensor, camids: torch.Tensor) -> np.ndarray:
    """The session's features (`camids` fed when the graph has that input)."""
    names = {i.name: i for i in session.get_inputs()}
    image_type = np.float16 if names["images"].type == "tensor(float16)" else np.float32
    feed = {"images": images.cpu().numpy().astype(image_type)}
    if "camids" in names:
        feed["camids"] = camids.cpu().numpy().astype(np.int64)
    return session.run([OUTPUT_NAME], feed)[0]


@torch.no_grad()
def parity(session, exported: nn.Module, images: torch.Tensor, camids: torch.Tensor) -> float:
    """Largest absolute difference between ONNX Runtime's and PyTorch's features on one batch."""
    device = next(exported.parameters()).device
    dtype = next(exported.parameters()).dtype
    reference = exported(images.to(device, dtype), camids.to(device)).float().cpu().numpy()
    ours = run_session(session, images, camids).astype(np.float32)
    if ours.shape != reference.shape:
        raise RuntimeError(f"ONNX Runtime gave features {ours.shape}, PyTorch {reference.shape}")
    return float(np.abs(ours - reference).max())
