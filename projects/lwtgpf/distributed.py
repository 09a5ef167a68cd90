"""How rows are shared among processes, and the tensor collectives that put them back together
(fastreid's `comm` pickles objects)."""
from typing import Optional, Sequence

import torch
import torch.distributed as dist

__all__ = ["collective_device", "all_gather_rows", "split_rows"]


def split_rows(n: int, parts: int) -> Sequence[range]:
    """Contiguous shares of n rows, as fastreid's InferenceSampler cuts them across processes."""
    size = (n - 1) // parts + 1
    return [range(min(size * p, n), min(size * (p + 1), n)) for p in range(parts)]


def collective_device(device: torch.device) -> torch.device:
    """Where tensors must be for the default process group's backend: CUDA for NCCL, else CPU."""
    if dist.get_backend() == "nccl":
        return device if device.type == "cuda" else torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_rows(local: torch.Tensor, max_rows: Optional[int] = None, dim: int = 0) -> torch.Tensor:
    """Every process's `local` (its size r along `dim` may differ between processes), concatenated
    along `dim` in rank order, on every process, on `local`'s device.

    Parts are padded to `max_rows` for the exchange (every process must pass the same value); None
    pads to the largest r, which the size exchange reveals, for callers that cannot know it.
    """
    device = collective_device(local.device)
    rows = local.movedim(dim, 0)
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([rows.shape[0]], device=device))
    sizes = [int(s) for s in sizes]
    padded = rows.new_zeros((max(sizes) if max_rows is None else max_rows,) + tuple(rows.shape[1:]), device=device)
    padded[:rows.shape[0]] = rows
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    # contiguous: the same memory layout as a concatenation along `dim` would give
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]).movedim(0, dim).contiguous().to(local.device)
