from .launch import launch
from .trainer import Trainer

__all__ = ["Trainer", "launch"]
