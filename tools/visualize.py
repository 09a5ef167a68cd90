#!/usr/bin/env python
"""Look inside a trained model: heat maps of what its feature rests on, and rank lists.

    python tools/visualize.py heatmap --config-file configs/LWTGPF/synthetic.yml --output vis \\
        --method rollout MODEL.WEIGHTS logs/LWTGPF/synthetic/model_final.pth
    python tools/visualize.py heatmap ... --method gradcam --images a.jpg b.jpg --pair c.jpg MODEL.WEIGHTS ...
    python tools/visualize.py ranklist --config-file configs/LWTGPF/synthetic.yml --output vis \\
        --num-queries 8 --sort worst MODEL.WEIGHTS logs/LWTGPF/synthetic/model_final.pth

heatmap writes OUTPUT/<image stem>_<method>.png (the image and its heat map, side by side, at the
image's size) for each image, or for the first N queries of DATASETS.TESTS[0]. Rollout settings:
ANALYSIS.ROLLOUT.*; the layer the CAM methods explain: ANALYSIS.CAM_LAYER. ranklist writes the
query and its top-K gallery images (green: true match, red: false) per query, and cmc.png,
roc.png, from the evaluator's distances (TEST.RERANK.ENABLED True re-ranks).
"""
import argparse
import logging
from pathlib import Path

import lwtgpf  # noqa: F401  (fixes fastreid's imports, registers our modules)
import torch
from fastreid.utils.logger import setup_logger
from PIL import Image

from lwtgpf.analysis.cli import add_overrides, parse_args
from lwtgpf.cli import load_config
from lwtgpf.analysis.heatmap import HEATMAP_METHODS, heat_maps, heatmap_panels
from lwtgpf.analysis.inputs import camera_id, load_batch
from lwtgpf.analysis.ranklist import QUERY_ORDERS, cmc_figure, ranklist_image, roc_figure, select_queries
from lwtgpf.analysis.retrieval import build_eval_model
from lwtgpf.data.build import build_dataset
from lwtgpf.engine import Trainer

logger = logging.getLogger("lwtgpf.visualize")


def save_png(path: Path, rgb) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, optimize=True)


def heatmap(args: argparse.Namespace) -> None:
    cfg = load_config(args.config_file, args.opts)
    model = build_eval_model(cfg)
    if args.images:
        items = [(path, camera_id(path, args.camera)) for path in args.images]
    else:
        name = cfg.DATASETS.TESTS[0]
        items = [(path, cam) for path, _, cam in build_dataset(cfg, name).query[:args.num_images]]
    reference, extra = None, None
    if args.pair:
        reference, (extra,) = load_batch(cfg, [args.pair], [camera_id(args.pair, args.camera)])
    out = Path(args.output)
    for start in range(0, len(items), args.batch_size):
        chunk = items[start:start + args.batch_size]
        batch, originals = load_batch(cfg, [p for p, _ in chunk], [c for _, c in chunk])
        heats = heat_maps(cfg, model, batch, args.method, reference)
        for (path, _), panel in zip(chunk, heatmap_panels(heats, originals, extra)):
            target = out / f"{Path(path).stem}_{args.method}.png"
            save_png(target, panel)
            logger.info(f"wrote {target}")


def ranklist(args: argparse.Namespace) -> None:
    cfg = load_config(args.config_file, args.opts)
    model = build_eval_model(cfg)

    def draw(dataset_name: str, evaluator) -> None:
        ranking = evaluator.ranking
        out = Path(args.output) if len(cfg.DATASETS.TESTS) == 1 else Path(args.output) / dataset_name
        for query in select_queries(ranking, args.num_queries, args.sort):
            save_png(out / f"{Path(ranking.q_paths[query]).stem}_ranklist.png",
                     ranklist_image(ranking, query, args.topk))
        save_png(out / "cmc.png", cmc_figure(ranking))
        save_png(out / "roc.png", roc_figure(ranking))
        logger.info(f"wrote rank lists of {args.num_queries} queries, cmc.png and roc.png to {out}")

    Trainer.test(cfg, model, draw)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    heat = sub.add_parser("heatmap", help="heat maps of what the retrieval feature rests on")
    heat.add_argument("--config-file", required=True)
    heat.add_argument("--output", required=True, help="folder for <image stem>_<method>.png")
    heat.add_argument("--method", default="rollout", choices=HEATMAP_METHODS)
    heat.add_argument("--images", nargs="+", default=[], help="image files (default: queries of DATASETS.TESTS[0])")
    heat.add_argument("--num-images", type=int, default=8, help="queries to show when no --images are given")
    heat.add_argument("--camera", type=int, default=None,
                      help="0-based camera id of images whose names carry none (PPPP_cC... names do)")
    heat.add_argument("--pair", default=None, help="CAM methods: explain the similarity to this image")
    heat.add_argument("--batch-size", type=int, default=16)
    add_overrides(heat)

    ranks = sub.add_parser("ranklist", help="rank lists, cmc.png and roc.png of an evaluation")
    ranks.add_argument("--config-file", required=True)
    ranks.add_argument("--output", required=True)
    ranks.add_argument("--num-queries", type=int, default=8)
    ranks.add_argument("--topk", type=int, default=10)
    ranks.add_argument("--sort", default="first", choices=QUERY_ORDERS,
                       help="which queries: the first ones, or those with the best / worst AP")
    add_overrides(ranks)

    args = parse_args(parser, argv, list_options=("images",))
    setup_logger(name="fastreid")
    setup_logger(name="lwtgpf", abbrev_name="lwtgpf")
    with torch.no_grad():  # CAM methods turn gradients back on where they need them
        {"heatmap": heatmap, "ranklist": ranklist}[args.command](args)


if __name__ == "__main__":
    main()
