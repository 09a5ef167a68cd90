#!/usr/bin/env python
"""Render the SyntheticReID dataset (Market-1501 layout, no download needed).

    python tools/make_synthetic.py                      # the default set: 6 cameras, 200 + 100 ids
    python tools/make_synthetic.py --occluded --seed 1  # occluded queries, another draw
    python tools/make_synthetic.py --colour-cast 6 --background-contrast 1  # strong camera bias
    python tools/make_synthetic.py --view-bias 1 --camera-occluders 0.5     # views and occluders per camera

The set lands in `<root>/SyntheticReID/<name>`, where the name encodes the parameters, and is
what `DATASETS.NAMES ("SyntheticReID",)` with the same DATASETS.SYNTHETIC.* values reads.
"""
import argparse
import json
import logging
import os
import time

import lwtgpf  # noqa: F401  (fastreid compatibility fixes before fastreid is imported)
from lwtgpf.data.synthetic import BIAS_DEFAULTS, generate_synthetic, synthetic_dir_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.environ.get("FASTREID_DATASETS", "datasets"),
                        help="data root (default: $FASTREID_DATASETS or 'datasets')")
    parser.add_argument("--num-cameras", type=int, default=6, help="cameras, 2 to 9")
    parser.add_argument("--num-train-ids", type=int, default=200, help="training identities")
    parser.add_argument("--num-test-ids", type=int, default=100, help="test identities, disjoint from training")
    parser.add_argument("--images-per-id", type=int, default=20, help="training images per identity, on average")
    parser.add_argument("--occluded", action="store_true", help="put occluders on the query images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--colour-cast", type=float, default=BIAS_DEFAULTS["colour_cast"],
                        help="strength of each camera's colour cast on the whole image (0 none, 1 default, 6 strong)")
    parser.add_argument("--background-contrast", type=float, default=BIAS_DEFAULTS["background_contrast"],
                        help="contrast of each camera's scenery (0 flat grey, 0.15 default, 1 full)")
    parser.add_argument("--blur-noise", type=float, default=BIAS_DEFAULTS["blur_noise"],
                        help="factor on each camera's blur and sensor noise (1 default)")
    for key, help in (("view_bias", "chance that an image shows its camera's preferred view (0 default, to 1)"),
                      ("scale_bias", "each camera's person scale and position (0 default, to 1)"),
                      ("low_resolution", "each camera downsamples by 1 + this x (1 to 3) (0 default, to 4)"),
                      ("camera_occluders", "chance of each camera's own occluder in front of the legs (0 default, to 1)"),
                      ("colour_response", "each camera's channel gammas, hue and saturation (0 default, to 3)")):
        parser.add_argument("--" + key.replace("_", "-"), type=float, default=BIAS_DEFAULTS[key], help=help)
    parser.add_argument("--overwrite", action="store_true", help="regenerate even if the set exists")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    params = dict(num_cameras=args.num_cameras, num_train_ids=args.num_train_ids, num_test_ids=args.num_test_ids,
                  images_per_id=args.images_per_id, occluded=args.occluded, seed=args.seed,
                  **{key: getattr(args, key) for key in BIAS_DEFAULTS})
    existed = (os.path.isdir(os.path.join(args.root, "SyntheticReID", synthetic_dir_name(**params)))
               and not args.overwrite)
    start = time.perf_counter()
    try:
        folder = generate_synthetic(args.root, overwrite=args.overwrite, **params)
    except (ValueError, RuntimeError) as err:
        parser.exit(2, f"error: {err}\n")
    counts = json.loads((folder / "synthetic.json").read_text())["counts"]
    state = "already present, kept" if existed else f"written in {time.perf_counter() - start:.1f}s"
    print(f"{folder} ({state})")
    for sub in ("bounding_box_train", "query", "bounding_box_test"):
        print(f"  {sub:<20s}{counts[sub]:>7d} images")


if __name__ == "__main__":
    main()
