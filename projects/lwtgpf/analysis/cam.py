"""Class-activation maps of a re-id feature with the `grad-cam` package (`pytorch_grad_cam`).

A re-id model has no class to explain; the target is a similarity (docs/METHOD.md, "Analysis"):
s(x) = <e(x), r> with e(x) the image's retrieval feature before its L2 normalisation and r the
L2-normalised feature of a reference: the image itself (what the feature rests on) or a second
image (what makes the two match). The cosine similarity itself cannot serve for the image
against itself: it is maximal there, so its gradient is zero.

The activations of one layer (default: the last stage of the trunk) are laid out as an NCHW map:
LewinViT's stages are NHWC, fast-reid's ResNet NCHW, ViT blocks give tokens [B, 1 + h*w, C].
"""
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from timm.models.swin_transformer import PatchMerging

import pytorch_grad_cam as gc

from ..modeling.backbones.lewinvit import LewinBlock, LewinStage, LewinViT
from ..modeling.backbones.split import SplitResNet
from ..modeling.backbones.vit import TransReIDViT
from .retrieval import retrieval_embedding

__all__ = ["CAM_METHODS", "SimilarityTarget", "class_activation_maps", "default_cam_layer"]

CAM_METHODS = {
    "gradcam": gc.GradCAM,
    "gradcam++": gc.GradCAMPlusPlus,
    "xgradcam": gc.XGradCAM,
    "hirescam": gc.HiResCAM,
    "layercam": gc.LayerCAM,
    "eigencam": gc.EigenCAM,
    "eigengradcam": gc.EigenGradCAM,
    "scorecam": gc.ScoreCAM,
}
_NHWC = (LewinStage, LewinBlock, PatchMerging)  # LewinViT keeps its token maps channels-last


class SimilarityTarget:
    """grad-cam target: <feature, reference> for one image's (unnormalised) feature [D]."""

    def __init__(self, reference: torch.Tensor):
        self.reference = F.normalize(reference.detach().float(), dim=-1)

    def __call__(self, feature: torch.Tensor) -> torch.Tensor:
        return (feature.float() * self.reference.to(feature.device)).sum()


class _ImagesToEmbedding(nn.Module):
    """The model as grad-cam calls it: images only; the camera ids are bound before each call."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.camids: Optional[torch.Tensor] = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return retrieval_embedding(self.model, {"images": images, "camids": self.camids})


def default_cam_layer(model: nn.Module) -> str:
    """Name (in `model.named_modules()`) of the last stage of the model's trunk (its last block
    where the stage is not called as a whole)."""
    names = {id(m): n for n, m in model.named_modules()}
    backbone = getattr(model, "backbone", model)
    if isinstance(backbone, LewinViT):
        layer = backbone.layers[-1]
    elif isinstance(backbone, SplitResNet):  # fast-reid runs a ResNet stage block by block, never as a whole
        layer = backbone.resnet.layer3[-1]
    elif isinstance(backbone, TransReIDViT):  # its `blocks` are the trunk's, the last block is the last stage
        layer = backbone.blocks[-1]
    elif hasattr(backbone, "layer3"):  # fast-reid's ResNet inside fast-reid's Baseline
        layer = backbone.layer3[-1]
    elif hasattr(backbone, "blocks") and len(backbone.blocks) > 1:  # a ViT: the block before the last
        layer = backbone.blocks[-2]
    else:
        raise TypeError(f"no default Grad-CAM layer for a {type(backbone).__name__} backbone: "
                        "name one (ANALYSIS.CAM_LAYER, a module name of the model)")
    return names[id(layer)]


def _token_grid(model: nn.Module) -> Tuple[int, int]:
    for module in model.modules():  # the patch embedding: timm's grid_size, fast-reid's num_y / num_x
        if hasattr(module, "grid_size") and module.grid_size is not None:
            return tuple(int(s) for s in module.grid_size)
        if hasattr(module, "num_y") and hasattr(module, "num_x"):
            return int(module.num_y), int(module.num_x)
    raise TypeError("the Grad-CAM layer gives tokens but the model has no patch embedding with a grid size")


def _to_nchw(model: nn.Module, layer: nn.Module) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    if isinstance(layer, _NHWC):
        return lambda x: x.permute(0, 3, 1, 2)
    grid = None

    def tokens(x: torch.Tensor) -> torch.Tensor:
        nonlocal grid
        if x.dim() != 3:
            return x
        grid = grid or _token_grid(model)
        x = x[:, x.shape[1] - grid[0] * grid[1]:]  # drop the class (and distillation) tokens
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *grid)
    return tokens


def _find_layer(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        close = [n for n in modules if n.endswith(name.rsplit(".", 1)[-1])][:5]
        raise KeyError(f"the model has no module {name!r} (ANALYSIS.CAM_LAYER); e.g. {close or list(modules)[1:6]}")
    return modules[name]


def class_activation_maps(model: nn.Module, batched_inputs: dict, method: str = "gradcam", layer: str = "",
                          reference: Optional[Dict[str, torch.Tensor]] = None) -> np.ndarray:
    """CAM heat [B, H, W] in [0, 1] at the input size, for an eval-mode model.

    Args:
        batched_inputs: `images` (float, 0-255, as the test loader gives them) and `camids`.
        method: a key of `CAM_METHODS`.
        layer: module name to explain (empty: `default_cam_layer`).
        reference: a batch of one image (or of B images) whose features are the targets; None:
            each image is its own reference.
    """
    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}; expected one of {sorted(CAM_METHODS)}")
    layer = layer or default_cam_layer(model)
    target_layer = _find_layer(model, layer)
    wrapper = _ImagesToEmbedding(model)
    images = batched_inputs["images"].to(next(model.parameters()).device)
    camids = batched_inputs["camids"].to(images.device)
    with torch.no_grad():
        ref = reference if reference is not None else batched_inputs
        wrapper.camids = ref["camids"].to(images.device)
        ref_features = wrapper(ref["images"].to(images.device))
    if len(ref_features) == 1:
        ref_features = ref_features.expand(len(images), -1)
    if len(ref_features) != len(images):
        raise ValueError(f"{len(ref_features)} reference images for {len(images)} images: give one, or one each")
    targets = [SimilarityTarget(f) for f in ref_features]
    wrapper.camids = camids
    # not grad-cam's context manager: its __exit__ swallows IndexError
    cam = CAM_METHODS[method](wrapper, [target_layer], _to_nchw(model, target_layer))
    never_ran = RuntimeError(f"the CAM layer {layer} never ran in the model's forward (its parent calls its "
                             "children one by one?); name a module that runs (ANALYSIS.CAM_LAYER)")
    try:
        with torch.enable_grad():
            heat = cam(images, targets)
        ran = bool(cam.activations_and_grads.activations)
    except (AttributeError, TypeError, ValueError, IndexError):  # what grad-cam raises without activations
        if not cam.activations_and_grads.activations:
            raise never_ran from None
        raise
    finally:
        cam.activations_and_grads.release()
    if not ran:
        raise never_ran
    return heat
