"""Tensor collectives shared by the distributed pseudo labelling (fastreid's `comm` pickles objects)."""
import torch
import torch.distributed as dist

__all__ = ["collective_device", "all_gather_rows"]


def collective_device(device: torch.device) -> torch.device:
    """Where tensors must be for the default process group's backend: CUDA for NCCL, else CPU."""
    if dist.get_backend() == "nccl":
        return device if device.type == "cuda" else torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_rows(local: torch.Tensor, max_rows: int) -> torch.Tensor:
    """Every process's `local` [r, ...] (r <= max_rows may differ between processes), concatenated
    in rank order, on every process, on `local`'s device."""
    device = collective_device(local.device)
    padded = local.new_zeros((max_rows,) + tuple(local.shape[1:]), device=device)
    padded[:local.shape[0]] = local
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([local.shape[0]], device=device))
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:int(s)] for p, s in zip(parts, sizes)]).to(local.device)
