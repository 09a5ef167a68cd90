"""Data loaders built with a plain torch `DataLoader`.

fast-reid's own builders wrap every loader in `DataLoaderX`, which opens a CUDA stream; these
reuse its datasets, transforms, samplers and collate function and run on CPU-only machines too.
"""
import logging
import os
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from fastreid.config import CfgNode
from fastreid.data.build import fast_batch_collator
from fastreid.data.common import CommDataset
from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.samplers import InferenceSampler, NaiveIdentitySampler, TrainingSampler
from fastreid.utils import comm
from torch.utils.data import BatchSampler, DataLoader

from .checks import check_cross_camera, usable_splits
from .datasets.market_layout import layout_tree
from .io import read_image
from .samplers import ClusterBalancedSampler, ProxyBalancedSampler
from .seeding import PrivateRNGSampler, SeededBatches, derive_seed, seeded_rngs
from .synthetic import BIAS_DEFAULTS
from .transforms import build_test_transforms, build_train_transforms

logger = logging.getLogger("fastreid." + __name__)

Item = Tuple[str, object, object]  # (image path, identity, camera), fast-reid's convention

# fast-reid's own readers report a missing folder as '"<path>" is not found' (Market1501,
# DukeMTMC) or 'Dataset folder not found' (MSMT17): the folder each expects under the data root.
_FASTREID_FOLDERS = {
    "Market1501": ("Market-1501-v15.09.15", layout_tree("Market-1501-v15.09.15", example="0002_c1s1_000451_03.jpg")),
    "DukeMTMC": ("DukeMTMC-reID", layout_tree("DukeMTMC-reID", example="0001_c2_f0046182.jpg")),
    "MSMT17": ("MSMT17_V1 or MSMT17_V2", "MSMT17_V1/  train/  test/  list_train.txt  list_val.txt  list_query.txt  "
               "list_gallery.txt\n  or\nMSMT17_V2/  mask_train_v2/  mask_test_v2/  list_train.txt  list_val.txt  "
               "list_query.txt  list_gallery.txt"),
}


class ImageDataset(CommDataset):
    """fast-reid's CommDataset whose unreadable images stop with an error naming the file
    (inside a loader worker, PIL's "image file is truncated" names none).

    An index may come with a seed, `(index, seed)` (see `seeding.SeededBatches`): the transform
    then draws from RNGs seeded with it, so the sample's augmentation is a function of the seed.
    """

    def __getitem__(self, key) -> dict:
        index, seed = key if isinstance(key, tuple) else (key, None)
        path, pid, camid = self.img_items[index]
        img = read_image(path)
        if self.transform is not None:
            if seed is None:
                img = self.transform(img)
            else:
                with seeded_rngs(seed):
                    img = self.transform(img)
        if self.relabel:
            pid, camid = self.pid_dict[pid], self.cam_dict[camid]
        return {"images": img, "targets": pid, "camids": camid, "img_paths": path}


def data_root() -> str:
    """The data root: environment variable FASTREID_DATASETS, else `datasets`."""
    return os.getenv("FASTREID_DATASETS", "datasets")


def dataset_kwargs(cfg: CfgNode) -> Dict[str, object]:
    """Keyword arguments every dataset constructor receives; each reader takes the ones it knows."""
    syn, pop = cfg.DATASETS.SYNTHETIC, cfg.DATASETS.POPULATION
    return {
        "custom_dir": cfg.DATASETS.CUSTOM_DIR,
        "cuhk03_variant": cfg.DATASETS.CUHK03_VARIANT,
        "synthetic_num_cameras": syn.NUM_CAMERAS,
        "synthetic_num_train_ids": syn.NUM_TRAIN_IDS,
        "synthetic_num_test_ids": syn.NUM_TEST_IDS,
        "synthetic_images_per_id": syn.IMAGES_PER_ID,
        "synthetic_occluded": syn.OCCLUDED,
        "synthetic_seed": syn.SEED,
        **{f"synthetic_{key}": syn[key.upper()] for key in BIAS_DEFAULTS},
        "population_num_ids": pop.NUM_IDS,
        "population_num_test_ids": pop.NUM_TEST_IDS,
        "population_num_cameras": pop.NUM_CAMERAS,
        "population_images_per_id": pop.IMAGES_PER_ID,
        "population_seed": pop.SEED,
    }


