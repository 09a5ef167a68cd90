"""Side information embedding (SIE): the id checks shared by the backbones that have camera tables."""
import torch


def checked_ids(ids: torch.Tensor, size: int, what: str, key: str) -> torch.Tensor:
    """`ids` as int64, after checking that it is [B] with values in 0..size-1 (config key `key` sets size).

    The range check is a host sync; it is skipped while compiling so that compiled graphs stay whole.
    """
    if ids.dim() != 1:
        raise ValueError(f"{what} ids must be a 1-D tensor [B], got shape {tuple(ids.shape)}")
    if not torch.compiler.is_compiling():
        low, high = (int(v) for v in torch.aminmax(ids))
        if low < 0 or high >= size:
            raise ValueError(f"{what} id {low if low < 0 else high} out of range: {key} is {size}, "
                             f"so ids must lie in 0..{size - 1}")
    return ids.long()
