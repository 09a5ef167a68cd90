"""CUHK03 under the new protocol (Zhong et al., Re-ranking Person Re-identification
with k-reciprocal Encoding, CVPR 2017), in Market-1501 layout.

Statistics: 767 train ids, 700 test ids, 2 cameras; labeled: 7,368 train /
1,400 query / 5,328 gallery images; detected: 7,365 / 1,400 / 5,332.
"""
import os

from fastreid.data.datasets import DATASET_REGISTRY

from .market_layout import MarketLayoutDataset

__all__ = ["CUHK03NP"]

VARIANTS = ("labeled", "detected")


@DATASET_REGISTRY.register()
class CUHK03NP(MarketLayoutDataset):
    """CUHK03-NP, read from ``<root>/cuhk03-np/<variant>/``.

    The variant comes from the ``cuhk03_variant`` kwarg (DATASETS.CUHK03_VARIANT):
    ``labeled`` (hand-drawn boxes) or ``detected`` (DPM boxes).
    """

    dataset_dir = "cuhk03-np"
    dataset_name = "cuhk03np"
    num_cameras = 2
    example_name = "0001_c1_1.png"
    layout_hint = (
        "The CUHK03-NP release (https://github.com/zhunzhong07/person-re-ranking/tree/master/CUHK03-NP) "
        "ships cuhk03-np/labeled/ and cuhk03-np/detected/ in this layout (see datasets/README.md)."
    )

    def __init__(self, root: str = "datasets", cuhk03_variant: str = "labeled", **kwargs):
        if cuhk03_variant not in VARIANTS:
            raise ValueError(
                f"DATASETS.CUHK03_VARIANT must be one of {'|'.join(VARIANTS)}, got {cuhk03_variant!r}"
            )
        self.root = root
        self.variant = cuhk03_variant
        super().__init__(os.path.join(root, self.dataset_dir, cuhk03_variant), **kwargs)