def build_dataset(cfg: CfgNode, name: str):
    """Instantiate the registered dataset `name` under the data root."""
    if name not in DATASET_REGISTRY._obj_map:
        known = ", ".join(sorted(DATASET_REGISTRY._obj_map))
        raise KeyError(f"Unknown dataset {name!r} in DATASETS.NAMES / DATASETS.TESTS; registered: {known}")
    root = data_root()
    try:
        # Held back until the reader succeeds: Market1501 warns of a deprecated layout before failing on a missing one.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dataset = DATASET_REGISTRY.get(name)(root=root, **dataset_kwargs(cfg))
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return dataset
    except (RuntimeError, AssertionError) as err:
        if name not in _FASTREID_FOLDERS or not ("is not found" in str(err) or "folder not found" in str(err)):
            raise
        folder, tree = _FASTREID_FOLDERS[name]
        raise FileNotFoundError(
            f"{name}: {err} (fast-reid's reader). It expects the folder {folder} under the data root "
            f"{os.path.abspath(root)}:\n{tree}\n(The data root is the environment variable FASTREID_DATASETS, "
            f"default 'datasets'; see datasets/README.md.)") from None


def _train_sets(cfg: CfgNode, show: bool = False) -> List[Tuple[str, List[Item]]]:
    """(name, train items with 0-based integer cameras of that dataset) for every DATASETS.NAMES."""
    sets = []
    for name in cfg.DATASETS.NAMES:
        data = build_dataset(cfg, name)
        if show and comm.is_main_process():
            data.show_train()
        sets.append((name, [(path, pid, int(str(cam).rsplit("_", 1)[-1])) for path, pid, cam in data.train]))
    return sets


def _offsets(sets: List[Tuple[str, List[Item]]]) -> Dict[str, int]:
    offsets, first = {}, 0
    for name, items in sets:
        offsets.setdefault(name, first)
        first += max((cam for _, _, cam in items), default=-1) + 1
    return offsets


def camera_offsets(cfg: CfgNode) -> Dict[str, int]:
    """The first camera id of each training dataset: the datasets of DATASETS.NAMES get disjoint
    camera ids (dataset k's cameras follow those of datasets 0..k-1), so that one camera
    embedding never serves two cameras. A test set that is also a training set gets its offset."""
    if len(cfg.DATASETS.NAMES) < 2:
        return {name: 0 for name in cfg.DATASETS.NAMES}
    return _offsets(_train_sets(cfg))


def load_train_items(cfg: CfgNode) -> List[Item]:
    """Training items of every dataset in DATASETS.NAMES, in a fixed order, with integer cameras.

    fast-reid prefixes training identities and cameras with the dataset name ("market1501_3");
    identities keep the prefix (they only serve as ground truth for pseudo-label quality), cameras
    become the integer the camera embedding needs, disjoint across datasets (`camera_offsets`).
    """
    sets = _train_sets(cfg, show=True)
    offsets = _offsets(sets)
    if len(sets) > 1 and comm.is_main_process():
        logger.info("Several training sets get disjoint camera ids: " + ", ".join(
            f"{name} cameras {offsets[name]}..{offsets[name] + max(c for _, _, c in items)}" for name, items in sets))
    return [(path, pid, cam + offsets[name]) for name, items in sets for path, pid, cam in items]


def load_test_items(cfg: CfgNode, name: str) -> Tuple[List[Item], List[Item]]:
    """Query and gallery items of dataset `name`, cameras offset as in training (`camera_offsets`)."""
    data = build_dataset(cfg, name)
    if comm.is_main_process():
        data.show_test()
    offset = camera_offsets(cfg).get(name, 0)
    query, gallery = ([(p, pid, cam + offset) for p, pid, cam in split] for split in (data.query, data.gallery))
    return query, gallery


def _loader(cfg: CfgNode, dataset, batch_sampler, seed: int = 0) -> DataLoader:
    # Its own generator: creating an iterator must not draw from the global torch RNG, whose
    # state a resumed run restores.
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        collate_fn=fast_batch_collator,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(seed),
    )


def _local_batch(cfg: CfgNode) -> int:
    world = comm.get_world_size()
    if cfg.SOLVER.IMS_PER_BATCH % world:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH={cfg.SOLVER.IMS_PER_BATCH} is the global batch and must be divisible "
            f"by the number of processes ({world})"
        )
    return cfg.SOLVER.IMS_PER_BATCH // world


