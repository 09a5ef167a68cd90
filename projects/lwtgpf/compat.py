"""Make fastreid 1.4.0 importable on Python 3.11, torch 2.x and numpy 2.x.

fastreid 1.4.0 was written for Python 3.8, torch 1.x and numpy 1.19. Three of its
imports no longer resolve on today's stack; this module restores exactly those
names before anything imports fastreid, and changes nothing else.
"""
import collections
import collections.abc
import sys
import types
import warnings

import numpy as np
import torch

# fastreid/engine, evaluation/testing.py and data/build.py: `from collections import Mapping`
# (the ABC aliases were removed from `collections` in Python 3.10).
for _name in ("Mapping", "Sequence", "Iterable"):
    if not hasattr(collections, _name):
        setattr(collections, _name, getattr(collections.abc, _name))

# fastreid/data/build.py: `from torch._six import string_classes` (torch._six was removed in 2.0).
if "torch._six" not in sys.modules:
    try:
        import torch._six  # noqa: F401
    except ImportError:
        _six = types.ModuleType("torch._six")
        _six.string_classes = (str, bytes)
        sys.modules["torch._six"] = _six
        torch._six = _six

# fastreid/evaluation/rank.py: `np.bool` (removed in numpy 1.24, an alias again since 2.0).
if not hasattr(np, "bool"):
    np.bool = np.bool_

# fastreid/data/transforms/functional.py converts images through TypedStorage, which torch 2.x
# deprecates with a warning on every image of every loader.
warnings.filterwarnings("ignore", message="TypedStorage is deprecated", category=UserWarning)
