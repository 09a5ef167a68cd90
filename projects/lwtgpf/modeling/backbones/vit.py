"""TransReID's ViT with camera SIE, the backbone of TMGF, and its pretrained checkpoints.

TMGF (Li et al., WACV 2023 workshops) fine-tunes TransReID-SSL's LUPerson ViT-S/16 (384 wide,
12 blocks, 6 heads) with the side information embedding of TransReID (He et al., ICCV 2021).
Built from timm's ViT components (`PatchEmbed`, `Block`), the model computes what theirs does:

* patch embedding: a 16x16 convolution, or (`stem_conv`, TransReID-SSL's "ICS" checkpoints, the
  ones TMGF loads) a stride-2 convolutional stem of 64 channels (7x7 conv, IBN, ReLU, 3x3 conv,
  IBN, ReLU, 3x3 conv, BN, ReLU) followed by an 8x8 convolution;
* a class token, then learned position embeddings (class token included) and the camera SIE,
  one learnable vector per camera (trunc-normal, std .02) scaled by `sie_coef`, both added to
  every token before dropout: tokens + pos_embed + sie_coef * sie_embed[camera];
* pre-norm blocks with a qkv bias, LayerNorm eps 1e-6, a GELU MLP of ratio 4 and drop-path
  rates rising linearly from 0 to `drop_path_rate` over the blocks.

The split follows TMGF, whose two branches are copies of the last block and the final norm:
`forward_trunk` runs the embedding and all blocks but the last (tokens [B, 1 + h*w, C], no norm);
`last_stage` is the last block and the final LayerNorm. It gives the patch tokens as an NCHW map
and, through `forward_global_and_map`, also the class token: TMGF's global feature of a branch.

Checkpoints (`load_vit_pretrained`): TransReID-SSL's released LUPerson files (`vit_small_cfs_lup.pth`,
`vit_small_ics_cfs_lup.pth`), DINO teachers (`backbone.` names under `teacher`), timm ViT files and
TransReID / TMGF models (`base.`, with `module.` from DataParallel). The position grid of the file
is resized bilinearly as TransReID does when the input size differs; a camera table of another
size is adapted.
"""
import logging
import math
import re
from functools import partial
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from fastreid.config import CfgNode
from fastreid.layers import IBN
from fastreid.modeling.backbones import BACKBONE_REGISTRY
from timm.layers import PatchEmbed, calculate_drop_path_rates, resample_abs_pos_embed, trunc_normal_
from timm.models._manipulate import named_apply
from timm.models.vision_transformer import Block, init_weights_vit_timm

from ...weights import LoadReport, load_backbone_weights, read_state_dict
from .side_info import sie_vectors

logger = logging.getLogger("fastreid." + __name__)

# TransReID's (and timm's) ViT LayerNorm; torch's default eps is 1e-5
LayerNorm = partial(nn.LayerNorm, eps=1e-6)
FORMAT = "TransReID ViT"
# tensors of whole re-id models around the backbone: TMGF's branches and BNNecks, classifiers
_REID_HEAD = re.compile(r"^(b1|b2|bottleneck|part_bns)\.")
_CLASSIFIER = re.compile(r"^(head|fc|classifier|dist_token|pre_logits)\b")


