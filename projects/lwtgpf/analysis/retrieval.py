"""A trained re-id model for inference, and as a function of tensors: (images, camera ids) ->
retrieval feature."""
import os

import torch
from fastreid.config import CfgNode
from fastreid.modeling.meta_arch import build_model
from torch import nn

from ..modeling.model_file import load_model_file

__all__ = ["RetrievalModel", "build_eval_model", "retrieval_embedding"]


def _own_images(batched_inputs: dict) -> dict:
    # fast-reid's Baseline normalises the images of the batch in place
    return dict(batched_inputs, images=batched_inputs["images"].clone())


def retrieval_embedding(model: nn.Module, batched_inputs: dict) -> torch.Tensor:
    """The retrieval feature before any L2 normalisation: GPO2CAP's BNNeck output
    (`retrieval_embedding`), or what another model (fast-reid's `Baseline`) returns in eval mode.
    The batch is left as it was."""
    if hasattr(model, "retrieval_embedding"):
        return model.retrieval_embedding(batched_inputs)
    return model(_own_images(batched_inputs))


class RetrievalModel(nn.Module):
    """Wraps an eval-mode meta-architecture (GPO2CAP, fast-reid's Baseline, ...):
    `forward(images float [B, 3, H, W] in 0-255, camids int64 [B])` -> its retrieval feature.

    `normalized=False` returns the feature before L2 normalisation (`retrieval_embedding`).
    """

    def __init__(self, model: nn.Module, normalized: bool = True):
        super().__init__()
        self.model = model
        self.normalized = normalized

    def forward(self, images: torch.Tensor, camids: torch.Tensor) -> torch.Tensor:
        batch = {"images": images, "camids": camids}
        return self.model(_own_images(batch)) if self.normalized else retrieval_embedding(self.model, batch)


def build_eval_model(cfg: CfgNode) -> nn.Module:
    """`build_model(cfg)` on MODEL.DEVICE in eval mode, with MODEL.WEIGHTS loaded when set (an
    original LWTGPF checkpoint is converted on load); the backbone's pretrained file is then not read."""
    cfg = cfg.clone()
    cfg.defrost()
    if cfg.MODEL.WEIGHTS:
        cfg.MODEL.BACKBONE.PRETRAIN = False  # the checkpoint holds every weight
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        if not os.path.isfile(cfg.MODEL.WEIGHTS):
            raise FileNotFoundError(f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS} does not exist")
        load_model_file(model, cfg.MODEL.WEIGHTS)
    return model.eval()
