"""Guards shared by every test: a test must not leave torch's global state changed for the next one."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _torch_global_state_unchanged():
    grad, dtype = torch.is_grad_enabled(), torch.get_default_dtype()
    yield
    changed = {name: (before, after) for name, before, after in (
        ("grad mode", grad, torch.is_grad_enabled()),
        ("default dtype", dtype, torch.get_default_dtype()),
    ) if before != after}
    torch.set_grad_enabled(grad)
    torch.set_default_dtype(dtype)
    assert not changed, f"the test changed torch's global state (before, after): {changed}"
