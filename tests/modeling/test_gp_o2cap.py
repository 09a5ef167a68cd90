"""GPO2CAP: losses against ProxyMemory, gradients, memory update (single and multi process), features."""
import copy
import subprocess
import sys
import textwrap
from pathlib import Path

import lwtgpf  # noqa: F401  (fastreid compatibility fixes first)
import pytest
import torch
from torch import nn

from fastreid.config import get_cfg
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY, build_model
from lwtgpf.config import add_lwtgpf_config
from lwtgpf.memory import ProxyMemory
from lwtgpf.modeling.heads import GlobalPartHead
from lwtgpf.modeling.meta_arch import GPO2CAP

NUM_CAMS = 3
REPO = Path(__file__).resolve().parents[2]


class NHWCToNCHW(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)


class FakeBackbone(nn.Module):
    """The backbone interface in miniature: 4x4 patches, a camera embedding, NHWC trunk output."""

    def __init__(self, width: int = 6, out: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 4, stride=4)
        self.cam_embed = nn.Embedding(NUM_CAMS, width)
        self.last_stage = nn.Sequential(NHWCToNCHW(), nn.Conv2d(width, out, 1), nn.BatchNorm2d(out), nn.GELU())
        self.num_features = out

    def forward_trunk(self, x, cam_ids=None):
        x = self.stem(x)
        if cam_ids is not None:
            x = x + self.cam_embed(cam_ids)[:, :, None, None]
        return x.permute(0, 2, 3, 1)


def make_model(seed: int = 0) -> GPO2CAP:
    torch.manual_seed(seed)
    backbone = FakeBackbone()
    heads = GlobalPartHead(last_stage=backbone.last_stage, feat_dim=backbone.num_features)
    memory = ProxyMemory(temp=0.07, momentum=0.2, neg_k=5, pos_k=2, balance_w=0.15, part_weight=0.1)
    model = GPO2CAP(backbone=backbone, heads=heads, memory=memory,
                    pixel_mean=[0.5, 0.4, 0.3], pixel_std=[0.2, 0.25, 0.3])
    # 4 clusters x 3 cameras -> 12 proxies, ids cluster by cluster, cameras ascending.
    clusters = torch.arange(24) // 6
    cams = torch.arange(24) % NUM_CAMS
    proxies = clusters * NUM_CAMS + cams
    feats = torch.nn.functional.normalize(torch.randn(6, 24, 8), dim=2)
    model.memory.reset(feats, clusters, proxies, cams)
    return model


def make_batch(size: int = 8, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "images": torch.rand(size, 3, 48, 16, generator=g),
        "targets": torch.randint(0, 12, (size,), generator=g),
        "camids": torch.randint(0, NUM_CAMS, (size,), generator=g),
    }


def reference_features(model: GPO2CAP, batch: dict) -> torch.Tensor:
    images = (batch["images"] - model.pixel_mean) / model.pixel_std
    return model.heads.forward_features(model.backbone.forward_trunk(images, batch["camids"]))


def test_registered_and_backbone_last_stage_removed():
    assert META_ARCH_REGISTRY.get("GPO2CAP") is GPO2CAP
    model = make_model()
    assert isinstance(model.backbone.last_stage, nn.Identity)
    head_params = {id(p) for p in model.heads.parameters()}
    assert not head_params & {id(p) for p in model.backbone.parameters()}
    with pytest.raises(TypeError, match="forward_trunk"):
        GPO2CAP(backbone=nn.Conv2d(3, 8, 1), heads=model.heads, memory=model.memory,
                pixel_mean=[0, 0, 0], pixel_std=[1, 1, 1])


class SharedActivationBackbone(nn.Module):
    """Trunk and last stage share a stateless activation; the last stage's conv sits in a list too."""

    def __init__(self):
        super().__init__()
        self.act = nn.ReLU()
        self.stem = nn.Conv2d(3, 4, 4, stride=4)
        self.convs = nn.ModuleList([nn.Conv2d(4, 8, 1)])
        self.last_stage = nn.Sequential(self.convs[0], self.act)
        self.num_features = 8

    def forward_trunk(self, x, cam_ids=None):
        return self.act(self.stem(x) - 0.1)


