"""Dataset readers; importing this package registers them in fast-reid's DATASET_REGISTRY."""
from .cuhk03np import CUHK03NP
from .market_layout import MarketLayout, MarketLayoutDataset
from .occluded_duke import OccludedDuke

__all__ = ["CUHK03NP", "MarketLayout", "MarketLayoutDataset", "OccludedDuke"]
