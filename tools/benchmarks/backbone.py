"""LewinViT forward speed and peak memory next to timm's plain Swin of the same size.

`python tools/benchmark.py backbone [--sizes tiny,small] [--batch 32] [--device auto|cpu|cuda]`

Inference-mode forward passes on random 384x128 images. CPU: fp32 eager, few iterations. CUDA:
fp32 and bf16 autocast, eager and `torch.compile` (compile only for --compile-sizes, tiny by
default, to keep a full GPU run within a few minutes); warm-up and compilation are not timed,
the device is synchronised around the timed loop, and peak memory is
`torch.cuda.max_memory_allocated` over the timed loop (weights included). LewinViT runs with its
local-enhancement branches; timm's Swin with timm's defaults (its fused attention is opt-in for
Swin, LewinViT turns it on).
"""
import argparse
import contextlib
import time
from typing import Callable, List, Optional

import timm
import torch

from lwtgpf.modeling.backbones.lewinvit import LEWINVIT_SIZES, LewinViT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="tiny,small", help="comma-separated LewinViT sizes (tiny, small, base)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--img", default="384x128", help="input height x width")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--iters", type=int, default=0, help="timed iterations (0: 2 on CPU, 20 on CUDA)")
    parser.add_argument("--compile-sizes", default="tiny", help="sizes also timed under torch.compile on CUDA ('' for none)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")


def _models(size: str, img_size: tuple) -> List[tuple]:
    embed_dim, depths, heads = LEWINVIT_SIZES[size]
    ours = LewinViT(img_size, embed_dim=embed_dim, depths=depths, num_heads=heads, drop_path_rate=0.0)
    swin = timm.create_model(f"swin_{size}_patch4_window7_224", pretrained=False, img_size=img_size,
                             num_classes=0, drop_path_rate=0.0)
    return [("LewinViT", ours, ours.forward), ("timm Swin", swin, swin.forward_features)]


def _time(fn: Callable, x: torch.Tensor, iters: int, warmup: int, dtype: Optional[torch.dtype]) -> tuple:
    cuda = x.device.type == "cuda"
    cast = torch.autocast("cuda", dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with torch.inference_mode(), cast:
        for _ in range(warmup):  # includes compilation for compiled functions
            fn(x)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(iters):
            fn(x)
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else float("nan")
    return x.shape[0] * iters / elapsed, peak


def _mib(value: float) -> str:
    return "-" if value != value else f"{value:.0f}"  # NaN: not measured on CPU


def main(args: argparse.Namespace) -> None:
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    img_size = tuple(int(v) for v in args.img.lower().split("x"))
    cuda = device.type == "cuda"
    iters = args.iters or (20 if cuda else 2)
    warmup = 3 if cuda else 1
    sizes = [s for s in args.sizes.split(",") if s]
    compile_sizes = {s for s in args.compile_sizes.split(",") if s} if cuda else set()
    settings = [("fp32", None)]
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
        torch.backends.cudnn.allow_tf32 = False
        settings.append(("bf16", torch.bfloat16))
    print(f"device: {torch.cuda.get_device_name(device) if cuda else 'cpu'} ({torch.get_num_threads()} threads) | "
          f"torch {torch.__version__} | timm {timm.__version__} | batch {args.batch} | {img_size[0]}x{img_size[1]} | "
          f"{iters} timed iterations after {warmup} warm-up")
    header = "| size | precision | compile | LewinViT img/s | timm Swin img/s | ratio | LewinViT MiB | timm Swin MiB |"
    print(header)
    print("|" + "---|" * 8)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, *img_size, device=device)
    for size in sizes:
        models = _models(size, img_size)
        for _, module, _ in models:
            module.to(device).eval()
        for name, dtype in settings:
            for compiled in ([False, True] if size in compile_sizes else [False]):
                results = []
                for _, module, fn in models:
                    torch._dynamo.reset()
                    run = torch.compile(fn) if compiled else fn
                    results.append(_time(run, x, iters, warmup, dtype))
                (ours, ours_mem), (ref, ref_mem) = results
                print(f"| {size} | {name} | {'yes' if compiled else 'no'} | {ours:.1f} | {ref:.1f} | "
                      f"{ours / ref:.2f} | {_mib(ours_mem)} | {_mib(ref_mem)} |", flush=True)
        del models
        if cuda:
            torch.cuda.empty_cache()
