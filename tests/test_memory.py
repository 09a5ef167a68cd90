"""ProxyMemory against a plain per-sample, per-granularity loop written from METHOD.md section 4."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lwtgpf  # noqa: F401
from lwtgpf.memory import ProxyMemory

TOL = dict(rtol=2e-5, atol=2e-6)


# ---------------------------------------------------------------- plain reference (loops only)
def camera_split(clusters, cams):
    """Proxy ids cluster by cluster, cameras ascending inside a cluster; outliers -1."""
    proxy_of = {}
    for c in sorted(set(int(x) for x in clusters if x >= 0)):
        for cam in sorted(set(int(cams[i]) for i in range(len(clusters)) if clusters[i] == c)):
            proxy_of[(c, cam)] = len(proxy_of)
    return np.array([proxy_of[(int(c), int(cam))] if c >= 0 else -1 for c, cam in zip(clusters, cams)])


def ref_reset(features, clusters, proxies, cams):
    levels, n, dim = features.shape
    num = max(proxies) + 1
    memory = torch.zeros(levels, num, dim)
    proxy_cluster, proxy_cam = [None] * num, [None] * num
    for k in range(num):
        members = [i for i in range(n) if proxies[i] == k]
        proxy_cluster[k] = int(clusters[members[0]])
        proxy_cam[k] = int(cams[members[0]])
        for level in range(levels):
            mean = sum(features[level, i] for i in members) / len(members)
            memory[level, k] = mean / mean.norm()
    return memory, proxy_cluster, proxy_cam


def ref_set_loss(s, pos, neg, temp):
    chosen = s[pos + neg] / temp
    log_prob = chosen - torch.logsumexp(chosen, 0)
    return -log_prob[:len(pos)].mean()


def ref_losses(memory, feats, targets, proxy_cluster, proxy_cam, temp=0.07, neg_k=50, pos_k=3, beta=0.15,
               part_weight=0.1):
    levels, batch, _ = feats.shape
    num = memory.shape[1]
    off = [[None] * batch for _ in range(levels)]
    on = [[None] * batch for _ in range(levels)]
    for level in range(levels):
        for b in range(batch):
            y = int(targets[b])
            s = memory[level] @ feats[level, b]
            rank = s.detach()
            # offline: every proxy of the cluster, hardest outside negatives by S
            pos = [k for k in range(num) if proxy_cluster[k] == proxy_cluster[y]]
            rest = sorted((k for k in range(num) if k not in pos), key=lambda k: -float(rank[k]))
            off[level][b] = ref_set_loss(s, pos, rest[:neg_k], temp)
            # online: camera-aware nearest neighbours by A
            a = [beta * float(rank[k]) + (1 - beta) * float(memory[level, y] @ memory[level, k]) for k in range(num)]
            winners = []
            for cam in sorted(set(proxy_cam)):
                in_cam = [k for k in range(num) if proxy_cam[k] == cam]
                winners.append(max(in_cam, key=lambda k: a[k]))
            pos = sorted(winners, key=lambda k: -a[k])[:pos_k]
            rest = sorted((k for k in range(num) if k not in pos), key=lambda k: -a[k])
            on[level][b] = ref_set_loss(s, pos, rest[:neg_k], temp)

    def part_mean(rows):
        return sum(sum(row) / batch for row in rows) / (levels - 1) if levels > 1 else torch.tensor(0.0)

    out = {
        "global_off": sum(off[0]) / batch,
        "global_on": sum(on[0]) / batch,
        "part_off_unweighted": part_mean(off[1:]),
        "part_on_unweighted": part_mean(on[1:]),
    }
    out["loss"] = out["global_off"] + out["global_on"] + part_weight * (out["part_off_unweighted"]
                                                                        + out["part_on_unweighted"])
    return out


def ref_update(memory, feats, targets, alpha=0.2):
    memory = memory.clone()
    for b in range(feats.shape[1]):
        y = int(targets[b])
        for level in range(feats.shape[0]):
            mixed = alpha * memory[level, y] + (1 - alpha) * feats[level, b]
            memory[level, y] = mixed / mixed.norm()
    return memory


# ---------------------------------------------------------------- random clustered inputs
def clustered(seed, levels=3, dim=16, clusters=6, cams=4, images=60, outliers=0.1):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(levels, clusters, dim, generator=gen)
    cluster = torch.randint(clusters, (images,), generator=gen)
    cam = torch.randint(cams, (images,), generator=gen)
    features = F.normalize(centres[:, cluster] + 0.7 * torch.randn(levels, images, dim, generator=gen), dim=2)
    cluster[torch.rand(images, generator=gen) < outliers] = -1
    return features, cluster.numpy(), camera_split(cluster.numpy(), cam.numpy()), cam.numpy(), gen


def batch_of(memory_bank, gen, batch=8, noise=0.5, targets=None):
    levels, num, dim = memory_bank.shape
    if targets is None:
        targets = torch.randint(num, (batch,), generator=gen)
    feats = F.normalize(memory_bank[:, targets] + noise * torch.randn(levels, len(targets), dim, generator=gen), dim=2)
    return feats.requires_grad_(True), targets


def check_against_reference(features, clusters, proxies, cams, gen, targets=None, **kwargs):
    mem = ProxyMemory(**kwargs)
    mem.reset(features, clusters, proxies, cams)
    ref_mem, proxy_cluster, proxy_cam = ref_reset(features, clusters, proxies, cams)
    torch.testing.assert_close(mem.memory, ref_mem, **TOL)

    feats, targets = batch_of(mem.memory, gen, targets=targets)
    ours = mem(feats, targets)
    (grad_ours,) = torch.autograd.grad(ours["loss"], feats)
    names = dict(temp="temp", neg_k="neg_k", pos_k="pos_k", balance_w="beta", part_weight="part_weight")
    ref = ref_losses(mem.memory, feats, targets, proxy_cluster, proxy_cam,
                     **{names[k]: v for k, v in kwargs.items() if k in names})
    (grad_ref,) = torch.autograd.grad(ref["loss"], feats)
    assert set(ours) == {"loss", "global_off", "global_on", "part_off_unweighted", "part_on_unweighted"}
    for key in ours:
        torch.testing.assert_close(ours[key], ref[key].to(ours[key].dtype), **TOL, msg=key)
    torch.testing.assert_close(grad_ours, grad_ref, **TOL)

    expected = ref_update(mem.memory, feats.detach(), targets, kwargs.get("momentum", 0.2))
    mem.update(feats.detach(), targets)
    torch.testing.assert_close(mem.memory, expected, **TOL)
    return mem, ours


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference(seed):
    features, clusters, proxies, cams, gen = clustered(seed, clusters=12, cams=5, images=150)
    check_against_reference(features, clusters, proxies, cams, gen, neg_k=7, pos_k=3)


def test_matches_reference_default_hyperparameters():
    features, clusters, proxies, cams, gen = clustered(3, clusters=20, cams=6, images=200)
    mem, _ = check_against_reference(features, clusters, proxies, cams, gen)
    assert mem.num_proxies > 50 + 3  # the defaults select among more proxies than they need


def test_reset_maps_match_loop():
    features, clusters, proxies, cams, _ = clustered(4, clusters=7, cams=3, images=80)
    mem = ProxyMemory()
    mem.reset(torch.as_tensor(features), torch.as_tensor(clusters), proxies.tolist(), cams)
    _, proxy_cluster, proxy_cam = ref_reset(features, clusters, proxies, cams)
    assert mem.proxy_to_cluster.tolist() == proxy_cluster
    assert mem.proxy_to_camera.tolist() == proxy_cam
    for c in range(mem.cluster_to_proxies.shape[0]):
        row = [k for k in mem.cluster_to_proxies[c].tolist() if k >= 0]
        assert row == [k for k in range(mem.num_proxies) if proxy_cluster[k] == c]
    for cam in range(mem.camera_to_proxies.shape[0]):
        row = [k for k in mem.camera_to_proxies[cam].tolist() if k >= 0]
        assert row == [k for k in range(mem.num_proxies) if proxy_cam[k] == cam]
    assert mem.num_cameras == len(set(proxy_cam))


def test_camera_with_only_outliers():
    features, clusters, proxies, cams, gen = clustered(5, clusters=8, cams=4, images=100)
    clusters = np.where(cams == 2, -1, clusters)
    proxies = camera_split(clusters, cams)
    mem, _ = check_against_reference(features, clusters, proxies, cams, gen, neg_k=10)
    assert mem.num_cameras == 3 and (mem.camera_to_proxies[2] == -1).all()
    # Same losses as when that camera never existed (ids renumbered 0, 1, 2).
    mem.reset(features, clusters, proxies, cams)
    other = ProxyMemory(neg_k=10)
    other.reset(features, clusters, proxies, np.where(cams == 3, 2, cams))
    feats = torch.randn(3, 8, 16)
    targets = torch.arange(8)
    for key, value in mem(feats, targets).items():
        torch.testing.assert_close(other(feats, targets)[key], value, **TOL)


def test_fewer_cameras_than_pos_k():
    features, clusters, proxies, cams, gen = clustered(6, clusters=8, cams=2, images=80)
    mem, _ = check_against_reference(features, clusters, proxies, cams, gen, neg_k=5, pos_k=3)
    with torch.no_grad():
        affinity = torch.rand(3, 8, mem.num_proxies)
        pos = mem._online_positives(affinity)
    assert pos.shape == (3, 8, 2)
    # one winner per camera, each the best of its camera
    assert (mem.proxy_to_camera[pos].sort(dim=2).values == torch.tensor([0, 1])).all()
    for cam in (0, 1):
        in_cam = mem.proxy_to_camera == cam
        best = affinity.masked_fill(~in_cam, -1).argmax(dim=2)
        assert (pos == best[..., None]).any(dim=2).all()


def test_fewer_proxies_than_negatives():
    features, clusters, proxies, cams, gen = clustered(7, clusters=3, cams=2, images=30, outliers=0.0)
    mem, _ = check_against_reference(features, clusters, proxies, cams, gen, neg_k=50, pos_k=3)
    assert mem.num_proxies < 50


def test_single_proxy():
    features = F.normalize(torch.randn(2, 5, 8), dim=2)
    mem = ProxyMemory()
    mem.reset(features, np.zeros(5, dtype=int), np.zeros(5, dtype=int), np.zeros(5, dtype=int))
    feats = F.normalize(torch.randn(2, 3, 8), dim=2).requires_grad_(True)
    out = mem(feats, torch.zeros(3, dtype=torch.long))
    for value in out.values():  # the only positive with no negative: log softmax of one logit is 0
        assert value.item() == 0.0
    out["loss"].backward()
    assert torch.isfinite(feats.grad).all()


def test_repeated_proxies_in_batch():
    features, clusters, proxies, cams, gen = clustered(8, clusters=6, cams=3, images=70)
    targets = torch.tensor([3, 3, 1, 3, 0, 1, 3, 2])
    check_against_reference(features, clusters, proxies, cams, gen, targets=targets, neg_k=6)


def test_update_order_of_repeats():
    mem = ProxyMemory(momentum=0.5)
    mem.reset(torch.eye(4)[None], np.arange(4), np.arange(4), np.zeros(4, dtype=int))
    feats = torch.eye(4)[None, [1, 2]]
    mem.update(feats, torch.tensor([0, 0]))
    # the second sample is applied to the already updated proxy
    first = F.normalize(torch.tensor([0.5, 0.5, 0.0, 0.0]), dim=0)
    expected = F.normalize(0.5 * first + 0.5 * torch.tensor([0.0, 0.0, 1.0, 0.0]), dim=0)
    torch.testing.assert_close(mem.memory[0, 0], expected)


def test_global_only():
    features, clusters, proxies, cams, gen = clustered(9, levels=1, clusters=6, cams=3, images=60)
    _, out = check_against_reference(features, clusters, proxies, cams, gen, neg_k=8)
    assert out["part_off_unweighted"].item() == 0.0 and out["part_on_unweighted"].item() == 0.0


def test_autocast_computes_in_float32():
    features, clusters, proxies, cams, gen = clustered(10, clusters=8, cams=3, images=80)
    mem = ProxyMemory(neg_k=10)
    mem.reset(features, clusters, proxies, cams)
    feats, targets = batch_of(mem.memory, gen)
    plain = mem(feats, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = mem(feats, targets)
        half = mem(feats.bfloat16(), targets)
    for key in plain:
        assert mixed[key].dtype == torch.float32 and half[key].dtype == torch.float32
        torch.testing.assert_close(mixed[key], plain[key])
    half["loss"].backward()


def test_buffers_stay_out_of_checkpoints():
    features, clusters, proxies, cams, _ = clustered(11)
    mem = ProxyMemory()
    mem.reset(features, clusters, proxies, cams)
    assert mem.state_dict() == {}
    assert mem.memory.shape == (3, mem.num_proxies, 16)


def test_training_state_resumes_the_epoch(tmp_path):
    features, clusters, proxies, cams, gen = clustered(13)
    mem = ProxyMemory(neg_k=5)
    mem.reset(features, clusters, proxies, cams)
    mem.update(*[t.detach() for t in batch_of(mem.memory, gen)])  # moved away from the reset state
    torch.save(mem.training_state(), tmp_path / "memory.pth")
    resumed = ProxyMemory(neg_k=5)
    resumed.load_training_state(torch.load(tmp_path / "memory.pth", weights_only=True))
    assert resumed.num_cameras == mem.num_cameras
    feats, targets = batch_of(mem.memory, gen)
    for key, value in mem(feats, targets).items():
        assert torch.equal(resumed(feats, targets)[key], value), key
    mem.update(feats.detach(), targets)
    resumed.update(feats.detach(), targets)
    assert torch.equal(resumed.memory, mem.memory)


def test_errors():
    mem = ProxyMemory()
    with pytest.raises(RuntimeError, match="reset"):
        mem(torch.randn(3, 4, 16), torch.zeros(4, dtype=torch.long))
    features, clusters, proxies, cams, _ = clustered(12)
    with pytest.raises(ValueError, match="outliers"):
        bad = clusters.copy()
        bad[np.flatnonzero(proxies >= 0)[0]] = -1
        mem.reset(features, bad, proxies, cams)
    with pytest.raises(ValueError, match="every id used"):
        mem.reset(features, clusters, np.where(proxies >= 0, proxies * 2, -1), cams)
    with pytest.raises(ValueError, match="several cameras"):
        mem.reset(features, clusters, proxies, np.roll(cams, 1))
    with pytest.raises(ValueError, match="shape"):
        mem.reset(features, clusters[:-1], proxies, cams)
    with pytest.raises(TypeError, match="integers"):
        mem.reset(features, clusters.astype(float), proxies, cams)
    mem.reset(features, clusters, proxies, cams)
    num = mem.num_proxies
    with pytest.raises(ValueError, match=r"\[0, "):
        mem(torch.randn(3, 2, 16), torch.tensor([0, num]))
    with pytest.raises(ValueError, match=r"\[0, "):
        mem.update(torch.randn(3, 2, 16), torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match=r"\[3, B, 16\]"):
        mem(torch.randn(2, 2, 16), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\[3, B, 16\]"):
        mem(torch.randn(3, 2, 8), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="proxy_targets"):
        mem(torch.randn(3, 2, 16), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="temp"):
        ProxyMemory(temp=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    features, clusters, proxies, cams, gen = clustered(13, clusters=10, cams=4, images=120)
    cpu = ProxyMemory(neg_k=10)
    cpu.reset(features, clusters, proxies, cams)
    gpu = ProxyMemory(neg_k=10).cuda()
    gpu.reset(features.cuda(), torch.as_tensor(clusters).cuda(), proxies, cams)
    feats, targets = batch_of(cpu.memory, gen)
    feats_gpu = feats.detach().cuda().requires_grad_(True)
    out_cpu, out_gpu = cpu(feats, targets), gpu(feats_gpu, targets.cuda())
    for key in out_cpu:
        torch.testing.assert_close(out_gpu[key].cpu(), out_cpu[key], rtol=1e-4, atol=1e-5)
    out_cpu["loss"].backward()
    out_gpu["loss"].backward()
    torch.testing.assert_close(feats_gpu.grad.cpu(), feats.grad, rtol=1e-4, atol=1e-5)
    with torch.autocast("cuda", dtype=torch.float16):
        amp = gpu(feats_gpu.half(), targets.cuda())
    assert amp["loss"].dtype == torch.float32 and math.isfinite(amp["loss"].item())
    cpu.update(feats.detach(), targets)
    gpu.update(feats_gpu.detach(), targets.cuda())
    torch.testing.assert_close(gpu.memory.cpu(), cpu.memory, rtol=1e-5, atol=1e-6)
