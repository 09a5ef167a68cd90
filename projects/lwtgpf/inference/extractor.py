"""Features of new images from a trained model, as trackers and retrieval systems call a re-id model.

`FeatureExtractor` gives exactly the evaluation's feature of an image: the test transform of the
config (grey-world balance included when INPUT.GRAY_WORLD is on), the model's retrieval feature
(MODEL.HEADS.EVAL_FEAT), the average with the flipped image when TEST.FLIP.ENABLED is on, then L2
normalisation, so that cosine similarity is a dot product. Every input becomes an 8-bit RGB image
first, as an image file would be, and takes the evaluation's path from there.

Camera ids are optional. A model with camera embeddings (MODEL.BACKBONE.NUM_CAMERAS > 0) gives an
image of unknown camera (-1, the default) the mean camera embedding (`side_info.UNKNOWN_CAMERA`);
docs/BENCHMARKS.md "Unknown cameras" measures it against the true camera and the alternatives.

The ONNX Runtime backend runs the graph of `lwtgpf.analysis.export` (exported on construction
from the weights, or an `.onnx` file of tools/export_onnx.py) on the same preprocessed batches.
"""
import os
import tempfile
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .. import __version__
from ..analysis.export import export_onnx, onnx_session, run_session
from ..analysis.retrieval import RetrievalModel, build_eval_model
from ..cli import load_config
from ..data.io import read_image
from ..data.transforms import build_test_transforms
from ..modeling.backbones.side_info import UNKNOWN_CAMERA

__all__ = ["BACKENDS", "CHANNEL_ORDERS", "FeatureExtractor", "ImageInput"]

BACKENDS = ("torch", "onnxruntime")
CHANNEL_ORDERS = ("rgb", "bgr")
ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]


class FeatureExtractor:
    """L2-normalised re-id features [N, D] float32 of images, from a config and a weights file.

    Args:
        config_file: the training config (its test transform, model and EVAL_FEAT are used).
        weights: a checkpoint of tools/train_net.py (`model_final.pth`), any file MODEL.WEIGHTS
            accepts, or, with the onnxruntime backend, an `.onnx` file of tools/export_onnx.py.
        device: "cpu", "cuda" or "cuda:N".
        backend: "torch", or "onnxruntime" (the same features within 1e-4).
        opts: KEY VALUE config overrides, as on the tools' command lines.
        batch_size: images per forward pass.

    Call it as ``extractor(images, camids=None, channel_order="rgb")`` with image paths, PIL
    images, numpy arrays HxWx3 uint8 (``channel_order="bgr"`` for OpenCV's) or a batch of them
    [B, H, W, 3], or torch tensors [3, H, W] / [B, 3, H, W] in RGB, uint8 or float in 0-255.
    ``camids``: None (unknown), one id for all, or one per image; 0-based, -1 for unknown.
    """

    def __init__(self, config_file: str, weights: str, device: str = "cpu", backend: str = "torch",
                 opts: Sequence[str] = (), batch_size: int = 64):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"weights file {weights} does not exist")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        is_onnx = weights.endswith(".onnx")
        if is_onnx and backend != "onnxruntime":
            raise ValueError(f"{weights} is an ONNX graph: use backend='onnxruntime', or give the .pth it came from")
        overrides = list(opts) + ["MODEL.DEVICE", device] + ([] if is_onnx else ["MODEL.WEIGHTS", weights])
        self.cfg = load_config(config_file, overrides)
        self.device = torch.device(device)
        self.backend = backend
        self.batch_size = int(batch_size)
        self.transform = build_test_transforms(self.cfg)
        self.flip = bool(self.cfg.TEST.FLIP.ENABLED)
        self.image_size = tuple(self.cfg.INPUT.SIZE_TEST)
        self.num_cameras = int(self.cfg.MODEL.BACKBONE.NUM_CAMERAS)
        self._model: Optional[RetrievalModel] = None
        self._session = None
        if is_onnx:
            self._session = onnx_session(weights, device=device)
            self._check_graph(weights)
        else:
            model = build_eval_model(self.cfg)
            if backend == "torch":
                self._model = RetrievalModel(model).eval()
            else:
                with tempfile.TemporaryDirectory() as tmp:  # ONNX Runtime reads the graph into memory
                    path = os.path.join(tmp, "model.onnx")
                    export_onnx(model, path, self.image_size)
                    self._session = onnx_session(path, device=device)
        probe = torch.zeros(1, 3, *self.image_size)
        self.feature_dim = int(self._forward(probe, torch.full((1,), UNKNOWN_CAMERA)).shape[1])
        self.meta = {
            "config": os.path.abspath(config_file), "weights": os.path.abspath(weights), "backend": backend,
            "eval_feat": self.cfg.MODEL.HEADS.EVAL_FEAT, "dim": self.feature_dim, "flip": self.flip,
            "image_size": list(self.image_size), "lwtgpf": __version__,
        }

    def _check_graph(self, path: str) -> None:
        shape = next(i.shape for i in self._session.get_inputs() if i.name == "images")
        if list(shape[-2:]) != list(self.image_size):
            raise ValueError(f"{path} takes {shape[-2]}x{shape[-1]} images but the config's INPUT.SIZE_TEST is "
                             f"{self.image_size[0]}x{self.image_size[1]}: export it with the same config")

    def __call__(self, images: Union[ImageInput, Sequence[ImageInput]], camids=None,
                 channel_order: str = "rgb") -> np.ndarray:
        items = _as_list(images)
        cams = self.camera_ids(camids, len(items))
        out = [self.embed(self.preprocess(items[i:i + self.batch_size], channel_order), cams[i:i + self.batch_size])
               for i in range(0, len(items), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.feature_dim), np.float32)

    def preprocess(self, images: Sequence[ImageInput], channel_order: str = "rgb") -> torch.Tensor:
        """The test transform of each image, stacked: float [N, 3, H, W] in 0-255."""
        if channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"channel_order must be one of {CHANNEL_ORDERS}, got {channel_order!r}")
        return torch.stack([self.transform(to_pil(image, channel_order, i)) for i, image in enumerate(images)]).float()

    def camera_ids(self, camids, count: int) -> torch.Tensor:
        """`camids` (None, one id, or `count` ids) as int64 [count], checked against NUM_CAMERAS."""
        if camids is None:
            return torch.full((count,), UNKNOWN_CAMERA, dtype=torch.long)
        ids = torch.as_tensor(np.asarray(camids))
        if ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise ValueError(f"camera ids must be integers, got {ids.dtype}")
        if ids.dim() == 0:
            ids = ids.expand(count)
        if ids.shape != (count,):
            raise ValueError(f"got {ids.numel()} camera ids for {count} images; give one per image, one for all, or None")
        if self.num_cameras:
            bad = np.flatnonzero(((ids < UNKNOWN_CAMERA) | (ids >= self.num_cameras)).numpy())
            if len(bad):
                raise ValueError(f"camera id {int(ids[bad[0]])} (image {bad[0]}) out of range: the model has "
                                 f"MODEL.BACKBONE.NUM_CAMERAS = {self.num_cameras} cameras, ids 0..{self.num_cameras - 1}, "
                                 f"or {UNKNOWN_CAMERA} for an unknown camera")
        return ids.long()

    @torch.inference_mode()
    def embed(self, images: torch.Tensor, camids: torch.Tensor) -> np.ndarray:
        """Features [B, D] float32, L2-normalised, of preprocessed images (float [B, 3, H, W] in
        0-255, as `preprocess` gives) with camera ids int64 [B] (-1: unknown)."""
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, *self.image_size):
            raise ValueError(f"preprocessed images must be [B, 3, {self.image_size[0]}, {self.image_size[1]}], "
                             f"got {list(images.shape)}")
        out = []
        for start in range(0, len(images), self.batch_size):
            batch, cams = images[start:start + self.batch_size], camids[start:start + self.batch_size]
            feats = self._forward(batch, cams)
            if self.flip:  # as fast-reid's inference_on_dataset: the mean of both outputs
                feats = (feats + self._forward(batch.flip(dims=[3]), cams)) / 2
            out.append(F.normalize(feats.float(), dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.feature_dim), np.float32)

    def _forward(self, images: torch.Tensor, camids: torch.Tensor) -> torch.Tensor:
        if self._session is not None:
            return torch.from_numpy(run_session(self._session, images, camids))
        return self._model(images.to(self.device), camids.to(self.device))


