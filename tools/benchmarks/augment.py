"""Training transforms per image: the config's own pipeline against it with INPUT.CAMERA_AUG on.

The camera-like jitter (`lwtgpf/data/camera_augment.py`) runs in the data loader's workers, before
fast-reid's resize; its cost per epoch is (images per epoch) / (images per second) of one worker,
divided by DATALOADER.NUM_WORKERS. Both pipelines transform the same images in the same process,
with the same seeds; each step is also timed alone (prob 1) on the image sizes found on disk.
"""
import argparse
import os
import time

from PIL import Image

from lwtgpf.cli import load_config
from lwtgpf.data.camera_augment import camera_augmentations
from lwtgpf.data.datasets.market_layout import IMAGE_EXTENSIONS
from lwtgpf.data.seeding import seeded_rngs
from lwtgpf.data.transforms import build_train_transforms

CAMERA_AUG = ["INPUT.CAMERA_AUG.ENABLED", "True", "INPUT.CJ.ENABLED", "True"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="a folder of training images (searched recursively)")
    parser.add_argument("--config-file", default="configs/LWTGPF/synthetic.yml")
    parser.add_argument("--images", type=int, default=400, help="images transformed per pipeline")
    parser.add_argument("--repeats", type=int, default=3, help="passes per pipeline; the fastest is reported")


def _time(transform, images, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for index, img in enumerate(images):
            with seeded_rngs(index):
                transform(img)
        best = min(best, time.perf_counter() - start)
    return best


def main(args: argparse.Namespace) -> None:
    paths = sorted(os.path.join(root, name) for root, _, names in os.walk(args.folder)
                   for name in names if name.lower().endswith(IMAGE_EXTENSIONS))[:args.images]
    if not paths:
        raise SystemExit(f"no image under {args.folder}")
    images = [Image.open(path).convert("RGB") for path in paths]  # decoding is the same for both
    plain_cfg = load_config(args.config_file, [])
    aug_cfg = load_config(args.config_file, CAMERA_AUG)
    plain = _time(build_train_transforms(plain_cfg), images, args.repeats)
    augmented = _time(build_train_transforms(aug_cfg), images, args.repeats)
    sizes = sorted({img.size for img in images})
    print(f"{len(images)} images of {', '.join(f'{w}x{h}' for w, h in sizes)} (decoded beforehand), "
          f"{args.config_file}, one process, torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    print(f"  training transforms             {1e3 * plain / len(images):7.3f} ms/image")
    print(f"  + INPUT.CAMERA_AUG and INPUT.CJ {1e3 * augmented / len(images):7.3f} ms/image  "
          f"({augmented / plain:.2f}x)")
    aug_cfg.defrost()
    aug_cfg.INPUT.CAMERA_AUG.PROB = 1.0
    for step in camera_augmentations(aug_cfg):
        print(f"    {type(step).__name__:20s} alone, every image: {1e3 * _time(step, images, args.repeats) / len(images):7.3f} ms/image")
