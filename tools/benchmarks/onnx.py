"""ONNX Runtime vs PyTorch on CPU: latency of the exported retrieval feature at batch 1 and 32.

The model of `--config-file` (random init, or MODEL.WEIGHTS) is exported with
`lwtgpf.analysis.export_onnx`; both run the same random 0-255 images and camera ids on the same
threads, in alternation so that both see the same machine load; the median of `--repeats` runs
is reported, and the parity of the two outputs is checked first.
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-file", default="configs/LWTGPF/synthetic.yml")
    parser.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs of each")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of both runtimes")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")


def _median_seconds(run, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(args: argparse.Namespace) -> None:
    from lwtgpf.cli import load_config
    from lwtgpf.analysis.export import export_onnx, onnx_session, parity, run_session
    from lwtgpf.analysis.retrieval import build_eval_model

    cfg = load_config(args.config_file, list(args.opts) + ["MODEL.DEVICE", "cpu"])
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_eval_model(cfg)
    size = tuple(cfg.INPUT.SIZE_TEST)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"model: {cfg.MODEL.META_ARCHITECTURE} / {cfg.MODEL.BACKBONE.NAME}, {params:.2f}M parameters, "
          f"input {size[0]}x{size[1]}, {args.threads} threads, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "model.onnx")
        start = time.perf_counter()
        exported = export_onnx(model, path, size)
        print(f"export: {time.perf_counter() - start:.1f} s")
        session = onnx_session(path, threads=args.threads)
        cams = max(cfg.MODEL.BACKBONE.NUM_CAMERAS, 1)
        print("| batch | PyTorch ms | ONNX Runtime ms | PyTorch / ORT | max abs diff |")
        print("|---:|---:|---:|---:|---:|")
        for batch in (int(b) for b in args.batches.split(",")):
            generator = torch.Generator().manual_seed(batch)
            images = torch.rand(batch, 3, *size, generator=generator) * 255
            camids = torch.randint(0, cams, (batch,), generator=generator)
            diff = parity(session, exported, images, camids)
            torch_s, ort_s = [], []
            with torch.inference_mode():
                for _ in range(args.repeats):  # alternate, one timed run each, after a warm-up of both
                    torch_s.append(_median_seconds(lambda: exported(images, camids), 1))
                    ort_s.append(_median_seconds(lambda: run_session(session, images, camids), 1))
            pt, ort = statistics.median(torch_s) * 1e3, statistics.median(ort_s) * 1e3
            print(f"| {batch} | {pt:.1f} | {ort:.1f} | {pt / ort:.2f} | {diff:.1e} |", flush=True)
