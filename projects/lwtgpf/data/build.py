"""Data loaders built with a plain torch `DataLoader`.

fast-reid's own builders wrap every loader in `DataLoaderX`, which opens a CUDA stream; these
reuse its datasets, transforms, samplers and collate function and run on CPU-only machines too.
"""
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np
from fastreid.config import CfgNode
from fastreid.data.build import fast_batch_collator
from fastreid.data.common import CommDataset
from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.samplers import InferenceSampler, NaiveIdentitySampler, TrainingSampler
from fastreid.data.transforms import build_transforms
from fastreid.utils import comm
from torch.utils.data import BatchSampler, DataLoader

from .io import read_image
from .samplers import ClusterBalancedSampler, ProxyBalancedSampler

Item = Tuple[str, object, object]  # (image path, identity, camera), fast-reid's convention


class ImageDataset(CommDataset):
    """fast-reid's CommDataset whose unreadable images stop with an error naming the file
    (inside a loader worker, PIL's "image file is truncated" names none)."""

    def __getitem__(self, index: int) -> dict:
        path, pid, camid = self.img_items[index]
        img = read_image(path)
        if self.transform is not None:
            img = self.transform(img)
        if self.relabel:
            pid, camid = self.pid_dict[pid], self.cam_dict[camid]
        return {"images": img, "targets": pid, "camids": camid, "img_paths": path}


def data_root() -> str:
    """The data root: environment variable FASTREID_DATASETS, else `datasets`."""
    return os.getenv("FASTREID_DATASETS", "datasets")


def dataset_kwargs(cfg: CfgNode) -> Dict[str, object]:
    """Keyword arguments every dataset constructor receives; each reader takes the ones it knows."""
    syn = cfg.DATASETS.SYNTHETIC
    return {
        "custom_dir": cfg.DATASETS.CUSTOM_DIR,
        "cuhk03_variant": cfg.DATASETS.CUHK03_VARIANT,
        "synthetic_num_cameras": syn.NUM_CAMERAS,
        "synthetic_num_train_ids": syn.NUM_TRAIN_IDS,
        "synthetic_num_test_ids": syn.NUM_TEST_IDS,
        "synthetic_images_per_id": syn.IMAGES_PER_ID,
        "synthetic_occluded": syn.OCCLUDED,
        "synthetic_seed": syn.SEED,
        "synthetic_colour_cast": syn.COLOUR_CAST,
        "synthetic_background_contrast": syn.BACKGROUND_CONTRAST,
        "synthetic_blur_noise": syn.BLUR_NOISE,
    }


def build_dataset(cfg: CfgNode, name: str):
    """Instantiate the registered dataset `name` under the data root."""
    if name not in DATASET_REGISTRY._obj_map:
        known = ", ".join(sorted(DATASET_REGISTRY._obj_map))
        raise KeyError(f"Unknown dataset {name!r} in DATASETS.NAMES / DATASETS.TESTS; registered: {known}")
    return DATASET_REGISTRY.get(name)(root=data_root(), **dataset_kwargs(cfg))


def load_train_items(cfg: CfgNode) -> List[Item]:
    """Training items of every dataset in DATASETS.NAMES, in a fixed order, with integer cameras.

    fast-reid prefixes training identities and cameras with the dataset name ("market1501_3");
    identities keep the prefix (they only serve as ground truth for pseudo-label quality), cameras
    become the integer the camera embedding needs.
    """
    items: List[Item] = []
    for name in cfg.DATASETS.NAMES:
        data = build_dataset(cfg, name)
        if comm.is_main_process():
            data.show_train()
        items.extend((path, pid, int(str(cam).rsplit("_", 1)[-1])) for path, pid, cam in data.train)
    return items


def _loader(cfg: CfgNode, dataset, batch_sampler) -> DataLoader:
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        collate_fn=fast_batch_collator,
        persistent_workers=False,
    )


def _local_batch(cfg: CfgNode) -> int:
    world = comm.get_world_size()
    if cfg.SOLVER.IMS_PER_BATCH % world:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH={cfg.SOLVER.IMS_PER_BATCH} is the global batch and must be divisible "
            f"by the number of processes ({world})"
        )
    return cfg.SOLVER.IMS_PER_BATCH // world


def build_supervised_train_loader(cfg: CfgNode, items: Sequence[Item]) -> DataLoader:
    """Identity-labelled loader for the supervised reference (fast-reid's samplers)."""
    dataset = ImageDataset(list(items), build_transforms(cfg, is_train=True), relabel=True)
    local_batch = _local_batch(cfg)
    name = cfg.DATALOADER.SAMPLER_TRAIN
    if name == "TrainingSampler":
        sampler = TrainingSampler(len(dataset))
    elif name == "NaiveIdentitySampler":
        sampler = NaiveIdentitySampler(dataset.img_items, local_batch, cfg.DATALOADER.NUM_INSTANCE)
    else:
        raise ValueError(
            f"DATALOADER.SAMPLER_TRAIN={name!r} is not a supervised sampler; "
            "expected TrainingSampler or NaiveIdentitySampler"
        )
    return _loader(cfg, dataset, BatchSampler(sampler, local_batch, drop_last=True))


def build_pseudo_label_loader(
    cfg: CfgNode, items: Sequence[Item], cluster_labels: np.ndarray, proxy_labels: np.ndarray
) -> DataLoader:
    """The epoch's loader: non-outlier images with their proxy ids as targets, proxy-balanced."""
    keep = np.flatnonzero(proxy_labels >= 0)
    epoch_items = [(items[i][0], int(proxy_labels[i]), items[i][2]) for i in keep]
    dataset = ImageDataset(epoch_items, build_transforms(cfg, is_train=True), relabel=False)
    name = cfg.DATALOADER.SAMPLER_TRAIN
    if name == "ProxyBalancedSampler":
        sampler = ProxyBalancedSampler(proxy_labels[keep], cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_INSTANCE)
    elif name == "ClusterBalancedSampler":
        sampler = ClusterBalancedSampler(cluster_labels[keep], cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_INSTANCE)
    else:
        raise ValueError(
            f"DATALOADER.SAMPLER_TRAIN={name!r} is not a pseudo-label sampler; "
            "expected ProxyBalancedSampler or ClusterBalancedSampler"
        )
    return _loader(cfg, dataset, BatchSampler(sampler, _local_batch(cfg), drop_last=True))


def build_inference_loader(cfg: CfgNode, items: Sequence[Item]) -> DataLoader:
    """Test-transform loader over `items` in order, sharded across processes."""
    dataset = ImageDataset(list(items), build_transforms(cfg, is_train=False), relabel=False)
    local = max(cfg.TEST.IMS_PER_BATCH // comm.get_world_size(), 1)
    return _loader(cfg, dataset, BatchSampler(InferenceSampler(len(dataset)), local, drop_last=False))


def build_test_loader(cfg: CfgNode, name: str) -> Tuple[DataLoader, int]:
    """Query + gallery loader of dataset `name` and the number of queries."""
    data = build_dataset(cfg, name)
    if comm.is_main_process():
        data.show_test()
    return build_inference_loader(cfg, data.query + data.gallery), len(data.query)
