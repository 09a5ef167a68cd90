"""The epoch's training-set features, kept lean for large sets (METHOD.md section 3, steps 1 and 5).

Every process extracts its contiguous share of the images (fastreid's InferenceSampler) on its
own device. Clustering needs every global feature, so those are gathered to every process; the
part features are only needed for the proxy memory's means, so each process keeps just its own
share of them (optionally in float16) until the labels exist; it then sums them per proxy and the
sums are all-reduced (`pseudo_labelling.proxy_feature_sums`). No process ever holds the [1+P, N, D] tensor: at N = 1,000,000, D = 768, P = 5
that tensor is 18 GB in float32, the global features alone 3 GB.
"""
from dataclasses import dataclass

import torch
from fastreid.utils import comm
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..distributed import all_gather_rows, split_rows

__all__ = ["EpochFeatures", "extract_features"]

PART_DTYPES = {"float32": torch.float32, "float16": torch.float16}


@dataclass
class EpochFeatures:
    """Global features of every image [N, D] float32, and this process's share of the part
    features [P, n, D] (images `rows`), all on the model's device."""

    global_all: torch.Tensor
    parts_local: torch.Tensor
    rows: range


@torch.no_grad()
def extract_features(model: torch.nn.Module, loader: DataLoader, num_images: int,
                     part_dtype: str = "float32") -> EpochFeatures:
    """L2-normalised features of the `num_images` images of `loader` (eval mode, the model's
    `extract_features`), each process extracting its share; `part_dtype` is float32 or float16
    (config key CLUSTER.PART_DTYPE)."""
    if part_dtype not in PART_DTYPES:
        raise ValueError(f"CLUSTER.PART_DTYPE must be one of {', '.join(PART_DTYPES)}, got {part_dtype!r}")
    rows = split_rows(num_images, comm.get_world_size())[comm.get_rank()]
    globals_, parts = [], []
    for batch in tqdm(loader, desc="Extracting features", disable=not comm.is_main_process(),
                      leave=False, dynamic_ncols=True):
        features = model.extract_features(batch)
        globals_.append(features[0].float())
        parts.append(features[1:].to(PART_DTYPES[part_dtype]))
        del features
    global_local = torch.cat(globals_)
    parts_local = torch.cat(parts, dim=1)
    del globals_, parts
    if global_local.shape[0] != len(rows):
        raise RuntimeError(f"the loader gave {global_local.shape[0]} images to process {comm.get_rank()}, "
                           f"expected its share {rows.start}..{rows.stop - 1} of {num_images}")
    if comm.get_world_size() == 1:
        return EpochFeatures(global_local, parts_local, rows)
    global_all = all_gather_rows(global_local, len(split_rows(num_images, comm.get_world_size())[0]))
    return EpochFeatures(global_all, parts_local, rows)