def _seeded_loader(cfg: CfgNode, dataset, sampler, seed: int, start_batch: int) -> DataLoader:
    local_batch = _local_batch(cfg)
    batches = SeededBatches(BatchSampler(sampler, local_batch, drop_last=True), derive_seed(seed, 1),
                            start=start_batch, offset=comm.get_rank() * local_batch)
    return _loader(cfg, dataset, batches, seed)


def build_supervised_train_loader(cfg: CfgNode, items: Sequence[Item], seed: Optional[int] = None,
                                  start_batch: int = 0) -> DataLoader:
    """Identity-labelled loader for the supervised reference (fast-reid's samplers).

    Batches and augmentation are a function of `seed` (default: one shared by all processes);
    `start_batch` skips the batches a resumed run has already trained on.
    """
    dataset = ImageDataset(list(items), build_train_transforms(cfg), relabel=True)
    seed = comm.shared_random_seed() if seed is None else seed
    name = cfg.DATALOADER.SAMPLER_TRAIN
    if name == "TrainingSampler":
        sampler = TrainingSampler(len(dataset), seed=derive_seed(seed, 0))
    elif name == "NaiveIdentitySampler":
        sampler = NaiveIdentitySampler(dataset.img_items, _local_batch(cfg), cfg.DATALOADER.NUM_INSTANCE,
                                       seed=derive_seed(seed, 0))
    else:
        raise ValueError(
            f"DATALOADER.SAMPLER_TRAIN={name!r} is not a supervised sampler; "
            "expected TrainingSampler or NaiveIdentitySampler"
        )
    return _seeded_loader(cfg, dataset, PrivateRNGSampler(sampler, derive_seed(seed, 0)), seed, start_batch)


def build_pseudo_label_loader(
    cfg: CfgNode, items: Sequence[Item], cluster_labels: np.ndarray, proxy_labels: np.ndarray,
    seed: Optional[int] = None, start_batch: int = 0,
) -> DataLoader:
    """The epoch's loader: non-outlier images with their proxy ids as targets, proxy-balanced.

    Batches and augmentation are a function of `seed` (default: one shared by all processes);
    `start_batch` skips the batches a resumed run has already trained on.
    """
    keep = np.flatnonzero(proxy_labels >= 0)
    epoch_items = [(items[i][0], int(proxy_labels[i]), items[i][2]) for i in keep]
    dataset = ImageDataset(epoch_items, build_train_transforms(cfg), relabel=False)
    seed = comm.shared_random_seed() if seed is None else seed
    name = cfg.DATALOADER.SAMPLER_TRAIN
    if name == "ProxyBalancedSampler":
        sampler = ProxyBalancedSampler(proxy_labels[keep], cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_INSTANCE,
                                       seed=derive_seed(seed, 0))
    elif name == "ClusterBalancedSampler":
        sampler = ClusterBalancedSampler(cluster_labels[keep], cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_INSTANCE,
                                         seed=derive_seed(seed, 0))
    else:
        raise ValueError(
            f"DATALOADER.SAMPLER_TRAIN={name!r} is not a pseudo-label sampler; "
            "expected ProxyBalancedSampler or ClusterBalancedSampler"
        )
    return _seeded_loader(cfg, dataset, sampler, seed, start_batch)


def build_inference_loader(cfg: CfgNode, items: Sequence[Item]) -> DataLoader:
    """Test-transform loader over `items` in order, sharded across processes."""
    dataset = ImageDataset(list(items), build_test_transforms(cfg), relabel=False)
    local = max(cfg.TEST.IMS_PER_BATCH // comm.get_world_size(), 1)
    return _loader(cfg, dataset, BatchSampler(InferenceSampler(len(dataset)), local, drop_last=False))


def build_test_loader(cfg: CfgNode, name: str) -> Tuple[DataLoader, int]:
    """Query + gallery loader of dataset `name` and the number of queries.

    The images are checked first (`checks.usable_splits`) and the set must be evaluable
    (`checks.check_cross_camera`)."""
    query, gallery = load_test_items(cfg, name)
    splits = usable_splits(cfg, {f"{name} query": query, f"{name} gallery": gallery})
    query, gallery = splits[f"{name} query"], splits[f"{name} gallery"]
    check_cross_camera(name, query, gallery)
    return build_inference_loader(cfg, query + gallery), len(query)
