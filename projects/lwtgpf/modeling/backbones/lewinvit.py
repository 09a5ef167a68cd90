"""LewinViT: a Swin Transformer with camera embeddings and locally enhanced feed-forward networks.

METHOD.md section 1. Built from `timm.models.swin_transformer` components (window attention with
its relative-position table and fused attention, patch embedding, patch merging, MLP), with the
original LWTGPF code's semantics where they differ from timm's Swin:

* Window geometry (the original's mmcls / SOLIDER `ShiftWindowMSA`): every block of every stage
  attends in 7x7 windows whatever the map size. The map is zero-padded at the bottom and right to
  multiples of the window, then, in shifted blocks, rolled by half a window on the padded map;
  the shifted-window mask is built on the padded map. timm rolls before padding and shrinks the
  window to a map side <= 7 (dropping the shift along it); at 384x128 that changes stage 4.
* LayerNorm eps 1e-6 everywhere (patch embedding, blocks, patch merging), as the original.
* SIE: one table of learnable vectors added to every patch token right after the patch
  embedding, scaled by `sie_coef`: one row per camera, per view, or per (camera, view) pair
  (row camera * num_views + view) when both exist, as in the original (and TransReID).

LewinViT adds what neither has:

* Local enhancement: every block's MLP gets a 3x3 depthwise convolution over its hidden
  activations laid out as the 2-D token map, as a residual branch initialised to zero, so a
  pretrained Swin computes exactly what it computed before loading into LewinViT.
* The split the global-part head needs: `forward_trunk` (patch embedding, stages 1-3, stage 4's
  patch merging) and `last_stage` (stage-4 blocks, NHWC in, NCHW out). The original's branches end
  with the last block; a final LayerNorm is an option.

The model is built for one input size (INPUT.SIZE_TRAIN); shifted-window masks are precomputed
for it. Attention goes through `F.scaled_dot_product_attention` (timm's fused path, which timm
leaves off by default for Swin as "experimental"; it computes the same
softmax(q k^T * scale + bias + mask) v). `torch._dynamo.explain` on a small model finds no graph
break in `forward_trunk` (camera id range checks, a host sync, are skipped while compiling) or in
`last_stage`.
"""
import logging
from functools import partial
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp, PatchEmbed, calculate_drop_path_rates, trunc_normal_
from timm.models._manipulate import named_apply
from timm.models.swin_transformer import PatchMerging, SwinTransformerBlock, window_partition, window_reverse
from timm.models.vision_transformer import init_weights_vit_timm

from fastreid.config import CfgNode
from fastreid.modeling.backbones import BACKBONE_REGISTRY

from .pretrained import load_pretrained
from .side_info import checked_ids, sie_vectors

logger = logging.getLogger("fastreid." + __name__)

# name -> (embed_dim, depths, num_heads), METHOD.md section 1
LEWINVIT_SIZES = {
    "tiny": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "small": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "base": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
}
NORM_EPS = 1e-6  # the original's LayerNorm eps (its build_norm_layer); timm's default is 1e-5
LayerNorm = partial(nn.LayerNorm, eps=NORM_EPS)


