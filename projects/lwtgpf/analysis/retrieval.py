"""A re-id model as a function of tensors: (images, camera ids) -> retrieval feature."""
import torch
from torch import nn

__all__ = ["RetrievalModel", "retrieval_embedding"]


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
