"""Backbones: LewinViT (registered as `build_lewinvit_backbone`) and the trunk / last-stage adapters."""
from .lewinvit import LewinViT, build_lewinvit_backbone
from .pretrained import LoadReport, load_pretrained
from .split import split_backbone

__all__ = ["LewinViT", "build_lewinvit_backbone", "LoadReport", "load_pretrained", "split_backbone"]
