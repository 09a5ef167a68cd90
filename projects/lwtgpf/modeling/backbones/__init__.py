"""Backbones: LewinViT (`build_lewinvit_backbone`), TMGF's TransReID ViT (`build_transreid_vit_backbone`)
and the trunk / last-stage adapters."""
from .lewinvit import LewinViT, build_lewinvit_backbone
from .pretrained import load_pretrained
from .split import split_backbone
from .vit import TransReIDViT, build_transreid_vit_backbone, load_vit_pretrained

__all__ = ["LewinViT", "build_lewinvit_backbone", "load_pretrained", "split_backbone",
           "TransReIDViT", "build_transreid_vit_backbone", "load_vit_pretrained"]