def test_removing_last_stage_keeps_shared_stateless_modules():
    backbone = SharedActivationBackbone()
    x = torch.randn(2, 3, 48, 16)
    trunk = backbone.forward_trunk(x)
    heads = GlobalPartHead(last_stage=backbone.last_stage, feat_dim=8)
    model = GPO2CAP(backbone=backbone, heads=heads, memory=ProxyMemory(), pixel_mean=[0, 0, 0], pixel_std=[1, 1, 1])
    torch.testing.assert_close(model.backbone.forward_trunk(x), trunk)
    assert isinstance(model.backbone.convs[0], nn.Identity) and isinstance(model.backbone.act, nn.ReLU)
    assert sum(p.numel() for p in model.backbone.parameters()) == sum(p.numel() for p in backbone.stem.parameters())


def test_training_losses_equal_proxy_memory():
    model = make_model().train()
    batch = make_batch()
    images = batch["images"].clone()
    losses = model(batch)
    assert set(losses) == {"global_off", "global_on", "part_off", "part_on"}
    torch.testing.assert_close(batch["images"], images)  # normalisation is out of place

    expected = model.memory(reference_features(model, batch), batch["targets"])
    for key in ("global_off", "global_on"):
        torch.testing.assert_close(losses[key], expected[key])
    for key in ("part_off", "part_on"):  # the logged names mean the weighted terms
        torch.testing.assert_close(losses[key], 0.1 * expected[f"{key}_unweighted"])
    torch.testing.assert_close(sum(losses.values()), expected["loss"])


def test_losses_backpropagate_to_backbone_and_head():
    model = make_model().train()
    sum(model(make_batch()).values()).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert model.memory.memory.grad is None


def test_update_memory_after_step_matches_proxy_memory_update():
    model = make_model().train()
    batch = make_batch()
    expected_memory = copy.deepcopy(model.memory)
    features = reference_features(model, batch).detach()
    losses = model(batch)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    sum(losses.values()).backward()
    optimizer.step()

    before = model.memory.memory.clone()
    model.update_memory()
    expected_memory.update(features, batch["targets"])
    torch.testing.assert_close(model.memory.memory, expected_memory.memory)
    changed = torch.zeros(12, dtype=torch.bool)
    changed[batch["targets"]] = True
    assert not torch.equal(model.memory.memory[:, changed], before[:, changed])
    torch.testing.assert_close(model.memory.memory[:, ~changed], before[:, ~changed])
    with pytest.raises(RuntimeError, match="no training forward"):
        model.update_memory()


def test_extract_features_and_eval_forward():
    model = make_model().train()
    model(make_batch(seed=3))  # move the BN running statistics away from their initial values
    batch = make_batch(size=5, seed=4)
    running = model.heads.bnnecks[0].running_mean.clone()
    model.heads.branches[1].eval()  # a submodule's own mode survives the call
    feats = model.extract_features(batch)
    assert feats.shape == (6, 5, 8) and not feats.requires_grad
    torch.testing.assert_close(feats.norm(dim=2), torch.ones(6, 5))
    assert model.training and model.heads.training and not model.heads.branches[1].training
    torch.testing.assert_close(model.heads.bnnecks[0].running_mean, running)

    model.eval()
    torch.testing.assert_close(feats, reference_features(model, batch))
    torch.testing.assert_close(model(batch), feats[0])
    model.heads.eval_feat = "global_parts"
    torch.testing.assert_close(model(batch), feats.permute(1, 0, 2).reshape(5, -1))

    other_cams = dict(batch, camids=(batch["camids"] + 1) % NUM_CAMS)
    assert not torch.allclose(model.extract_features(other_cams), feats)


def test_training_needs_targets():
    model = make_model().train()
    with pytest.raises(ValueError, match="targets"):
        model({"images": torch.rand(4, 3, 48, 16)})


def tiny_cfg():
    cfg = add_lwtgpf_config(get_cfg())
    cfg.MODEL.META_ARCHITECTURE = "GPO2CAP"
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = "build_lewinvit_backbone"
    cfg.MODEL.BACKBONE.PRETRAIN = False
    cfg.MODEL.BACKBONE.LEWINVIT.EMBED_DIM = 8
    cfg.MODEL.BACKBONE.LEWINVIT.DEPTHS = [1, 1, 1, 1]
    cfg.MODEL.BACKBONE.LEWINVIT.NUM_HEADS = [1, 1, 1, 1]
    cfg.MODEL.BACKBONE.NUM_CAMERAS = NUM_CAMS
    cfg.MODEL.MEMORY.NEG_K = 4
    cfg.MODEL.MEMORY.PART_WEIGHT = 0.3
    cfg.INPUT.SIZE_TRAIN = [96, 32]
    return cfg


