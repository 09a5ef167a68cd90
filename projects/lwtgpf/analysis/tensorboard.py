"""TensorBoard pictures: rank lists and heat maps at each evaluation, and a projector embedding of
training features labelled by pseudo label, camera and identity at each clustering."""
import logging
import os
from typing import Optional, Sequence

import cv2
import numpy as np
import torch
from fastreid.config import CfgNode
from torch import nn

from ..data.io import read_image
from ..evaluation.evaluator import Ranking

__all__ = ["EmbeddingProjector", "put_eval_pictures"]

logger = logging.getLogger("fastreid." + __name__)


def _chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).float() / 255


def put_eval_pictures(cfg: CfgNode, model: nn.Module, dataset_name: str, ranking: Ranking, storage) -> None:
    """Put the first ANALYSIS.TB_RANKLISTS rank lists and ANALYSIS.TB_HEATMAPS query heat maps of an
    evaluation into fast-reid's event storage (written to TensorBoard with the next scalars)."""
    from .heatmap import heat_maps, heatmap_method, heatmap_panels, side_by_side
    from .inputs import load_batch
    from .ranklist import ranklist_image, select_queries

    analysis = cfg.ANALYSIS
    if not ranking.q_paths:
        logger.warning(f"{dataset_name}: the evaluation kept no image paths, so no rank list or heat map pictures")
        return
    for i, query in enumerate(select_queries(ranking, analysis.TB_RANKLISTS)):
        storage.put_image(f"{dataset_name}/ranklist_{i}", _chw(ranklist_image(ranking, query, analysis.TOPK)))
    count = min(analysis.TB_HEATMAPS, len(ranking.q_paths))
    if count:
        method = heatmap_method(cfg, model)
        batch, originals = load_batch(cfg, ranking.q_paths[:count], ranking.q_camids[:count])
        was_training = model.training
        model.eval()
        try:
            heats = heat_maps(cfg, model, batch, method)
        finally:
            model.train(was_training)
        height, width = cfg.INPUT.SIZE_TEST  # one picture of all queries: one size for all
        originals = [cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA) for image in originals]
        storage.put_image(f"{dataset_name}/heatmaps_{method}", _chw(side_by_side(heatmap_panels(heats, originals))))


class EmbeddingProjector:
    """Writes a fixed random sample of the training features to TensorBoard's projector, with the
    pseudo label (-1: outlier), the camera and the identity of each image, and its thumbnail.

    Args:
        output_dir: the run's TensorBoard folder (OUTPUT_DIR).
        paths, cams, pids: the training images in the order of the extracted features; `pids`
            None when identities are unknown.
        samples: how many images (CLUSTER.EMBEDDING_SAMPLES).
        seed: the sample's seed (the same images every epoch).
    """

    def __init__(self, output_dir: str, paths: Sequence[str], cams: Sequence[int],
                 pids: Optional[Sequence[object]] = None, samples: int = 1000, seed: int = 0,
                 thumbnail: Sequence[int] = (32, 16)):
        rng = np.random.default_rng(seed)
        self.index = np.sort(rng.choice(len(paths), size=min(samples, len(paths)), replace=False))
        self.output_dir = output_dir
        self.paths = [paths[i] for i in self.index]
        self.cams = np.asarray(cams)[self.index]
        self.pids = None if pids is None else [pids[i] for i in self.index]
        self.thumbnail = tuple(thumbnail)
        self._thumbnails: Optional[torch.Tensor] = None
        self._writer = None

    def _images(self) -> torch.Tensor:
        """Thumbnails centred on square white tiles (TensorBoard's sprite takes square ones)."""
        if self._thumbnails is None:
            height, width = self.thumbnail
            side = max(height, width)
            tiles = np.full((len(self.paths), side, side, 3), 255, np.uint8)
            top, left = (side - height) // 2, (side - width) // 2
            for tile, path in zip(tiles, self.paths):
                image = cv2.resize(np.asarray(read_image(path, "RGB")), (width, height), interpolation=cv2.INTER_AREA)
                tile[top:top + height, left:left + width] = image
            self._thumbnails = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255
        return self._thumbnails

    def write(self, epoch: int, features: torch.Tensor, cluster_labels: np.ndarray) -> None:
        """Add the sample's features [N, D] (all training images, in order) as embedding `epoch`."""
        from torch.utils.tensorboard import SummaryWriter

        if self._writer is None:
            os.makedirs(self.output_dir, exist_ok=True)
            self._writer = SummaryWriter(self.output_dir)
        header = ["pseudo label", "camera"] + ([] if self.pids is None else ["identity"])
        rows = [[str(int(cluster_labels[i])), str(int(c))] for i, c in zip(self.index, self.cams)]
        if self.pids is not None:
            rows = [row + [str(pid)] for row, pid in zip(rows, self.pids)]
        self._writer.add_embedding(features[torch.as_tensor(self.index)].float(), metadata=rows,
                                   metadata_header=header, label_img=self._images(), global_step=epoch,
                                   tag="train_features")
        self._writer.flush()
