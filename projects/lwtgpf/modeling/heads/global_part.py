"""Dual-branch global-part head (METHOD.md section 2).

Each branch is an independent copy of the backbone's last stage, fed the trunk output.
A branch gives one global feature (mean over all tokens; a ViT's class token, as in TMGF)
and ``g`` part features (means over ``g`` horizontal stripes); the global features of the
branches are merged, then every feature gets its own BNNeck and L2 normalisation.
"""
import copy
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from fastreid.config import CfgNode, configurable
from fastreid.layers.weight_init import weights_init_kaiming
from fastreid.modeling.backbones import build_backbone
from fastreid.modeling.heads import REID_HEADS_REGISTRY

from ..backbones.split import split_backbone

__all__ = ["GlobalPartHead", "stripe_pool"]

GLOBAL_FEATS = ("mean", "b1", "b2")
EVAL_FEATS = ("global", "global_parts")


def branch_features(branch: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(global feature [B, C], NCHW map) of one branch on the trunk output ``x``.

    A branch with a class token gives it as the global feature through
    ``forward_global_and_map`` (the ViT of TMGF); otherwise the global feature is the mean of the
    map over all tokens (LewinViT, METHOD.md section 2; ResNet).
    """
    if hasattr(branch, "forward_global_and_map"):
        return branch.forward_global_and_map(x)
    fmap = branch(x)
    return fmap.mean((2, 3)), fmap


def stripe_pool(fmap: torch.Tensor, num_stripes: int) -> torch.Tensor:
    """Average an NCHW map over ``num_stripes`` horizontal stripes -> [num_stripes, B, C].

    Stripe i covers rows floor(i H / g) to ceil((i + 1) H / g), top to bottom: adaptive average
    pooling to (g, 1), as the original code pools. When ``H`` is a multiple of ``g`` (12 rows in 2
    or 3 stripes) the stripes are disjoint and equal; otherwise neighbours share a row.
    """
    height = fmap.shape[2]
    if not 1 <= num_stripes <= height:
        raise ValueError(f"cannot split a feature map of {height} rows into {num_stripes} stripes "
                         f"(MODEL.HEADS.PART_GRANULARITIES must lie in [1, {height}])")
    return F.adaptive_avg_pool2d(fmap, (num_stripes, 1)).flatten(2).permute(2, 0, 1)


@REID_HEADS_REGISTRY.register()
class GlobalPartHead(nn.Module):
    """Global and part features from one copy of the backbone's last stage per granularity.

    Input: the trunk output of a backbone (``backbone.forward_trunk``); each branch maps it to
    an NCHW map [B, C, h, w]. Output, L2-normalised, global first:

    - training: [1+P, B, C] with P = sum(granularities) (the proxy memory's layout);
    - eval: the retrieval feature, [B, C] (``eval_feat="global"``) or the global and part
      features concatenated, [B, (1+P) C] (``"global_parts"``).

    ``forward_features`` gives the [1+P, B, C] stack in either mode.

    fastreid's ``build_heads(cfg)`` passes only the config; the head then builds the
    backbone named by the config to copy its last stage. The meta-architecture passes the
    last stage of the backbone it already built instead: ``GlobalPartHead(cfg,
    last_stage=..., feat_dim=...)``.
    """

    @configurable
    def __init__(
            self,
            *,
            last_stage: nn.Module,
            feat_dim: int,
            granularities: Sequence[int] = (2, 3),
            global_feat: str = "mean",
            eval_feat: str = "global",
    ):
        """
        Args:
            last_stage: the backbone's last stage, trunk output -> [B, feat_dim, h, w]; deep-copied
                once per branch, so every branch starts from its (pretrained) weights.
            feat_dim: channels of the last stage's output.
            granularities: horizontal stripes of each branch, one branch per entry.
            global_feat: ``mean`` of the branches' global features, or ``b1`` / ``b2`` (one branch).
            eval_feat: ``global`` or ``global_parts``: the retrieval feature in eval mode.
        """
        super().__init__()
        granularities = [int(g) for g in granularities]
        if len(granularities) == 0 or min(granularities) < 1:
            raise ValueError(f"MODEL.HEADS.PART_GRANULARITIES must be positive stripe counts, one per "
                             f"branch, got {list(granularities)}")
        if global_feat not in GLOBAL_FEATS:
            raise ValueError(f"MODEL.HEADS.GLOBAL_FEAT must be one of {GLOBAL_FEATS}, got {global_feat!r}")
        if global_feat != "mean" and int(global_feat[1:]) > len(granularities):
            raise ValueError(f"MODEL.HEADS.GLOBAL_FEAT={global_feat!r} names a branch that does not exist: "
                             f"MODEL.HEADS.PART_GRANULARITIES={granularities} gives {len(granularities)}")
        if eval_feat not in EVAL_FEATS:
            raise ValueError(f"MODEL.HEADS.EVAL_FEAT must be one of {EVAL_FEATS}, got {eval_feat!r}")

        self.feat_dim = int(feat_dim)
        self.granularities = granularities
        self.num_parts = sum(granularities)
        self.global_feat = global_feat
        self.eval_feat = eval_feat
        self.branches = nn.ModuleList(copy.deepcopy(last_stage) for _ in granularities)
        self.bnnecks = nn.ModuleList(nn.BatchNorm1d(self.feat_dim) for _ in range(1 + self.num_parts))
        self.bnnecks.apply(weights_init_kaiming)
        for bn in self.bnnecks:
            bn.bias.requires_grad_(False)  # BNNeck convention (fastreid's bias_freeze)

    @classmethod
    def from_config(cls, cfg: CfgNode, last_stage: Optional[nn.Module] = None,
                    feat_dim: Optional[int] = None) -> dict:
        if (last_stage is None) != (feat_dim is None):
            raise ValueError("GlobalPartHead needs both last_stage and feat_dim, or neither "
                             "(then it builds MODEL.BACKBONE.NAME to take its last stage)")
        if last_stage is None:
            backbone = split_backbone(build_backbone(cfg))
            last_stage, feat_dim = backbone.last_stage, backbone.num_features
        return {
            "last_stage": last_stage,
            "feat_dim": feat_dim,
            "granularities": cfg.MODEL.HEADS.PART_GRANULARITIES,
            "global_feat": cfg.MODEL.HEADS.GLOBAL_FEAT,
            "eval_feat": cfg.MODEL.HEADS.EVAL_FEAT,
        }

    @property
    def num_features(self) -> int:
        """Width of the eval-mode (retrieval) feature."""
        return self.feat_dim * (1 if self.eval_feat == "global" else 1 + self.num_parts)

    def forward_features(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Trunk output -> L2-normalised global and part features [1+P, B, C], global first.

        ``normalize=False`` gives the BNNeck outputs before the normalisation (for analysis: the
        gradient of a cosine similarity vanishes where a feature meets itself)."""
        globals_, parts = [], []
        for b, (branch, g) in enumerate(zip(self.branches, self.granularities)):
            glob, fmap = branch_features(branch, x)
            if fmap.dim() != 4 or fmap.shape[1] != self.feat_dim:
                raise ValueError(f"branch {b + 1} (a copy of the backbone's last stage) must give "
                                 f"[B, {self.feat_dim}, h, w], got {tuple(fmap.shape)}")
            globals_.append(glob)
            parts.append(stripe_pool(fmap, g))
        if self.global_feat == "mean":
            glob = torch.stack(globals_).mean(0)
        else:
            glob = globals_[int(self.global_feat[1:]) - 1]
        raw = torch.cat([glob.unsqueeze(0)] + parts)
        neck = torch.stack([bn(f) for bn, f in zip(self.bnnecks, raw)])
        return F.normalize(neck, dim=-1) if normalize else neck

    def retrieval_feature(self, features: torch.Tensor) -> torch.Tensor:
        """[1+P, B, C] -> the retrieval feature chosen by ``eval_feat``."""
        if self.eval_feat == "global":
            return features[0]
        return features.permute(1, 0, 2).reshape(features.shape[1], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.forward_features(x)
        return features if self.training else self.retrieval_feature(features)
