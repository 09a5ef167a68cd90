"""LWTGPF: unsupervised person re-identification as a fast-reid extension.

Importing the package fixes fastreid 1.4.0's imports on today's stack (`compat`, first) and
registers every dataset, backbone, head and meta-architecture in fast-reid's registries.
`lwtgpf.FeatureExtractor` gives a trained model's features of new images (`lwtgpf.inference`).
"""
__version__ = "0.1.0"

from . import compat  # noqa: F401,E402  (must run before anything imports fastreid)
from .data import datasets, population, synthetic  # noqa: F401,E402
from .modeling import backbones, heads, meta_arch  # noqa: F401,E402
from .inference.extractor import FeatureExtractor  # noqa: E402
