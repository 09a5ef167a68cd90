#!/usr/bin/env python
"""Speed, memory and accuracy benchmarks: `python tools/benchmark.py COMMAND [options]`, COMMAND one of
eval, backbone, memory, cluster, images, onnx, heatmap, camera_bias, search, extractor, unknown_camera.

Each sub-command lives in `tools/benchmarks/<name>.py` (functions `add_arguments(parser)` and
`main(args)`) and times our implementation against a plain baseline in the same run, so that
the printed ratio holds even when absolute times drift on a shared machine.
"""
import argparse
import importlib
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lwtgpf  # noqa: E402,F401  (fastreid compatibility fixes before fastreid is imported)

COMMANDS = ("eval", "backbone", "memory", "cluster", "images", "onnx", "heatmap", "camera_bias", "search",
            "extractor", "unknown_camera")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name in COMMANDS:
        module = importlib.import_module(f"benchmarks.{name}")
        modules[name] = module
        module.add_arguments(sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0]))
    args = parser.parse_args()
    print(f"machine: {platform.node()} | {platform.processor() or platform.machine()} | python {platform.python_version()}")
    modules[args.command].main(args)


if __name__ == "__main__":
    main()