def padded_size(size: int, window: int) -> int:
    """`size` rounded up to a multiple of `window`: the map side windows are taken from."""
    return -(-size // window) * window


def shifted_window_mask(height: int, width: int, window: int, shift: int) -> torch.Tensor:
    """Attention mask [num_windows, window**2, window**2] of a shifted block (METHOD.md section 1).

    On the padded map (sides rounded up to multiples of `window`) rolled by -shift, tokens are
    labelled by the region they came from: per axis the slices (0, -window), (-window, -shift),
    (-shift, None). Pairs of tokens with different labels get -100, others 0.
    """
    hp, wp = padded_size(height, window), padded_size(width, window)
    labels = torch.zeros(hp, wp)
    bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for i, rows in enumerate(bands):
        for j, cols in enumerate(bands):
            labels[rows, cols] = 3 * i + j
    windows = window_partition(labels[None, :, :, None], (window, window)).reshape(-1, window * window)
    differ = windows[:, None, :] != windows[:, :, None]
    return torch.zeros(differ.shape).masked_fill(differ, -100.0)


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
    """timm's Swin block with the original's window geometry; its MLP sees the 2-D token map (NHWC),
    optionally locally enhanced.

    The window stays `window_size` x `window_size` at every map size (timm's `always_partition`),
    so the relative-position table has (2 * window_size - 1)**2 rows in every stage.
    """

    def __init__(self, local_enhance: bool = True, **kwargs):
        super().__init__(always_partition=True, norm_layer=LayerNorm, **kwargs)
        self.attn.fused_attn = True  # F.scaled_dot_product_attention (timm: opt-in "experimental" for Swin)
        if local_enhance:
            self.mlp = LocalEnhancedMlp(
                self.dim, int(self.dim * self.mlp_ratio), drop=kwargs.get("proj_drop", 0.0))

    def get_attn_mask(self, x: Optional[torch.Tensor] = None, device=None, dtype=None) -> Optional[torch.Tensor]:
        """The shifted-window mask on the padded map of the block's input resolution (None unshifted)."""
        if not any(self.shift_size):
            return None
        mask = shifted_window_mask(*self.input_resolution, self.window_size[0], self.shift_size[0])
        return mask.to(device=device, dtype=dtype or torch.float32)

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        """Window attention on NHWC tokens: pad to whole windows, roll, attend, roll back, crop."""
        _, height, width, channels = x.shape
        window, shift = self.window_size[0], self.shift_size[0]
        x = F.pad(x, (0, 0, 0, padded_size(width, window) - width, 0, padded_size(height, window) - height))
        padded_hw = x.shape[1:3]
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        windows = window_partition(x, self.window_size).reshape(-1, self.window_area, channels)
        windows = self.attn(windows, mask=self.attn_mask)
        x = window_reverse(windows.reshape(-1, window, window, channels), self.window_size, *padded_hw)
        if shift:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        return x[:, :height, :width]

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
    """One of stages 1-3: patch merging (stages 2, 3) then the blocks, NHWC in and out."""

    def __init__(self, downsample: Optional[nn.Module], blocks: nn.Sequential):
        super().__init__()
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.blocks = blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class LewinLastStage(nn.Module):
    """Stage-4 blocks (and an optional final LayerNorm): NHWC [B, h, w, C] in, NCHW [B, C, h, w] out."""

    def __init__(self, blocks: nn.Sequential, norm: Optional[nn.LayerNorm] = None):
        super().__init__()
        self.blocks = blocks
        self.norm = norm if norm is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.blocks(x)).permute(0, 3, 1, 2).contiguous()


