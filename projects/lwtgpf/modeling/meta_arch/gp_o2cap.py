"""GP-O2CAP: backbone trunk -> global-part head -> camera-aware proxy memory (METHOD.md sections 2, 4)."""
import itertools
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from fastreid.config import CfgNode, configurable
from fastreid.modeling.backbones import build_backbone
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY
from fastreid.utils import comm

from ...distributed import all_gather_rows
from ...memory import ProxyMemory
from ..backbones.split import split_backbone
from ..heads.global_part import GlobalPartHead

__all__ = ["GPO2CAP"]

Batch = Union[Dict[str, torch.Tensor], torch.Tensor]


def _all_gather_batch(features: torch.Tensor, targets: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Every rank's [L, b, D] features and [b] targets, concatenated along the batch in rank order
    (batches may differ in size between ranks)."""
    if comm.get_world_size() == 1:
        return features, targets
    return all_gather_rows(features, dim=1), all_gather_rows(targets)


def _remove_last_stage(backbone: nn.Module) -> None:
    """Replace the modules of ``backbone.last_stage`` that hold parameters or buffers by
    ``nn.Identity``, wherever the backbone registers them (a wrapper may hold them twice, e.g.
    fastreid's ResNet keeps ``layer4``). Stateless modules stay: the trunk may share them."""
    stage = backbone.last_stage
    inside = {id(m) for m in stage.modules()}
    stateful = {id(m) for m in stage.modules() if any(True for _ in itertools.chain(m.parameters(), m.buffers()))}
    stage_params = {id(p) for p in stage.parameters()}
    for parent in list(backbone.modules()):
        if id(parent) in inside:
            continue  # goes with the stage
        for name, child in list(parent._modules.items()):
            if child is not None and id(child) in stateful:
                parent._modules[name] = nn.Identity()
    left = stage_params & {id(p) for p in backbone.parameters()}
    if left:
        raise TypeError(f"GPO2CAP: {type(backbone).__name__} still holds {len(left)} parameters of its last stage "
                        f"after removing the last stage's modules; its trunk must not share them")


@META_ARCH_REGISTRY.register()
class GPO2CAP(nn.Module):
    """Global-part features trained against a camera-aware proxy memory.

    - training ``forward(batch)``: ``batch["targets"]`` are proxy ids; returns the loss dict
      ``global_off``, ``global_on``, ``part_off``, ``part_on``, the part terms weighted by the
      memory's ``part_weight`` (its ``part_off_unweighted`` / ``part_on_unweighted`` times lambda),
      so the dict's sum is the METHOD.md total and each logged scalar is the share it adds, and
      remembers the detached features and targets for ``update_memory``;
    - ``update_memory()``: the momentum update of the memory with the last training batch (the
      whole global batch under data parallelism), to be called after the optimiser step;
    - eval ``forward(batch)``: the retrieval feature [B, D'];
    - ``extract_features(batch)``: the L2-normalised global and part features [1+P, B, D].

    Camera ids (``batch["camids"]``) go to the backbone for its side information embedding.
    The backbone must offer ``forward_trunk(images, cam_ids)``, ``last_stage`` and
    ``num_features``. The head holds the copies of the last stage that it uses, so every module
    of the backbone's own last stage is replaced by ``nn.Identity`` wherever the backbone
    registers it: no unused parameters (DistributedDataParallel rejects them) and none in
    checkpoints. ``backbone.forward`` is no longer meaningful afterwards, only ``forward_trunk``.
    """

    @configurable
    def __init__(
            self,
            *,
            backbone: nn.Module,
            heads: GlobalPartHead,
            memory: ProxyMemory,
            pixel_mean: Sequence[float],
            pixel_std: Sequence[float],
    ):
        """
        Args:
            backbone: trunk with ``forward_trunk(images, cam_ids)`` and ``last_stage``.
            heads: the global-part head, built from ``backbone.last_stage``.
            memory: the proxy memory giving the losses.
            pixel_mean, pixel_std: per-channel image normalisation (the loader's pixel scale).
        """
        super().__init__()
        for name in ("forward_trunk", "last_stage"):
            if not hasattr(backbone, name):
                raise TypeError(f"GPO2CAP: the backbone ({type(backbone).__name__}) has no `{name}`; "
                                f"wrap it with lwtgpf.modeling.backbones.split.split_backbone")
        _remove_last_stage(backbone)
        self.backbone = backbone
        self.heads = heads
        self.memory = memory
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(1, -1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(1, -1, 1, 1), False)
        self._last_batch: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        backbone = split_backbone(build_backbone(cfg))
        heads = GlobalPartHead(cfg, last_stage=backbone.last_stage, feat_dim=backbone.num_features)
        mem = cfg.MODEL.MEMORY
        memory = ProxyMemory(temp=mem.TEMP, momentum=mem.MOMENTUM, neg_k=mem.NEG_K, pos_k=mem.POS_K,
                             balance_w=mem.BALANCE_W, part_weight=mem.PART_WEIGHT)
        return {
            "backbone": backbone,
            "heads": heads,
            "memory": memory,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: Batch) -> torch.Tensor:
        """Images on the model's device, normalised (out of place: the loader's batch stays as it was)."""
        if isinstance(batched_inputs, dict):
            images = batched_inputs["images"]
        elif isinstance(batched_inputs, torch.Tensor):
            images = batched_inputs
        else:
            raise TypeError(f"GPO2CAP: batched_inputs must be a dict or a tensor, got {type(batched_inputs).__name__}")
        return (images.to(self.device, non_blocking=True) - self.pixel_mean) / self.pixel_std

    def _camids(self, batched_inputs: Batch) -> Optional[torch.Tensor]:
        if isinstance(batched_inputs, dict) and "camids" in batched_inputs:
            return torch.as_tensor(batched_inputs["camids"]).to(self.device, torch.long, non_blocking=True)
        return None

    def _features(self, batched_inputs: Batch, normalize: bool = True) -> torch.Tensor:
        images = self.preprocess_image(batched_inputs)
        trunk = self.backbone.forward_trunk(images, self._camids(batched_inputs))
        return self.heads.forward_features(trunk, normalize)

    def retrieval_embedding(self, batched_inputs: Batch) -> torch.Tensor:
        """The retrieval feature before its L2 normalisation, in the current mode (for analysis)."""
        return self.heads.retrieval_feature(self._features(batched_inputs, normalize=False))

    def forward(self, batched_inputs: Batch) -> Union[Dict[str, torch.Tensor], torch.Tensor]:
        if not self.training:
            return self.heads.retrieval_feature(self._features(batched_inputs))
        if not isinstance(batched_inputs, dict) or "targets" not in batched_inputs:
            raise ValueError("GPO2CAP: training needs batched_inputs['targets'] (the proxy id of each image)")
        targets = torch.as_tensor(batched_inputs["targets"]).to(self.device, torch.long, non_blocking=True)
        features = self._features(batched_inputs)
        losses = self.memory(features, targets)
        self._last_batch = (features.detach(), targets)
        weight = self.memory.part_weight
        return {
            "global_off": losses["global_off"],
            "global_on": losses["global_on"],
            "part_off": weight * losses["part_off_unweighted"],
            "part_on": weight * losses["part_on_unweighted"],
        }

    @torch.no_grad()
    def update_memory(self) -> None:
        """Momentum-update the memory with the last training batch; call after the optimiser step.

        Under data parallelism every rank gathers the features and targets of all ranks and
        applies the same update in rank order, so the memories stay identical. Every rank must
        call it after every training step.
        """
        if self._last_batch is None:
            raise RuntimeError("GPO2CAP.update_memory: no training forward since the last update")
        features, targets = _all_gather_batch(*self._last_batch)
        self._last_batch = None
        self.memory.update(features, targets)

    @torch.no_grad()
    def extract_features(self, batched_inputs: Batch) -> torch.Tensor:
        """L2-normalised global and part features [1+P, B, D] (global first), in eval mode.

        The model is switched to eval mode (BNNeck running statistics, no drop path) for the
        call, then every submodule is put back in the mode it was in.
        """
        modes = [(module, module.training) for module in self.modules()]
        self.eval()
        try:
            return self._features(batched_inputs)
        finally:
            for module, training in modes:
                module.training = training
