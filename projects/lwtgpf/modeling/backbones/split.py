"""Trunk / last-stage views of fast-reid's baseline backbones, for the global-part head.

The head needs `forward_trunk(x, cam_ids)` and a `last_stage` module it can deep-copy, with
`last_stage(forward_trunk(x))` equal to the backbone's own output. LewinViT has both; here
fast-reid's ResNet (O2CAP's baseline) and ViT (TMGF's baseline) are wrapped:

* ResNet: trunk = stem + layer1..layer3 (with fast-reid's non-local blocks where configured),
  last stage = layer4 (already NCHW).
* ViT: trunk = patch embedding + class token + position (+ camera SIE) + all blocks but the last,
  giving tokens [B, 1 + h*w, C]; last stage = last block + norm, class token dropped, patch tokens
  reshaped to NCHW [B, C, h, w]. fast-reid 1.4.0's `VisionTransformer` has camera SIE
  (`camera`, `sie_xishu`, `forward(x, camera_id)`) but `build_vit_backbone` never passes
  `camera`, so `build_vit_sie_backbone` below adds the table when MODEL.BACKBONE.NUM_CAMERAS > 1.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
from fastreid.config import CfgNode
from fastreid.modeling.backbones import BACKBONE_REGISTRY
from fastreid.modeling.backbones.resnet import ResNet
from fastreid.modeling.backbones.vision_transformer import VisionTransformer, build_vit_backbone
from timm.layers import trunc_normal_

from .lewinvit import LewinViT


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


class ViTLastStage(nn.Module):
    """Last ViT block + norm; drops the class token and lays the patch tokens out as NCHW."""

    def __init__(self, block: nn.Module, norm: nn.Module, grid: tuple):
        super().__init__()
        self.block = block
        self.norm = norm
        self.grid = tuple(grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.block(x))[:, 1:]
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *self.grid)


class SplitViT(nn.Module):
    """fast-reid VisionTransformer as trunk (all blocks but the last) + last stage."""

    def __init__(self, vit: VisionTransformer):
        super().__init__()
        if len(vit.blocks) < 2:
            raise ValueError("splitting a ViT needs at least 2 blocks")
        self.vit = vit
        pe = vit.patch_embed
        self.last_stage = ViTLastStage(vit.blocks[-1], vit.norm, (pe.num_y, pe.num_x))
        self.num_features = vit.embed_dim

    def forward_trunk(self, x: torch.Tensor, cam_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Images -> tokens [B, 1 + h*w, C] after all blocks but the last (camera SIE when the ViT has it)."""
        v = self.vit
        x = v.patch_embed(x)
        x = torch.cat((v.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + v.pos_embed
        if v.cam_num > 0:
            if cam_ids is None:
                raise ValueError("this ViT has camera embeddings (MODEL.BACKBONE.NUM_CAMERAS > 1): pass cam_ids")
            if not torch.compiler.is_compiling() and not bool(((cam_ids >= 0) & (cam_ids < v.cam_num)).all()):
                raise ValueError(f"camera ids {cam_ids.tolist()} out of range: MODEL.BACKBONE.NUM_CAMERAS is {v.cam_num}")
            x = x + v.sie_xishu * v.sie_embed[cam_ids]
        x = v.pos_drop(x)
        for block in v.blocks[:-1]:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor, cam_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.last_stage(self.forward_trunk(x, cam_ids))


@BACKBONE_REGISTRY.register()
def build_vit_sie_backbone(cfg: CfgNode) -> VisionTransformer:
    """fast-reid's `build_vit_backbone` plus the camera SIE table its builder leaves out (TMGF's ViT).

    The table (MODEL.BACKBONE.NUM_CAMERAS rows, trunc-normal std .02, scaled by SIE_COE) is made
    the way fast-reid's VisionTransformer makes it for `camera > 1`.
    """
    vit = build_vit_backbone(cfg)
    cams = cfg.MODEL.BACKBONE.NUM_CAMERAS
    if cams > 1:
        vit.cam_num = cams
        vit.sie_embed = nn.Parameter(torch.zeros(cams, 1, vit.embed_dim))
        trunc_normal_(vit.sie_embed, std=0.02)
    return vit


def split_backbone(backbone: nn.Module) -> nn.Module:
    """A module with `forward_trunk(x, cam_ids)` and `last_stage` over `backbone`.

    LewinViT is returned unchanged; fast-reid's ResNet and VisionTransformer are wrapped (sharing
    their parameters)."""
    if isinstance(backbone, (LewinViT, SplitResNet, SplitViT)):
        return backbone
    if isinstance(backbone, ResNet):
        return SplitResNet(backbone)
    if isinstance(backbone, VisionTransformer):
        return SplitViT(backbone)
    raise TypeError(f"split_backbone: no trunk / last-stage split for {type(backbone).__name__}; "
                    "supported: LewinViT, fast-reid ResNet, fast-reid VisionTransformer")