class ConvStemPatchEmbed(nn.Module):
    """TransReID-SSL's ICS patch embedding: an IBN convolutional stem at stride 2, then
    non-overlapping patches of patch_size / 2 on its output (patch_size on the image)."""

    def __init__(self, img_size: Tuple[int, int], patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 384, hidden_dim: int = 64):
        super().__init__()
        self.img_size = tuple(img_size)
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.conv = nn.Sequential(
            nn.Conv2d(in_chans, hidden_dim, 7, stride=2, padding=3, bias=False), IBN(hidden_dim, "BN"),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, bias=False), IBN(hidden_dim, "BN"), nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, bias=False), nn.BatchNorm2d(hidden_dim),
            nn.ReLU(inplace=True),
        )
        self.proj = nn.Conv2d(hidden_dim, embed_dim, patch_size // 2, stride=patch_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] -> patch tokens [B, h*w, embed_dim], row-major."""
        return self.proj(self.conv(x)).flatten(2).transpose(1, 2)


class ViTLastStage(nn.Module):
    """The last block and the final LayerNorm: tokens [B, 1 + h*w, C] in, patch tokens as NCHW out."""

    def __init__(self, block: nn.Module, norm: nn.Module, grid: Tuple[int, int]):
        super().__init__()
        self.block = block
        self.norm = norm
        self.grid = tuple(grid)

    def forward_global_and_map(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Tokens -> (class token [B, C], patch tokens [B, C, h, w])."""
        x = self.norm(self.block(x))
        patches = x[:, 1:].transpose(1, 2).reshape(x.shape[0], x.shape[2], *self.grid)
        return x[:, 0], patches

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_global_and_map(x)[1]


class TransReIDViT(nn.Module):
    """ViT with camera SIE as TransReID / TMGF build it, split into trunk and last stage.

    Args:
        img_size: (height, width) the model is built for; multiples of patch_size.
        patch_size: side of the (non-overlapping) patches on the image.
        embed_dim / depth / num_heads / mlp_ratio: token width, blocks, heads, MLP width ratio.
        stem_conv: TransReID-SSL's IBN convolutional stem before the patch projection (ICS).
        num_cameras: rows of the camera SIE table (0: no table).
        sie_coef: scale of the camera embeddings.
        drop_rate: dropout after the embeddings and in every attention / MLP projection.
        attn_drop_rate: dropout of the attention weights.
        drop_path_rate: stochastic depth of the last block (linear from 0 at the first).
    """

    def __init__(
            self,
            img_size: Tuple[int, int] = (384, 128),
            patch_size: int = 16,
            embed_dim: int = 384,
            depth: int = 12,
            num_heads: int = 6,
            mlp_ratio: float = 4.0,
            stem_conv: bool = False,
            num_cameras: int = 0,
            sie_coef: float = 3.0,
            drop_rate: float = 0.0,
            attn_drop_rate: float = 0.0,
            drop_path_rate: float = 0.1,
    ):
        super().__init__()
        img_size = tuple(int(s) for s in img_size)
        if len(img_size) != 2 or any(s <= 0 or s % patch_size for s in img_size):
            raise ValueError(f"ViT input size {img_size} (INPUT.SIZE_TRAIN): height and width must be positive "
                             f"multiples of the patch size {patch_size}, e.g. 384x128 or 256x128")
        if stem_conv and patch_size % 2:
            raise ValueError(f"the convolutional stem halves the image: the patch size must be even, got {patch_size}")
        if depth < 2 or num_heads < 1 or embed_dim % num_heads:
            raise ValueError(f"ViT with {depth} blocks, width {embed_dim} and {num_heads} heads: need >= 2 blocks "
                             "(trunk + last stage) and a width divisible by the heads")
        if num_cameras < 0:
            raise ValueError(f"MODEL.BACKBONE.NUM_CAMERAS must be >= 0, got {num_cameras}")
        self.img_size = img_size
        self.embed_dim = self.num_features = embed_dim
        self.num_cameras = num_cameras
        self.sie_coef = sie_coef

        if stem_conv:
            self.patch_embed = ConvStemPatchEmbed(img_size, patch_size, embed_dim=embed_dim)
        else:
            self.patch_embed = PatchEmbed(img_size, patch_size, in_chans=3, embed_dim=embed_dim)
        self.grid_size = tuple(self.patch_embed.grid_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.patch_embed.num_patches, embed_dim))
        self.sie_embed = nn.Parameter(torch.zeros(num_cameras, embed_dim)) if num_cameras > 0 else None
        self.pos_drop = nn.Dropout(drop_rate)

        dpr = calculate_drop_path_rates(drop_path_rate, depth)
        blocks = [
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, proj_drop=drop_rate,
                  attn_drop=attn_drop_rate, drop_path=dpr[i], norm_layer=LayerNorm)
            for i in range(depth)
        ]
        self.blocks = nn.Sequential(*blocks[:-1])
        self.last_stage = ViTLastStage(blocks[-1], LayerNorm(embed_dim), self.grid_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """TransReID's initialisation: class token, positions, SIE and linear weights trunc-normal (std .02)."""
        named_apply(lambda module, name: init_weights_vit_timm(module, name, needs_reset=False), self)
        for param in (self.cls_token, self.pos_embed, self.sie_embed):
            if param is not None:
                trunc_normal_(param, std=0.02)

    def forward_trunk(self, x: torch.Tensor, cam_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Images [B, 3, H, W] -> tokens [B, 1 + h*w, C] after all blocks but the last.

        The camera embedding is added when the model has a table and ids are given; camera id -1
        (`side_info.UNKNOWN_CAMERA`) gets the mean camera embedding.
        """
        if tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(f"the ViT was built for {self.img_size[0]}x{self.img_size[1]} input "
                             f"(INPUT.SIZE_TRAIN) but got {x.shape[-2]}x{x.shape[-1]}; "
                             "set INPUT.SIZE_TEST equal to INPUT.SIZE_TRAIN")
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        if self.sie_embed is not None and cam_ids is not None:
            x = x + self.sie_coef * sie_vectors(self.sie_embed, cam_ids, self.num_cameras)[:, None, :]
        return self.blocks(self.pos_drop(x))

    def forward(self, x: torch.Tensor, cam_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Images [B, 3, H, W] -> patch tokens of the last block, normalised, NCHW [B, C, H/p, W/p]."""
        return self.last_stage(self.forward_trunk(x, cam_ids))


def pretrained_grid(num_positions: int, hw_ratio: int, path: str) -> Tuple[int, int]:
    """(rows, columns) of a file's position grid whose height is `hw_ratio` times its width."""
    width = math.isqrt(num_positions // hw_ratio) if hw_ratio > 0 else 0
    if width == 0 or hw_ratio * width * width != num_positions:
        raise ValueError(f"pos_embed of {path} has {num_positions} patch positions, which is no grid of height "
                         f"{hw_ratio} x its width (MODEL.BACKBONE.VIT.PRETRAIN_HW_RATIO; TransReID-SSL's LUPerson "
                         "files: 2, a 16x8 grid)")
    return hw_ratio * width, width


def resize_pos_embed(pos_embed: torch.Tensor, old_grid: Sequence[int], new_grid: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of the patch positions of pos_embed [1, 1 + h*w, C] (TransReID's); the class
    token's position is kept."""
    return resample_abs_pos_embed(pos_embed, new_size=list(new_grid), old_size=list(old_grid),
                                  num_prefix_tokens=1, interpolation="bilinear", antialias=False)


def transreid_to_vit(state: Mapping[str, torch.Tensor], depth: int) -> Tuple[Dict, Dict[str, str]]:
    """Rename TransReID / timm ViT tensors to TransReIDViT's. Returns (converted, {unused key: reason})."""
    out, unused = {}, {}
    for key, value in state.items():
        m = re.match(r"blocks\.(\d+)\.(.+)$", key)
        if m and int(m.group(1)) < depth - 1:
            out[key] = value
        elif m and int(m.group(1)) == depth - 1:
            out["last_stage.block." + m.group(2)] = value
        elif m:
            unused[key] = f"blocks beyond MODEL.BACKBONE.VIT.DEPTH ({depth})"
        elif key.startswith("norm."):
            out["last_stage." + key] = value
        elif key == "sie_embed":  # TransReID's [rows, 1, C]
            out[key] = value.reshape(value.shape[0], -1)
        elif _REID_HEAD.match(key):
            unused[key] = "TMGF's branches and BNNecks (the global-part head starts from the last block)"
        elif _CLASSIFIER.match(key):
            unused[key] = "classifier / projection head"
        else:
            out[key] = value
    return out, unused


def _mismatch_hint(converted: Mapping[str, torch.Tensor], model: TransReIDViT) -> str:
    file_stem = any(k.startswith("patch_embed.conv.") for k in converted)
    model_stem = isinstance(model.patch_embed, ConvStemPatchEmbed)
    if file_stem != model_stem:
        return (f"the file {'has' if file_stem else 'has no'} TransReID-SSL's convolutional stem (ICS): "
                f"set MODEL.BACKBONE.VIT.STEM_CONV {file_stem}")
    return "check MODEL.BACKBONE.VIT.EMBED_DIM / DEPTH / NUM_HEADS / PATCH_SIZE"


def load_vit_pretrained(model: TransReIDViT, path: str, hw_ratio: int = 2) -> LoadReport:
    """Load a TransReID-SSL / DINO / timm ViT or a TransReID / TMGF model file into `model`,
    log the report and return it.

    Raises a ValueError naming the file when it fits nothing or a tensor has a shape that cannot
    be adapted.
    """
    state = read_state_dict(path, "a local ViT weights file (e.g. TransReID-SSL's vit_small_ics_cfs_lup.pth)")
    converted, unused = transreid_to_vit(state, len(model.blocks) + 1)
    report = LoadReport(path=path, format=FORMAT, unused=unused)

    def adapt(key: str, value: torch.Tensor, target: torch.Tensor) -> Optional[Tuple[torch.Tensor, str]]:
        if key == "pos_embed" and value.dim() == 3 and value.shape[2] == target.shape[2]:
            old_grid = pretrained_grid(value.shape[1] - 1, hw_ratio, path)
            return (resize_pos_embed(value, old_grid, model.grid_size),
                    f"grid {old_grid[0]}x{old_grid[1]} resized to {model.grid_size[0]}x{model.grid_size[1]} (bilinear)")
        return None

    load_backbone_weights(
        model, converted, report, "ViT", adapt=adapt, fit_hint=_mismatch_hint(converted, model),
        unused_reason=lambda key: "camera table; the model has none (MODEL.BACKBONE.NUM_CAMERAS 0)"
        if key == "sie_embed" else "")
    logger.info(report.summary())
    return report


def vit_kwargs_from_config(cfg: CfgNode) -> dict:
    """TransReIDViT constructor arguments from a config (MODEL.BACKBONE.* and INPUT.SIZE_TRAIN)."""
    bb = cfg.MODEL.BACKBONE
    if bb.NUM_VIEWS:
        raise ValueError(f"MODEL.BACKBONE.NUM_VIEWS is {bb.NUM_VIEWS}, but the ViT embeds cameras only "
                         "(as TMGF); set it to 0")
    vit = bb.VIT
    return dict(
        img_size=tuple(cfg.INPUT.SIZE_TRAIN),
        patch_size=vit.PATCH_SIZE,
        embed_dim=vit.EMBED_DIM,
        depth=vit.DEPTH,
        num_heads=vit.NUM_HEADS,
        mlp_ratio=vit.MLP_RATIO,
        stem_conv=vit.STEM_CONV,
        num_cameras=bb.NUM_CAMERAS,
        sie_coef=bb.SIE_COE,
        drop_rate=bb.DROP_RATIO,
        attn_drop_rate=bb.ATT_DROP_RATE,
        drop_path_rate=bb.DROP_PATH_RATIO,
    )


@BACKBONE_REGISTRY.register()
def build_transreid_vit_backbone(cfg: CfgNode) -> TransReIDViT:
    """Build TransReIDViT from MODEL.BACKBONE.*; load MODEL.BACKBONE.PRETRAIN_PATH when PRETRAIN is set."""
    model = TransReIDViT(**vit_kwargs_from_config(cfg))
    if cfg.MODEL.BACKBONE.PRETRAIN:
        load_vit_pretrained(model, cfg.MODEL.BACKBONE.PRETRAIN_PATH, cfg.MODEL.BACKBONE.VIT.PRETRAIN_HW_RATIO)
    return model
