"""LewinViT forward speed and peak memory: its window geometry and local enhancement, each priced.

`python tools/benchmark.py backbone [--sizes tiny,small] [--batch 32] [--device auto|cpu|cuda]`

Inference-mode forward passes on random 384x128 images of three models of one size, in the same
run: LewinViT as configured by default (the original's window geometry: 7x7 windows in every
stage on maps padded to multiples of 7, plus the local-enhancement branches); LewinViT without
local enhancement; timm's Swin with timm's geometry (a stage-4 map of 12x4 gets 7x4 windows,
rolled before padding) and its fused attention turned on as LewinViT's is, which is what
LewinViT without local enhancement computed before it took the original's geometry. The ratios:
geometry = LewinViT w/o local enhancement / timm Swin, local enhancement = LewinViT / LewinViT w/o.
CPU: fp32 eager, few iterations. CUDA: fp32 and bf16 autocast, eager and `torch.compile`
(compile only for --compile-sizes, tiny by default); warm-up and compilation are not timed, the
device is synchronised around the timed loop, and peak memory is `torch.cuda.max_memory_allocated`
over the timed loop (weights included).
"""
import argparse
import contextlib
import statistics
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
    dims = dict(embed_dim=embed_dim, depths=depths, num_heads=heads, drop_path_rate=0.0)
    ours = LewinViT(img_size, **dims)
    plain = LewinViT(img_size, local_enhance=False, **dims)
    swin = timm.create_model(f"swin_{size}_patch4_window7_224", pretrained=False, img_size=img_size,
                             num_classes=0, drop_path_rate=0.0)
    for module in swin.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = True
    return [ours.forward, plain.forward, swin.forward_features], [ours, plain, swin]


def _time_all(fns: List[Callable], x: torch.Tensor, iters: int, warmup: int,
              dtype: Optional[torch.dtype]) -> List[tuple]:
    """(images/s, peak MiB) of each function. The functions take turns, one call each per round, so
    that load drifting on a shared machine hits them alike; the rate comes from the median call."""
    cuda = x.device.type == "cuda"
    cast = torch.autocast("cuda", dtype=dtype) if dtype is not None else contextlib.nullcontext()
    times = [[] for _ in fns]
    peaks = [0.0 if cuda else float("nan")] * len(fns)  # CPU memory is not measured
    with torch.inference_mode(), cast:
        for fn in fns:
            for _ in range(warmup):  # includes compilation for compiled functions
                fn(x)
        for _ in range(iters):
            for i, fn in enumerate(fns):
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                start = time.perf_counter()
                fn(x)
                if cuda:
                    torch.cuda.synchronize()
                    peaks[i] = max(peaks[i], torch.cuda.max_memory_allocated() / 2 ** 20)
                times[i].append(time.perf_counter() - start)
    return [(x.shape[0] / statistics.median(t), peak) for t, peak in zip(times, peaks)]


def _mib(value: float) -> str:
    return "-" if value != value else f"{value:.0f}"  # NaN: not measured on CPU


def main(args: argparse.Namespace) -> None:
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    img_size = tuple(int(v) for v in args.img.lower().split("x"))
    cuda = device.type == "cuda"
    iters = args.iters or (20 if cuda else 3)
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
    print("| size | precision | compile | LewinViT img/s | w/o local enh. img/s | timm Swin img/s | geometry "
          "ratio | local enh. ratio | LewinViT MiB | w/o MiB | timm MiB |")
    print("|" + "---|" * 11)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, *img_size, device=device)
    for size in sizes:
        fns, modules = _models(size, img_size)
        for module in modules:
            module.to(device).eval()
        for name, dtype in settings:
            for compiled in ([False, True] if size in compile_sizes else [False]):
                torch._dynamo.reset()
                (ours, ours_mem), (plain, plain_mem), (ref, ref_mem) = _time_all(
                    [torch.compile(fn) for fn in fns] if compiled else fns, x, iters, warmup, dtype)
                print(f"| {size} | {name} | {'yes' if compiled else 'no'} | {ours:.1f} | {plain:.1f} | {ref:.1f} | "
                      f"{plain / ref:.2f} | {ours / plain:.2f} | {_mib(ours_mem)} | {_mib(plain_mem)} | "
                      f"{_mib(ref_mem)} |", flush=True)
        del fns, modules
        if cuda:
            torch.cuda.empty_cache()
