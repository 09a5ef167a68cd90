"""A whole model's weights from the file `MODEL.WEIGHTS` names: a fast-reid checkpoint, a bare
state dict or a checkpoint of the original LWTGPF code (converted on load), matched strictly and
explained through `lwtgpf.weights`. Training, `--eval-only` and the analysis tools all load
through `load_model_file`."""
import logging
from typing import Dict, Mapping, Optional

import torch
from torch import nn

from ..weights import load_model_weights, read_weights, state_dict_in
from .backbones.lewinvit import LewinViT
from .original import convert_original, original_state_dict

__all__ = ["load_model_file"]

logger = logging.getLogger("fastreid." + __name__)


def load_model_file(model: nn.Module, path: str, partial: bool = False) -> dict:
    """Load the weights file `path` into `model` and return its entries besides the model
    (optimizer, epoch, the run's state ...; none for a bare state dict or an original checkpoint).

    Every model tensor must be filled by a tensor of the same shape and every file tensor used,
    except camera / view tables, which are adapted with a warning; otherwise a
    `lwtgpf.weights.WeightsError` names the file and the keys, unless `partial` (config key
    MODEL.WEIGHTS_PARTIAL), which loads what fits and warns with the same list."""
    obj = read_weights(path)
    state = _converted_original(model, obj, path)
    if state is None:
        state = state_dict_in(obj, path, nests=("model",), prefixes=("module.",), strict=True)
        entries = _entries_besides_model(obj)
    else:  # the original's optimizer and scheduler states are not this package's
        entries = {}
    load_model_weights(model, state, path, partial)
    return entries


def _converted_original(model: nn.Module, obj: object, path: str) -> Optional[Dict[str, torch.Tensor]]:
    """The state dict of a checkpoint of the original LWTGPF code, converted for `model`; None for any other."""
    original = original_state_dict(obj)
    if original is None:
        return None
    lewinvit = next((m for m in model.modules() if isinstance(m, LewinViT)), None)
    state, info = convert_original(original, num_views=lewinvit.num_views if lewinvit else 0,
                                   local_enhance=lewinvit.local_enhance if lewinvit else False)
    logger.info(f"{path} is a checkpoint of the original LWTGPF code ({info.summary()}): converted on "
                "load (tools/convert_weights.py converts it once)")
    return state


def _entries_besides_model(obj: object) -> dict:
    """A fast-reid checkpoint's entries besides the model (optimizer, scheduler, epoch ...); none for a state dict."""
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        return {key: value for key, value in obj.items() if key != "model"}
    return {}
