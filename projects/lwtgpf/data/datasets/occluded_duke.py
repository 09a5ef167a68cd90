"""Occluded-DukeMTMC (Miao et al., Pose-Guided Feature Alignment for Occluded Person
Re-Identification, ICCV 2019), in Market-1501 layout.

Statistics: 702 train ids / 15,618 images; 519 query ids / 2,210 images;
1,110 gallery ids / 17,661 images; 8 cameras.
"""
import os

from fastreid.data.datasets import DATASET_REGISTRY

from .market_layout import MarketLayoutDataset

__all__ = ["OccludedDuke"]


@DATASET_REGISTRY.register()
class OccludedDuke(MarketLayoutDataset):
    """Occluded-DukeMTMC, read from ``<root>/Occluded_Duke/``."""

    dataset_dir = "Occluded_Duke"
    dataset_name = "occludedduke"
    num_cameras = 8
    example_name = "0001_c2_f0046182.jpg"
    layout_hint = (
        "Occluded_Duke is built from DukeMTMC-reID with the split lists of "
        "https://github.com/lightas/Occluded-DukeMTMC-Dataset (see datasets/README.md)."
    )

    def __init__(self, root: str = "datasets", **kwargs):
        self.root = root
        super().__init__(os.path.join(root, self.dataset_dir), **kwargs)
