"""LewinViT: a Swin Transformer with camera embeddings and locally enhanced feed-forward networks.

METHOD.md section 1. The hierarchy (4x4 patch embedding, four stages of shifted-window attention
with relative position bias, patch merging between stages) is timm 1.0.31's Swin, built from
`timm.models.swin_transformer` components; this module adds only what timm lacks:

* SIE: one learnable vector per camera (and per view), added to every patch token right after the
  patch embedding, scaled by `sie_coef` (fast-reid's MODEL.BACKBONE.SIE_COE).
* Local enhancement: every block's MLP gets a 3x3 depthwise convolution over its hidden activations
  laid out as the 2-D token map, as a residual branch initialised to zero, so a pretrained Swin
  computes exactly what it computed before loading into LewinViT.
* The split the global-part head needs: `forward_trunk` (patch embedding, stages 1-3, stage 4's
  patch merging) and `last_stage` (stage-4 blocks and the final norm, NHWC in, NCHW out).

Windows follow timm: a stage whose map side is not larger than the window uses a window of that
side and no shift along it (at 384x128, stage 4's 12x4 map gets 7x4 windows, shifted by 3 rows
only); map sides that are not multiples of the window are zero-padded before partitioning. The
model is built for one input size (INPUT.SIZE_TRAIN); attention masks are precomputed for it.

Attention goes through `F.scaled_dot_product_attention` (timm's fused path, which timm leaves off
by default for Swin as "experimental"; it computes the same softmax(q k^T * scale + bias + mask) v).
`torch._dynamo.explain` on a small model (CPU, torch 2.14) finds one graph and no graph break in
`last_stage` and in `forward_trunk` without camera ids; with camera ids the range check (a host
sync) is skipped while compiling, so the compiled graph stays whole.
"""
import logging
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
from timm.layers import Mlp, PatchEmbed, calculate_drop_path_rates, trunc_normal_
from timm.models._manipulate import named_apply
from timm.models.swin_transformer import PatchMerging, SwinTransformerBlock
from timm.models.vision_transformer import init_weights_vit_timm

from fastreid.config import CfgNode
from fastreid.modeling.backbones import BACKBONE_REGISTRY

from .pretrained import load_pretrained

logger = logging.getLogger("fastreid." + __name__)

# name -> (embed_dim, depths, num_heads), METHOD.md section 1
LEWINVIT_SIZES = {
    "tiny": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "small": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "base": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
}