def test_build_model_from_config_with_lewinvit():
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = build_model(cfg)
    assert isinstance(model, GPO2CAP) and model.device.type == "cpu"
    assert model.memory.neg_k == 4 and model.memory.part_weight == 0.3
    assert model.heads.feat_dim == 64 and model.heads.num_parts == 5
    assert not any(p.numel() for p in model.backbone.last_stage.parameters())

    g = torch.Generator().manual_seed(0)
    images = torch.rand(8, 3, 96, 32, generator=g) * 255
    cams = torch.arange(8) % NUM_CAMS
    feats = model.extract_features({"images": images, "camids": cams})
    assert feats.shape == (6, 8, 64)
    clusters = torch.arange(8) // 4
    proxies = torch.unique(clusters * NUM_CAMS + cams, return_inverse=True)[1]
    model.memory.reset(feats, clusters, proxies, cams)
    model.train()
    losses = model({"images": images, "camids": cams, "targets": proxies})
    sum(losses.values()).backward()
    backbone_grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert backbone_grads and all(g is not None for g in backbone_grads)
    before = model.memory.memory.clone()
    model.update_memory()
    assert not torch.equal(model.memory.memory, before)


def test_fastreid_resnet_keeps_no_unused_parameters():
    """fastreid's ResNet registers layer4 itself as well as through the split's last stage:
    both go, so every trainable parameter gets a gradient (DistributedDataParallel's rule)."""
    cfg = tiny_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    cfg.MODEL.BACKBONE.DEPTH = "18x"
    cfg.MODEL.BACKBONE.LAST_STRIDE = 1
    torch.manual_seed(0)
    model = build_model(cfg)
    assert isinstance(model.backbone.resnet.layer4, nn.Identity)
    images, cams = torch.rand(8, 3, 64, 32) * 255, torch.arange(8) % NUM_CAMS
    feats = model.extract_features({"images": images, "camids": cams})
    assert feats.shape == (6, 8, 512)
    clusters = torch.arange(8) // 4
    proxies = torch.unique(clusters * NUM_CAMS + cams, return_inverse=True)[1]
    model.memory.reset(feats, clusters, proxies, cams)
    model.train()
    sum(model({"images": images, "camids": cams, "targets": proxies}).values()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


DDP_SCRIPT = r'''
import os, sys
import lwtgpf  # noqa: F401
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from lwtgpf.memory import ProxyMemory
from lwtgpf.modeling.heads import GlobalPartHead
from lwtgpf.modeling.meta_arch import GPO2CAP


class Trunk(nn.Module):
    def __init__(self):
        super().__init__()
        self.last_stage = nn.Conv2d(3, 4, 1)
        self.num_features = 4

    def forward_trunk(self, x, cam_ids=None):
        return x


def model():
    torch.manual_seed(0)
    trunk = Trunk()
    net = GPO2CAP(backbone=trunk, heads=GlobalPartHead(last_stage=trunk.last_stage, feat_dim=4),
                  memory=ProxyMemory(momentum=0.3), pixel_mean=[0, 0, 0], pixel_std=[1, 1, 1])
    labels = torch.arange(20) % 7
    net.memory.reset(torch.nn.functional.normalize(torch.randn(6, 20, 4), dim=2), labels, labels, labels % 2)
    return net


def batch(rank):
    # Unequal per-rank batches (3, 4, ...) exercise the padding; proxies repeat across ranks.
    g = torch.Generator().manual_seed(100 + rank)
    size = 3 + rank
    return torch.nn.functional.normalize(torch.randn(6, size, 4, generator=g), dim=2), torch.randint(0, 7, (size,), generator=g)


def worker(rank, world, init):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    net = model()
    net._last_batch = batch(rank)
    net.update_memory()
    expected = model().memory
    parts = [batch(r) for r in range(world)]
    expected.update(torch.cat([f for f, _ in parts], 1), torch.cat([t for _, t in parts]))
    assert torch.equal(net.memory.memory, expected.memory), rank  # the same update, bit for bit
    assert not torch.allclose(net.memory.memory, model().memory.memory)
    dist.destroy_process_group()


if __name__ == "__main__":
    world = int(sys.argv[1])
    mp.spawn(worker, args=(world, "file://" + sys.argv[2]), nprocs=world)
    print("ok")
'''


@pytest.mark.slow
def test_update_memory_gathers_the_global_batch_in_rank_order(tmp_path):
    script = tmp_path / "ddp_update.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    result = subprocess.run([sys.executable, str(script), "2", str(tmp_path / "rendezvous")],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