def _as_list(images) -> List[ImageInput]:
    """A single image or a batch array / tensor -> a list of images."""
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, torch.Tensor):
        return list(images) if images.dim() == 4 else [images]
    return list(images)


def to_pil(image: ImageInput, channel_order: str = "rgb", index: int = 0) -> Image.Image:
    """An image input as an RGB PIL image; errors name the input (`index` in its batch)."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(os.fspath(image), "RGB")
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        return Image.fromarray(_tensor_pixels(image, index))
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image {index}: expected a path, a PIL image, a numpy array or a torch tensor, "
                        f"got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image {index}: a numpy array must be H x W x 3 uint8 ({channel_order.upper()}), "
                         f"got shape {image.shape} {image.dtype}")
    if channel_order == "bgr":
        image = image[:, :, ::-1]
    return Image.fromarray(np.ascontiguousarray(image))


def _tensor_pixels(image: torch.Tensor, index: int) -> np.ndarray:
    """An RGB tensor [3, H, W], uint8 or float in 0-255, as H x W x 3 uint8 (floats rounded)."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image {index}: a torch tensor must be [3, H, W] (RGB), got {list(image.shape)}")
    if image.dtype != torch.uint8:
        if not image.dtype.is_floating_point:
            raise ValueError(f"image {index}: a torch tensor must be uint8 or float in 0-255, got {image.dtype}")
        if not bool(torch.isfinite(image).all()) or image.min() < 0 or image.max() > 255:
            raise ValueError(f"image {index}: a float tensor must hold finite values in 0-255 (fast-reid's "
                             f"pixel scale), got {float(image.min()):g}..{float(image.max()):g}")
        image = image.round().to(torch.uint8)
    return image.permute(1, 2, 0).cpu().numpy()
