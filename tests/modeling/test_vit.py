"""TMGF's ViT (TransReID ViT with camera SIE) against a plain reference, checkpoints, split, GP-O2CAP."""
import copy
import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import lwtgpf  # noqa: F401  (fastreid compatibility first)
from fastreid.config import get_cfg
from fastreid.modeling.backbones import build_backbone
from fastreid.modeling.meta_arch import build_model
from lwtgpf.config import add_lwtgpf_config
from lwtgpf.modeling.backbones.split import split_backbone
from lwtgpf.modeling.backbones.vit import TransReIDViT, ViTLastStage, load_vit_pretrained

REPO = Path(__file__).resolve().parents[2]
DIM, DEPTH, HEADS, CAMS, SIE_COEF = 24, 3, 2, 3, 3.0


# ---------------------------------------------------------------- a TransReID checkpoint, by hand
def rand(*shape, scale=0.2):
    return torch.randn(*shape) * scale


def norm_params(prefix, n, stats=False):
    out = {f"{prefix}.weight": 1 + rand(n), f"{prefix}.bias": rand(n)}
    if stats:
        out.update({f"{prefix}.running_mean": rand(n), f"{prefix}.running_var": 0.5 + torch.rand(n),
                    f"{prefix}.num_batches_tracked": torch.tensor(7)})
    return out


def transreid_state(grid, stem, cams=CAMS, dim=DIM, depth=DEPTH, patch=16):
    """Random tensors named and shaped as TransReID(-SSL)'s ViT state dict (its vit_pytorch.py)."""
    torch.manual_seed(0)
    sd = {"cls_token": rand(1, 1, dim), "pos_embed": rand(1, 1 + grid[0] * grid[1], dim)}
    if cams:
        sd["sie_embed"] = rand(cams, 1, dim)
    if stem:
        sd["patch_embed.conv.0.weight"] = rand(64, 3, 7, 7)
        sd.update(norm_params("patch_embed.conv.1.IN", 32))
        sd.update(norm_params("patch_embed.conv.1.BN", 32, stats=True))
        sd["patch_embed.conv.3.weight"] = rand(64, 64, 3, 3, scale=0.05)
        sd.update(norm_params("patch_embed.conv.4.IN", 32))
        sd.update(norm_params("patch_embed.conv.4.BN", 32, stats=True))
        sd["patch_embed.conv.6.weight"] = rand(64, 64, 3, 3, scale=0.05)
        sd.update(norm_params("patch_embed.conv.7", 64, stats=True))
        sd["patch_embed.proj.weight"] = rand(dim, 64, patch // 2, patch // 2, scale=0.02)
    else:
        sd["patch_embed.proj.weight"] = rand(dim, 3, patch, patch, scale=0.05)
    sd["patch_embed.proj.bias"] = rand(dim)
    for i in range(depth):
        p = f"blocks.{i}."
        sd.update(norm_params(p + "norm1", dim))
        sd.update({p + "attn.qkv.weight": rand(3 * dim, dim), p + "attn.qkv.bias": rand(3 * dim),
                   p + "attn.proj.weight": rand(dim, dim), p + "attn.proj.bias": rand(dim)})
        sd.update(norm_params(p + "norm2", dim))
        sd.update({p + "mlp.fc1.weight": rand(4 * dim, dim), p + "mlp.fc1.bias": rand(4 * dim),
                   p + "mlp.fc2.weight": rand(dim, 4 * dim), p + "mlp.fc2.bias": rand(dim)})
    sd.update(norm_params("norm", dim))
    return sd


# ---------------------------------------------------------------- the reference, from the formulas
def layer_norm(x, w, b, eps=1e-6):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * w + b


def patchify(x, weight, bias, p):
    """Non-overlapping p x p patches, row-major, each a linear map of its pixels."""
    b, c, h, w = x.shape
    patches = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * p * p)
    return patches @ weight.reshape(weight.shape[0], -1).T + bias