class LocalEnhancedMlp(Mlp):
    """timm's MLP with a zero-initialised 3x3 depthwise convolution over the hidden token map.

    Takes and returns NHWC tensors: hidden = act(fc1(x)); hidden = hidden + dwconv(hidden); fc2(hidden).
    """

    def __init__(self, in_features: int, hidden_features: int, act_layer=nn.GELU, drop: float = 0.0):
        super().__init__(in_features, hidden_features, act_layer=act_layer, drop=drop)
        self.local = nn.Conv2d(hidden_features, hidden_features, 3, padding=1, groups=hidden_features)
        self.reset_local()

    def reset_local(self) -> None:
        """Zero the branch, making the MLP exactly timm's."""
        nn.init.zeros_(self.local.weight)
        nn.init.zeros_(self.local.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(self.act(self.fc1(x)))
        # the NCHW view of an NHWC tensor is channels-last, which the depthwise conv takes as is
        x = x + self.local(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = self.norm(x)
        return self.drop2(self.fc2(x))


class LewinBlock(SwinTransformerBlock):
    """timm's Swin block whose MLP sees the 2-D token map (NHWC), optionally locally enhanced."""

    def __init__(self, local_enhance: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.attn.fused_attn = True  # F.scaled_dot_product_attention (timm: opt-in "experimental" for Swin)
        if local_enhance:
            self.mlp = LocalEnhancedMlp(
                self.dim, int(self.dim * self.mlp_ratio), drop=kwargs.get("proj_drop", 0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self._attn(self.norm1(x)))
        # nn.Linear acts on the last dim, so the MLP can keep the map layout timm flattens away
        return x + self.drop_path2(self.mlp(self.norm2(x)))


def _build_blocks(
        dim: int, resolution: Tuple[int, int], depth: int, num_heads: int, window_size: int,
        mlp_ratio: float, drop_path: Sequence[float], attn_drop: float, proj_drop: float, local_enhance: bool,
) -> nn.Sequential:
    return nn.Sequential(*[
        LewinBlock(
            local_enhance=local_enhance, dim=dim, input_resolution=resolution, num_heads=num_heads,
            window_size=window_size, shift_size=0 if i % 2 == 0 else window_size // 2, mlp_ratio=mlp_ratio,
            proj_drop=proj_drop, attn_drop=attn_drop, drop_path=drop_path[i],
        )
        for i in range(depth)
    ])


class LewinStage(nn.Module):
    """One of stages 1-3: timm's patch merging (stages 2, 3) then the blocks, NHWC in and out."""

    def __init__(self, downsample: Optional[nn.Module], blocks: nn.Sequential):
        super().__init__()
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.blocks = blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class LewinLastStage(nn.Module):
    """Stage-4 blocks and the final LayerNorm: NHWC [B, h, w, C] in, NCHW [B, C, h, w] out."""

    def __init__(self, blocks: nn.Sequential, norm: nn.LayerNorm):
        super().__init__()
        self.blocks = blocks
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.blocks(x)).permute(0, 3, 1, 2).contiguous()


class LewinViT(nn.Module):
    """Local-enhancing window ViT (METHOD.md section 1).

    Args:
        img_size: (height, width) the model is built for; both multiples of 8 * patch_size.
        embed_dim: stage-1 width (stage i has embed_dim * 2**i).
        depths / num_heads: blocks and attention heads per stage (4 stages).
        num_cameras / num_views: SIE table sizes (0: no table).
        sie_coef: scale of the camera/view embeddings.
        local_enhance: add the zero-initialised depthwise branch to every MLP.
    """

    def __init__(
            self,
            img_size: Tuple[int, int] = (384, 128),
            patch_size: int = 4,
            embed_dim: int = 96,
            depths: Sequence[int] = (2, 2, 6, 2),
            num_heads: Sequence[int] = (3, 6, 12, 24),
            window_size: int = 7,
            mlp_ratio: float = 4.0,
            drop_path_rate: float = 0.1,
            attn_drop_rate: float = 0.0,
            proj_drop_rate: float = 0.0,
            num_cameras: int = 0,
            num_views: int = 0,
            sie_coef: float = 3.0,
            local_enhance: bool = True,
    ):
        super().__init__()
        img_size = tuple(int(s) for s in img_size)
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError(f"LewinViT has 4 stages: got depths {list(depths)} and num_heads {list(num_heads)}")
        stride = patch_size * 2 ** (len(depths) - 1)
        if len(img_size) != 2 or any(s <= 0 or s % stride for s in img_size):
            raise ValueError(
                f"LewinViT input size {img_size} (INPUT.SIZE_TRAIN): height and width must be positive "
                f"multiples of {stride} so that the 1/{stride} feature map is whole, e.g. 384x128 or 256x128")
        for i, (d, h) in enumerate(zip(depths, num_heads)):
            if d < 1 or h < 1 or (embed_dim * 2 ** i) % h:
                raise ValueError(f"LewinViT stage {i + 1}: width {embed_dim * 2 ** i} with {d} blocks and {h} heads "
                                 "(need >= 1 block and a width divisible by the heads)")
        self.img_size = img_size
        self.embed_dim = embed_dim
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.num_cameras = num_cameras
        self.num_views = num_views
        self.sie_coef = sie_coef
        self.local_enhance = local_enhance

        self.patch_embed = PatchEmbed(
            img_size=img_size, patch_size=patch_size, in_chans=3, embed_dim=embed_dim,
            norm_layer=nn.LayerNorm, output_fmt="NHWC")
        self.cam_embed = nn.Parameter(torch.zeros(num_cameras, embed_dim)) if num_cameras > 0 else None
        self.view_embed = nn.Parameter(torch.zeros(num_views, embed_dim)) if num_views > 0 else None

        grid = self.patch_embed.grid_size
        dpr = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        common = dict(window_size=window_size, mlp_ratio=mlp_ratio, attn_drop=attn_drop_rate,
                      proj_drop=proj_drop_rate, local_enhance=local_enhance)
        stages = []
        for i in range(3):
            dim = embed_dim * 2 ** i
            resolution = (grid[0] >> i, grid[1] >> i)
            blocks = _build_blocks(dim, resolution, depths[i], num_heads[i], drop_path=dpr[i], **common)
            stages.append(LewinStage(PatchMerging(dim // 2) if i > 0 else None, blocks))
        self.layers = nn.Sequential(*stages)
        self.last_downsample = PatchMerging(self.num_features // 2)
        self.last_stage = LewinLastStage(
            _build_blocks(self.num_features, (grid[0] >> 3, grid[1] >> 3), depths[3], num_heads[3],
                          drop_path=dpr[3], **common),
            nn.LayerNorm(self.num_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """timm's Swin initialisation; SIE tables trunc-normal (std .02); local branches zero."""
        named_apply(lambda module, name: init_weights_vit_timm(module, name, needs_reset=False), self)
        for table in (self.cam_embed, self.view_embed):
            if table is not None:
                trunc_normal_(table, std=0.02)
        for module in self.modules():
            if isinstance(module, LocalEnhancedMlp):
                module.reset_local()

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Parameter names timm's Swin recipe keeps out of weight decay."""
        return {n for n, _ in self.named_parameters() if "relative_position_bias_table" in n}

    def _side_embedding(self, ids: torch.Tensor, table: nn.Parameter, what: str, key: str) -> torch.Tensor:
        if ids.dim() != 1:
            raise ValueError(f"{what} ids must be a 1-D tensor [B], got shape {tuple(ids.shape)}")
        if not torch.compiler.is_compiling():  # a host sync; skipped so compiled graphs stay whole
            low, high = torch.aminmax(ids)
            bad = [v for v in (int(low), int(high)) if not 0 <= v < table.shape[0]]
            if bad:
                raise ValueError(f"{what} id {bad[0]} out of range: {key} is {table.shape[0]}, "
                                 f"so ids must lie in 0..{table.shape[0] - 1}")
        return table[ids.long()]

    def forward_trunk(
            self, x: torch.Tensor, cam_ids: Optional[torch.Tensor] = None, view_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Images [B, 3, H, W] -> NHWC [B, H/32, W/32, num_features] (stage 4's patch merging included).

        Camera (view) embeddings are added when the model has a table and ids are given.
        """
        if tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(f"LewinViT was built for {self.img_size[0]}x{self.img_size[1]} input "
                             f"(INPUT.SIZE_TRAIN) but got {x.shape[-2]}x{x.shape[-1]}; "
                             "set INPUT.SIZE_TEST equal to INPUT.SIZE_TRAIN")
        x = self.patch_embed(x)
        sie = None
        if self.cam_embed is not None and cam_ids is not None:
            sie = self._side_embedding(cam_ids, self.cam_embed, "camera", "MODEL.BACKBONE.NUM_CAMERAS")
        if self.view_embed is not None and view_ids is not None:
            view = self._side_embedding(view_ids, self.view_embed, "view", "MODEL.BACKBONE.NUM_VIEWS")
            sie = view if sie is None else sie + view
        if sie is not None:
            x = x + self.sie_coef * sie[:, None, None, :].to(x.dtype)
        x = self.layers(x)
        return self.last_downsample(x)

    def forward(
            self, x: torch.Tensor, cam_ids: Optional[torch.Tensor] = None, view_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Images [B, 3, H, W] -> NCHW feature map [B, num_features, H/32, W/32]."""
        return self.last_stage(self.forward_trunk(x, cam_ids, view_ids))


def lewinvit_kwargs_from_config(cfg: CfgNode) -> dict:
    """LewinViT constructor arguments from a config (MODEL.BACKBONE.* and INPUT.SIZE_TRAIN)."""
    bb = cfg.MODEL.BACKBONE
    lw = bb.LEWINVIT
    size = lw.SIZE.lower()
    if size not in LEWINVIT_SIZES:
        raise ValueError(f"MODEL.BACKBONE.LEWINVIT.SIZE is {lw.SIZE!r}; expected one of {sorted(LEWINVIT_SIZES)}")
    embed_dim, depths, num_heads = LEWINVIT_SIZES[size]
    for key, value in (("DEPTHS", lw.DEPTHS), ("NUM_HEADS", lw.NUM_HEADS)):
        if len(value) not in (0, 4):
            raise ValueError(f"MODEL.BACKBONE.LEWINVIT.{key} is {list(value)}; expected 4 values or [] for the size's")
    if bb.NUM_CAMERAS < 0 or bb.NUM_VIEWS < 0:
        raise ValueError(f"MODEL.BACKBONE.NUM_CAMERAS ({bb.NUM_CAMERAS}) and NUM_VIEWS ({bb.NUM_VIEWS}) must be >= 0")
    return dict(
        img_size=tuple(cfg.INPUT.SIZE_TRAIN),
        patch_size=lw.PATCH_SIZE,
        embed_dim=lw.EMBED_DIM if lw.EMBED_DIM > 0 else embed_dim,
        depths=tuple(lw.DEPTHS) or depths,
        num_heads=tuple(lw.NUM_HEADS) or num_heads,
        window_size=lw.WINDOW_SIZE,
        mlp_ratio=lw.MLP_RATIO,
        drop_path_rate=bb.DROP_PATH_RATIO,
        attn_drop_rate=bb.ATT_DROP_RATE,
        proj_drop_rate=bb.DROP_RATIO,
        num_cameras=bb.NUM_CAMERAS,
        num_views=bb.NUM_VIEWS,
        sie_coef=bb.SIE_COE,
        local_enhance=lw.LOCAL_ENHANCE,
    )


@BACKBONE_REGISTRY.register()
def build_lewinvit_backbone(cfg: CfgNode) -> LewinViT:
    """Build LewinViT from MODEL.BACKBONE.*; load MODEL.BACKBONE.PRETRAIN_PATH when PRETRAIN is set."""
    model = LewinViT(**lewinvit_kwargs_from_config(cfg))
    if cfg.MODEL.BACKBONE.PRETRAIN:
        load_pretrained(model, cfg.MODEL.BACKBONE.PRETRAIN_PATH, cfg.MODEL.BACKBONE.LEWINVIT.PRETRAIN_FORMAT)
    return model
