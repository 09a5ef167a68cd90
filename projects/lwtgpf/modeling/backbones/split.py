"""Trunk / last-stage views of backbones, for the global-part head.

The head needs `forward_trunk(x, cam_ids)` and a `last_stage` module it can deep-copy, with
`last_stage(forward_trunk(x))` equal to the backbone's own output. LewinViT and the TransReID
ViT (TMGF's baseline) have both; fast-reid's ResNet (O2CAP's baseline) is wrapped here:
trunk = stem + layer1..layer3 (with fast-reid's non-local blocks where configured), last stage =
layer4 (already NCHW).
"""
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
from fastreid.modeling.backbones.resnet import ResNet

from .lewinvit import LewinViT
from .vit import TransReIDViT


def _non_local(resnet: ResNet, stage: int) -> Tuple[nn.ModuleList, List[int]]:
    # fast-reid builds NL_k only with WITH_NL; its k-th module follows block NL_k_idx[k] of layer k
    return getattr(resnet, f"NL_{stage}", nn.ModuleList()), list(getattr(resnet, f"NL_{stage}_idx", []))


def _run_layer(x: torch.Tensor, layer: nn.Sequential, non_local: nn.ModuleList, after: List[int]) -> torch.Tensor:
    where = {idx: k for k, idx in enumerate(after) if idx >= 0}
    for i, block in enumerate(layer):
        x = block(x)
        if i in where:
            x = non_local[where[i]](x)
    return x


class ResNetLastStage(nn.Module):
    """layer4 of a fast-reid ResNet (and its non-local blocks, if any)."""

    def __init__(self, layer4: nn.Sequential, non_local: nn.ModuleList, after: List[int]):
        super().__init__()
        self.layer4 = layer4
        self.non_local = non_local
        self.after = list(after)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _run_layer(x, self.layer4, self.non_local, self.after)


class SplitResNet(nn.Module):
    """fast-reid ResNet as trunk (up to layer3) + last stage (layer4)."""

    def __init__(self, resnet: ResNet):
        super().__init__()
        self.resnet = resnet
        self.last_stage = ResNetLastStage(resnet.layer4, *_non_local(resnet, 4))
        self.num_features = resnet.layer4[-1].conv3.out_channels if hasattr(resnet.layer4[-1], "conv3") \
            else resnet.layer4[-1].conv2.out_channels

    def forward_trunk(self, x: torch.Tensor, cam_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Images -> layer3 output (NCHW); ResNet has no camera input, cam_ids are ignored."""
        r = self.resnet
        x = r.maxpool(r.relu(r.bn1(r.conv1(x))))
        for stage, layer in enumerate((r.layer1, r.layer2, r.layer3), start=1):
            x = _run_layer(x, layer, *_non_local(r, stage))
        return x

    def forward(self, x: torch.Tensor, cam_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.last_stage(self.forward_trunk(x, cam_ids))


def split_backbone(backbone: nn.Module) -> nn.Module:
    """A module with `forward_trunk(x, cam_ids)` and `last_stage` over `backbone`.

    LewinViT and TransReIDViT are returned unchanged; fast-reid's ResNet is wrapped (sharing its
    parameters)."""
    if isinstance(backbone, (LewinViT, TransReIDViT, SplitResNet)):
        return backbone
    if isinstance(backbone, ResNet):
        return SplitResNet(backbone)
    raise TypeError(f"split_backbone: no trunk / last-stage split for {type(backbone).__name__}; "
                    "supported: LewinViT, TransReIDViT, fast-reid ResNet")