def batch_norm(x, sd, prefix, eps=1e-5):
    shape = (1, -1, 1, 1)
    return ((x - sd[prefix + ".running_mean"].view(shape)) / torch.sqrt(sd[prefix + ".running_var"].view(shape) + eps)
            * sd[prefix + ".weight"].view(shape) + sd[prefix + ".bias"].view(shape))


def ibn(x, sd, prefix, eps=1e-5):
    half = x.shape[1] // 2
    a, b = x[:, :half], x[:, half:]
    mean = a.mean((2, 3), keepdim=True)
    var = ((a - mean) ** 2).mean((2, 3), keepdim=True)
    a = (a - mean) / torch.sqrt(var + eps) * sd[prefix + ".IN.weight"].view(1, -1, 1, 1) \
        + sd[prefix + ".IN.bias"].view(1, -1, 1, 1)
    return torch.cat([a, batch_norm(b, sd, prefix + ".BN")], dim=1)


def attention(x, sd, p, heads):
    b, n, c = x.shape
    d = c // heads
    qkv = (x @ sd[p + "qkv.weight"].T + sd[p + "qkv.bias"]).reshape(b, n, 3, heads, d).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d), dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(b, n, c)
    return out @ sd[p + "proj.weight"].T + sd[p + "proj.bias"]


def gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def reference_tokens(sd, x, cams, stem, heads=HEADS, sie_coef=SIE_COEF, patch=16):
    """TransReID's forward, eval mode: tokens after the final norm [B, 1 + h*w, C]."""
    if stem:
        x = torch.relu(ibn(F.conv2d(x, sd["patch_embed.conv.0.weight"], stride=2, padding=3), sd, "patch_embed.conv.1"))
        x = torch.relu(ibn(F.conv2d(x, sd["patch_embed.conv.3.weight"], padding=1), sd, "patch_embed.conv.4"))
        x = torch.relu(batch_norm(F.conv2d(x, sd["patch_embed.conv.6.weight"], padding=1), sd, "patch_embed.conv.7"))
        patch //= 2
    x = patchify(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], patch)
    x = torch.cat([sd["cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + sd["pos_embed"]
    if cams is not None:
        x = x + sie_coef * sd["sie_embed"][cams]  # [B, 1, C]: every token
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(depth):
        p = f"blocks.{i}."
        x = x + attention(layer_norm(x, sd[p + "norm1.weight"], sd[p + "norm1.bias"]), sd, p + "attn.", heads)
        h = layer_norm(x, sd[p + "norm2.weight"], sd[p + "norm2.bias"])
        x = x + gelu(h @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"]) @ sd[p + "mlp.fc2.weight"].T \
            + sd[p + "mlp.fc2.bias"]
    return layer_norm(x, sd["norm.weight"], sd["norm.bias"])


def to_map(tokens, grid):
    return tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


def tiny_vit(img_size=(64, 32), stem=False, cams=CAMS, **kwargs):
    return TransReIDViT(img_size, embed_dim=DIM, depth=DEPTH, num_heads=HEADS, stem_conv=stem, num_cameras=cams,
                        sie_coef=SIE_COEF, **kwargs).eval()


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize("stem", [False, True], ids=["patch16", "ics-stem"])
def test_released_checkpoint_loads_every_tensor_and_matches_reference(stem, tmp_path):
    """A TransReID-SSL-style file (flat, TransReID names) loads completely; the model then computes
    TransReID's tokens, split into trunk and last stage, with the camera SIE on every token."""
    sd = transreid_state((4, 2), stem)
    path = tmp_path / "vit_small_lup.pth"
    torch.save(sd, path)
    model = tiny_vit(stem=stem)
    report = load_vit_pretrained(model, str(path))
    assert report.missing == [] and report.unused == {} and report.adapted == []
    assert len(report.loaded) == len(sd) == len(model.state_dict())

    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 64, 32, generator=g)
    cams = torch.tensor([2, 0])
    expected = reference_tokens(sd, x, cams, stem)
    with torch.no_grad():
        trunk = model.forward_trunk(x, cams)
        cls, fmap = model.last_stage.forward_global_and_map(trunk)
        assert trunk.shape == (2, 1 + 8, DIM)
        torch.testing.assert_close(cls, expected[:, 0], atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(fmap, to_map(expected, (4, 2)), atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(model(x, cams), fmap)
        # no camera ids: no SIE
        torch.testing.assert_close(model(x), to_map(reference_tokens(sd, x, None, stem), (4, 2)), atol=2e-5, rtol=1e-5)
        # an unknown camera (-1): the mean camera embedding
        mean_sd = dict(sd, sie_embed=sd["sie_embed"].mean(0, keepdim=True).expand_as(sd["sie_embed"]))
        unknown = to_map(reference_tokens(mean_sd, x, cams, stem), (4, 2))
        torch.testing.assert_close(model(x, torch.tensor([-1, -1])), unknown, atol=2e-5, rtol=1e-5)


def test_dino_teacher_and_tmgf_model_files(tmp_path):
    """DINO teachers (`backbone.` under `teacher`) and TMGF models (DataParallel `module.base.`, branches,
    BNNecks) give the same backbone; heads and branches are reported unused, with the reason."""
    sd = transreid_state((4, 2), stem=True, cams=0)
    dino = {"teacher": {**{"backbone." + k: v for k, v in sd.items()},
                        "head.mlp.0.weight": rand(8, DIM), "head.last_layer.weight_g": rand(8, 1)},
            "student": {"module.backbone.cls_token": torch.zeros(1, 1, DIM)}, "epoch": 100}
    torch.save(dino, tmp_path / "dino.pth")
    tmgf = {"module.base." + k: v for k, v in transreid_state((4, 2), stem=True, cams=CAMS).items()}
    tmgf.update({"module.b1.0.attn.qkv.weight": rand(3 * DIM, DIM), "module.b2.1.weight": rand(DIM),
                 "module.bottleneck.weight": rand(DIM), "module.part_bns.0.running_mean": rand(DIM)})
    torch.save(tmgf, tmp_path / "tmgf_weight_50.pth")

    model = tiny_vit(stem=True)
    report = load_vit_pretrained(model, str(tmp_path / "dino.pth"))
    assert report.missing == ["sie_embed"]  # LUPerson pretraining has no cameras
    assert set(report.unused) == {"head.mlp.0.weight", "head.last_layer.weight_g"}
    torch.testing.assert_close(model.cls_token, sd["cls_token"])
    torch.testing.assert_close(model.last_stage.block.mlp.fc2.weight, sd[f"blocks.{DEPTH - 1}.mlp.fc2.weight"])
    torch.testing.assert_close(model.last_stage.norm.bias, sd["norm.bias"])

    report = load_vit_pretrained(model, str(tmp_path / "tmgf_weight_50.pth"))
    assert report.missing == []
    assert set(report.unused) == {"b1.0.attn.qkv.weight", "b2.1.weight", "bottleneck.weight", "part_bns.0.running_mean"}
    assert all("TMGF" in reason for reason in report.unused.values())
    torch.testing.assert_close(model.sie_embed, tmgf["module.base.sie_embed"].squeeze(1))


def bilinear_reference(grid, out_h, out_w):
    """Bilinear resize with half-pixel centres (TransReID's F.interpolate(mode='bilinear')), by hand."""
    in_h, in_w = grid.shape[:2]

    def taps(i, n_in, n_out):
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(math.floor(src)), n_in - 1)
        return i0, min(i0 + 1, n_in - 1), src - i0

    out = torch.empty(out_h, out_w, grid.shape[2])
    for i in range(out_h):
        y0, y1, ly = taps(i, in_h, out_h)
        for j in range(out_w):
            x0, x1, lx = taps(j, in_w, out_w)
            out[i, j] = ((1 - ly) * ((1 - lx) * grid[y0, x0] + lx * grid[y0, x1])
                         + ly * ((1 - lx) * grid[y1, x0] + lx * grid[y1, x1]))
    return out


def test_position_embeddings_are_resized_from_the_pretrained_grid(tmp_path):
    """A 256x128 file (grid 4x2 here, height 2 x width) into a 384x192-like model (grid 6x3)."""
    sd = transreid_state((4, 2), stem=False)
    torch.save(sd, tmp_path / "lup.pth")
    model = tiny_vit(img_size=(96, 48))
    report = load_vit_pretrained(model, str(tmp_path / "lup.pth"), hw_ratio=2)
    assert report.missing == [] and report.adapted == ["pos_embed: grid 4x2 resized to 6x3 (bilinear)"]
    pos = model.pos_embed.detach()
    torch.testing.assert_close(pos[:, 0], sd["pos_embed"][:, 0])  # the class token's position stays
    expected = bilinear_reference(sd["pos_embed"][0, 1:].reshape(4, 2, DIM), 6, 3)
    torch.testing.assert_close(pos[0, 1:].reshape(6, 3, DIM), expected)

    with pytest.raises(ValueError, match=r"lup\.pth.*8 patch positions.*PRETRAIN_HW_RATIO"):
        load_vit_pretrained(tiny_vit(img_size=(96, 48)), str(tmp_path / "lup.pth"), hw_ratio=3)


def test_camera_table_of_another_size_is_adapted(tmp_path):
    sd = transreid_state((4, 2), stem=False, cams=6)
    torch.save(sd, tmp_path / "market.pth")
    source = sd["sie_embed"].squeeze(1)
    for cams in (8, 4):
        model = tiny_vit(cams=cams)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report = load_vit_pretrained(model, str(tmp_path / "market.pth"))
        assert any("sie_embed" in str(w.message) for w in caught)
        assert report.missing == [] and report.adapted == [f"sie_embed: 6 -> {cams} rows"]
        keep = min(cams, 6)
        torch.testing.assert_close(model.sie_embed[:keep], source[:keep])
        if cams > 6:
            torch.testing.assert_close(model.sie_embed[6:], source.mean(0).expand(cams - 6, -1))
    report = load_vit_pretrained(tiny_vit(cams=0), str(tmp_path / "market.pth"))
    assert "NUM_CAMERAS 0" in report.unused["sie_embed"]


def test_files_that_do_not_fit(tmp_path):
    model = tiny_vit()
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 64)}, tmp_path / "resnet.pth")
    with pytest.raises(ValueError, match=r"resnet\.pth fit nothing"):
        load_vit_pretrained(model, str(tmp_path / "resnet.pth"))
    torch.save(transreid_state((4, 2), stem=True), tmp_path / "ics.pth")
    with pytest.raises(ValueError, match=r"ics\.pth do not fit.*STEM_CONV True.*patch_embed\.proj\.weight"):
        load_vit_pretrained(model, str(tmp_path / "ics.pth"))
    torch.save(transreid_state((4, 2), stem=False, dim=32), tmp_path / "wide.pth")
    with pytest.raises(ValueError, match=r"wide\.pth do not fit.*EMBED_DIM"):
        load_vit_pretrained(model, str(tmp_path / "wide.pth"))
    with pytest.raises(FileNotFoundError, match="PRETRAIN_PATH"):
        load_vit_pretrained(model, str(tmp_path / "missing.pth"))


def test_split_and_input_checks():
    torch.manual_seed(0)
    model = tiny_vit(stem=True, drop_path_rate=0.0)
    assert split_backbone(model) is model and model.num_features == DIM
    assert len(model.blocks) == DEPTH - 1 and isinstance(model.last_stage, ViTLastStage)
    x = torch.randn(2, 3, 64, 32)
    cams = torch.tensor([1, 2])
    with torch.no_grad():
        trunk = model.forward_trunk(x, cams)
        torch.testing.assert_close(model.last_stage(trunk), model(x, cams))
        torch.testing.assert_close(copy.deepcopy(model.last_stage)(trunk), model(x, cams))
    with pytest.raises(ValueError, match="NUM_CAMERAS is 3"):
        model.forward_trunk(x, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="INPUT.SIZE_TEST"):
        model(torch.randn(1, 3, 48, 32))
    with pytest.raises(ValueError, match="multiples of the patch size"):
        TransReIDViT((72, 32))


def vit_cfg(*opts):
    cfg = add_lwtgpf_config(get_cfg())
    cfg.merge_from_file(str(REPO / "configs" / "TMGF" / "market.yml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.BACKBONE.PRETRAIN", "False", "MODEL.BACKBONE.NUM_CAMERAS",
                         str(CAMS), "MODEL.BACKBONE.VIT.EMBED_DIM", str(DIM), "MODEL.BACKBONE.VIT.DEPTH", str(DEPTH),
                         "MODEL.BACKBONE.VIT.NUM_HEADS", str(HEADS), "INPUT.SIZE_TRAIN", "[96, 32]",
                         "INPUT.SIZE_TEST", "[96, 32]", "MODEL.MEMORY.NEG_K", "4", *opts])
    return cfg


def test_config_builds_tmgf_vit():
    cfg = add_lwtgpf_config(get_cfg())
    cfg.merge_from_file(str(REPO / "configs" / "TMGF" / "market.yml"))
    v = cfg.MODEL.BACKBONE.VIT
    assert (v.EMBED_DIM, v.DEPTH, v.NUM_HEADS, v.PATCH_SIZE, v.STEM_CONV) == (384, 12, 6, 16, True)
    assert list(cfg.INPUT.SIZE_TRAIN) == [384, 128] and cfg.MODEL.BACKBONE.PRETRAIN_PATH.endswith("ics_cfs_lup.pth")
    model = build_backbone(vit_cfg())
    assert isinstance(model, TransReIDViT) and model.grid_size == (6, 2) and model.sie_embed.shape == (CAMS, DIM)
    assert model.last_stage.norm.eps == 1e-6 and model.last_stage.block.attn.qkv.bias is not None
    with pytest.raises(ValueError, match="NUM_VIEWS"):
        build_backbone(vit_cfg("MODEL.BACKBONE.NUM_VIEWS", "2"))


def test_gpo2cap_on_the_vit_trains_one_step_with_class_token_globals():
    torch.manual_seed(0)
    model = build_model(vit_cfg())
    assert not any(p.numel() for p in model.backbone.last_stage.parameters())
    assert all(isinstance(b, ViTLastStage) for b in model.heads.branches)

    g = torch.Generator().manual_seed(0)
    images = torch.rand(8, 3, 96, 32, generator=g) * 255
    cams = torch.arange(8) % CAMS
    feats = model.extract_features({"images": images, "camids": cams})
    assert feats.shape == (6, 8, DIM)
    # eval: the global feature is the BNNeck of the branches' mean class token, as TMGF's
    model.eval()
    with torch.no_grad():
        trunk = model.backbone.forward_trunk(model.preprocess_image({"images": images}), cams)
        cls = torch.stack([branch.forward_global_and_map(trunk)[0] for branch in model.heads.branches]).mean(0)
        torch.testing.assert_close(feats[0], F.normalize(model.heads.bnnecks[0](cls), dim=-1))

    clusters = torch.arange(8) // 4
    proxies = torch.unique(clusters * CAMS + cams, return_inverse=True)[1]
    model.memory.reset(feats, clusters, proxies, cams)
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = model({"images": images, "camids": cams, "targets": proxies})
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert all(p.grad is not None for _, p in trainable)
    optimizer.step()
    model.update_memory()
    for name in ("backbone.sie_embed", "backbone.patch_embed.conv.0.weight", "backbone.blocks.0.attn.qkv.weight",
                 "heads.branches.0.block.mlp.fc1.weight", "heads.branches.1.norm.weight"):
        assert not torch.equal(dict(model.named_parameters())[name], before[name]), name
