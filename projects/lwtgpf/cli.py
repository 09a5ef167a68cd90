"""The command line of the tools: fast-reid's arguments, options accepted after the KEY VALUE
overrides too, and config errors that name the key and suggest the closest existing one."""
import argparse
import difflib
from typing import List, Optional, Sequence

from fastreid.config import CfgNode, get_cfg
from fastreid.engine import default_argument_parser

from .config import add_lwtgpf_config

__all__ = ["ConfigError", "parse_args", "load_config", "merge_overrides"]


class ConfigError(ValueError):
    """A config file or KEY VALUE override names a key that does not exist, or misses a value."""


def parse_args(argv: Optional[Sequence[str]] = None,
               parser: Optional[argparse.ArgumentParser] = None) -> argparse.Namespace:
    """fast-reid's arguments (`default_argument_parser`); options such as `--eval-only` may also
    follow the KEY VALUE pairs, and an unknown option or a key without a value is explained."""
    parser = parser or default_argument_parser()
    args = parser.parse_args(argv)
    opts, flags = [], []
    tokens = iter(args.opts)
    for token in tokens:
        action = parser._option_string_actions.get(token.split("=", 1)[0]) if token.startswith("--") else None
        if action is None and (not token.startswith("--") or len(opts) % 2):  # a KEY, or a VALUE
            opts.append(token)
            continue
        if action is None:
            parser.error(f"unknown option {token} among the KEY VALUE overrides; options are "
                         f"{', '.join(sorted(o for o in parser._option_string_actions if o.startswith('--')))}")
        flags.append(token)
        if action.nargs != 0 and "=" not in token:
            flags.append(next(tokens, ""))
    if len(opts) % 2:
        parser.error(f"KEY VALUE overrides come in pairs, but {opts[-1]} has no value")
    args = parser.parse_args(flags, namespace=args)
    args.opts = opts
    return args


def _keys(cfg: CfgNode, prefix: str = "") -> List[str]:
    keys = []
    for key, value in cfg.items():
        keys += _keys(value, f"{prefix}{key}.") if isinstance(value, CfgNode) else [prefix + key]
    return keys


def _unknown_key(cfg: CfgNode, key: str, where: str) -> ConfigError:
    close = difflib.get_close_matches(key, _keys(cfg), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else "; every key is listed in fast-reid's defaults " \
                                                                 "and projects/lwtgpf/config.py"
    return ConfigError(f"{where}: unknown config key {key}{hint}")


def merge_overrides(cfg: CfgNode, opts: Sequence[str]) -> CfgNode:
    """`cfg.merge_from_list(opts)`, with an unknown key or an odd list explained."""
    if len(opts) % 2:
        raise ConfigError(f"KEY VALUE overrides come in pairs, but {opts[-1]} has no value")
    for key in opts[0::2]:
        node = cfg
        for part in key.split("."):
            if not isinstance(node, CfgNode) or part not in node:
                raise _unknown_key(cfg, key, "command line")
            node = node[part]
    cfg.merge_from_list(list(opts))
    return cfg


def load_config(config_file: str, opts: Sequence[str] = ()) -> CfgNode:
    """fast-reid's defaults + LWTGPF's keys + `config_file` + KEY VALUE `opts`, frozen."""
    cfg = add_lwtgpf_config(get_cfg())
    if config_file:
        try:
            cfg.merge_from_file(config_file)
        except KeyError as err:
            message = str(err.args[0]) if err.args else ""
            if not message.startswith("Non-existent config key: "):
                raise
            raise _unknown_key(cfg, message.split(": ", 1)[1], config_file) from None
    merge_overrides(cfg, opts)
    cfg.freeze()
    return cfg
