"""Command lines of the analysis tools (sub-commands): options first, then fast-reid's KEY VALUE
overrides; the config is loaded as tools/train_net.py loads it (`lwtgpf.cli.load_config`)."""
import argparse
import re
from typing import List, Optional, Sequence, Tuple

__all__ = ["add_overrides", "parse_args"]

_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")  # MODEL.WEIGHTS, TEST.RERANK.ENABLED, ...


def _split(values: List[str]) -> Tuple[List[str], List[str]]:
    """Values of a list option, and the KEY VALUE overrides that followed them."""
    for i, value in enumerate(values):
        if _KEY.match(value):
            return values[:i], values[i:]
    return values, []


def add_overrides(parser: argparse.ArgumentParser) -> None:
    """The trailing `opts`: KEY VALUE config overrides."""
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides, e.g. MODEL.WEIGHTS x.pth")


def parse_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None,
               list_options: Sequence[str] = ()) -> argparse.Namespace:
    """`parser`'s arguments (its `opts` from `add_overrides`). A list option (`nargs="+"`, named in
    `list_options`) given last keeps only its values, not the KEY VALUE overrides after them."""
    args = parser.parse_args(argv)
    for name in list_options:
        values = getattr(args, name, None)
        if values:
            values, more = _split(list(values))
            setattr(args, name, values)
            args.opts = more + list(args.opts)
    if len(args.opts) % 2:
        parser.error(f"KEY VALUE overrides come in pairs, but {args.opts[-1]} has no value")
    return args
