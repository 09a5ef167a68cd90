"""The mixed-precision path (SOLVER.AMP.ENABLED runs the model under autocast): GP-O2CAP's losses,
gradients, memory update and features stay float32 where they must and close to full precision.
bf16 autocast runs on CPU, so this checks on any machine what float16 autocast does on a GPU."""
from pathlib import Path

import torch
from fastreid.config import get_cfg
from fastreid.modeling.meta_arch import build_model

import lwtgpf  # noqa: F401
from lwtgpf.config import add_lwtgpf_config

CAMS, PEOPLE, SHOTS = 3, 4, 4


def tiny_model():
    cfg = add_lwtgpf_config(get_cfg())
    cfg.merge_from_file(str(Path(__file__).resolve().parents[2] / "configs/LWTGPF/synthetic.yml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.BACKBONE.PRETRAIN", "False",
                         "MODEL.BACKBONE.LEWINVIT.EMBED_DIM", "8", "MODEL.BACKBONE.LEWINVIT.DEPTHS", "[1,1,1,1]",
                         "MODEL.BACKBONE.LEWINVIT.NUM_HEADS", "[1,1,2,2]", "MODEL.BACKBONE.NUM_CAMERAS", str(CAMS),
                         "MODEL.BACKBONE.DROP_PATH_RATIO", "0.0", "MODEL.MEMORY.NEG_K", "5",
                         "INPUT.SIZE_TRAIN", "[96,32]", "INPUT.SIZE_TEST", "[96,32]"])
    torch.manual_seed(0)
    return build_model(cfg)


def batch(seed):
    g = torch.Generator().manual_seed(seed)
    n = PEOPLE * SHOTS
    cams = torch.arange(n) % CAMS
    proxies = (torch.arange(n) // SHOTS) * CAMS + cams
    return {"images": 255 * torch.rand(n, 3, 96, 32, generator=g), "camids": cams, "targets": proxies}


def start_memory(model):
    model.eval()
    with torch.no_grad():
        features = model.extract_features(batch(1))
    b = batch(1)
    model.memory.reset(features, b["targets"] // CAMS, b["targets"], b["camids"])
    model.train()


def step(model, amp):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        losses = model(batch(2))
        total = sum(losses.values())
    total.backward()
    model.update_memory()
    return losses, total


def test_bf16_autocast_training_step_matches_full_precision():
    full, mixed = tiny_model(), tiny_model()
    mixed.load_state_dict(full.state_dict())
    start_memory(full)
    start_memory(mixed)
    full_losses, full_total = step(full, amp=False)
    mixed_losses, mixed_total = step(mixed, amp=True)

    assert full_losses.keys() == mixed_losses.keys()
    for name, value in mixed_losses.items():
        assert value.dtype == torch.float32 and torch.isfinite(value), name
        torch.testing.assert_close(value, full_losses[name], rtol=0.05, atol=1e-3)
    grads = [(p.grad, q.grad) for p, q in zip(full.parameters(), mixed.parameters()) if p.grad is not None]
    assert grads and all(torch.isfinite(m).all() and m.dtype == torch.float32 for _, m in grads)
    cosine = torch.nn.functional.cosine_similarity(torch.cat([f.flatten() for f, _ in grads]),
                                                   torch.cat([m.flatten() for _, m in grads]), dim=0)
    assert cosine > 0.98
    # the memory stays float32 and unit-norm after a momentum update with bf16 features
    memory = mixed.memory.memory
    assert memory.dtype == torch.float32
    torch.testing.assert_close(memory.norm(dim=2), torch.ones(memory.shape[:2]), rtol=0, atol=1e-5)
    torch.testing.assert_close(memory, full.memory.memory, rtol=0, atol=0.03)
    assert not torch.equal(memory, full.memory.memory)  # autocast did change the arithmetic


def test_bf16_autocast_features_are_float32_and_close():
    model = tiny_model().eval()
    with torch.no_grad():
        full = model.extract_features(batch(3))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model.extract_features(batch(3))
    assert mixed.shape == full.shape
    cosine = torch.nn.functional.cosine_similarity(mixed.float(), full, dim=-1)
    assert cosine.min() > 0.98