class LewinViT(nn.Module):
    """Local-enhancing window ViT (METHOD.md section 1).

    Args:
        img_size: (height, width) the model is built for; both multiples of 8 * patch_size.
        embed_dim: stage-1 width (stage i has embed_dim * 2**i).
        depths / num_heads: blocks and attention heads per stage (4 stages).
        window_size: side of the square attention windows, in every stage.
        num_cameras / num_views: SIE table rows (0: none; both > 0: one row per pair).
        sie_coef: scale of the camera/view embeddings.
        local_enhance: add the zero-initialised depthwise branch to every MLP.
        final_norm: end the last stage with a LayerNorm (the original has none).
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
            final_norm: bool = False,
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
        if window_size < 2:
            raise ValueError(f"MODEL.BACKBONE.LEWINVIT.WINDOW_SIZE is {window_size}; expected at least 2")
        for i, (d, h) in enumerate(zip(depths, num_heads)):
            if d < 1 or h < 1 or (embed_dim * 2 ** i) % h:
                raise ValueError(f"LewinViT stage {i + 1}: width {embed_dim * 2 ** i} with {d} blocks and {h} heads "
                                 "(need >= 1 block and a width divisible by the heads)")
        if num_cameras < 0 or num_views < 0:
            raise ValueError(f"MODEL.BACKBONE.NUM_CAMERAS ({num_cameras}) and NUM_VIEWS ({num_views}) must be >= 0")
        self.img_size = img_size
        self.embed_dim = embed_dim
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.num_cameras = num_cameras
        self.num_views = num_views
        self.sie_coef = sie_coef
        self.local_enhance = local_enhance

        self.patch_embed = PatchEmbed(
            img_size=img_size, patch_size=patch_size, in_chans=3, embed_dim=embed_dim,
            norm_layer=LayerNorm, output_fmt="NHWC")
        sie_rows = max(num_cameras, 1) * max(num_views, 1) if num_cameras or num_views else 0
        self.sie_embed = nn.Parameter(torch.zeros(sie_rows, embed_dim)) if sie_rows else None

        grid = self.patch_embed.grid_size
        dpr = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        common = dict(window_size=window_size, mlp_ratio=mlp_ratio, attn_drop=attn_drop_rate,
                      proj_drop=proj_drop_rate, local_enhance=local_enhance)
        stages = []
        for i in range(3):
            dim = embed_dim * 2 ** i
            resolution = (grid[0] >> i, grid[1] >> i)
            blocks = _build_blocks(dim, resolution, depths[i], num_heads[i], drop_path=dpr[i], **common)
            downsample = PatchMerging(dim // 2, norm_layer=LayerNorm) if i > 0 else None
            stages.append(LewinStage(downsample, blocks))
        self.layers = nn.Sequential(*stages)
        self.last_downsample = PatchMerging(self.num_features // 2, norm_layer=LayerNorm)
        self.last_stage = LewinLastStage(
            _build_blocks(self.num_features, (grid[0] >> 3, grid[1] >> 3), depths[3], num_heads[3],
                          drop_path=dpr[3], **common),
            LayerNorm(self.num_features) if final_norm else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """timm's Swin initialisation; the SIE table trunc-normal (std .02); local branches zero."""
        named_apply(lambda module, name: init_weights_vit_timm(module, name, needs_reset=False), self)
        if self.sie_embed is not None:
            trunc_normal_(self.sie_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, LocalEnhancedMlp):
                module.reset_local()

    def _sie(self, cam_ids: Optional[torch.Tensor], view_ids: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """The SIE vector [B, embed_dim] of each sample (an unknown camera, -1, gets the mean
        camera's), or None when no embedding applies."""
        if self.num_cameras and cam_ids is not None:
            if self.num_views and view_ids is None:
                raise ValueError("this LewinViT has one SIE row per (camera, view) pair "
                                 "(MODEL.BACKBONE.NUM_VIEWS > 0): pass view ids with the camera ids")
            return sie_vectors(self.sie_embed, cam_ids, self.num_cameras, view_ids, self.num_views)
        if self.num_views and not self.num_cameras and view_ids is not None:
            return self.sie_embed[checked_ids(view_ids, self.num_views, "view", "MODEL.BACKBONE.NUM_VIEWS")]
        return None

    def forward_trunk(
            self, x: torch.Tensor, cam_ids: Optional[torch.Tensor] = None, view_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Images [B, 3, H, W] -> NHWC [B, H/32, W/32, num_features] (stage 4's patch merging included).

        The camera (view) embedding is added when the model has a table and ids are given; camera
        id -1 (`side_info.UNKNOWN_CAMERA`) gets the mean camera embedding.
        """
        if tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(f"LewinViT was built for {self.img_size[0]}x{self.img_size[1]} input "
                             f"(INPUT.SIZE_TRAIN) but got {x.shape[-2]}x{x.shape[-1]}; "
                             "set INPUT.SIZE_TEST equal to INPUT.SIZE_TRAIN")
        x = self.patch_embed(x)
        sie = self._sie(cam_ids, view_ids)
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
        final_norm=lw.FINAL_NORM,
    )


@BACKBONE_REGISTRY.register()
def build_lewinvit_backbone(cfg: CfgNode) -> LewinViT:
    """Build LewinViT from MODEL.BACKBONE.*; load MODEL.BACKBONE.PRETRAIN_PATH when PRETRAIN is set."""
    model = LewinViT(**lewinvit_kwargs_from_config(cfg))
    if cfg.MODEL.BACKBONE.PRETRAIN:
        load_pretrained(model, cfg.MODEL.BACKBONE.PRETRAIN_PATH, cfg.MODEL.BACKBONE.LEWINVIT.PRETRAIN_FORMAT)
    return model
