"""Proxy memory: loss forward + backward + momentum update, ours vs a naive per-sample implementation.

The naive baseline does what the original code does: the full K x K proxy-proxy product every
iteration, a Python loop over samples for the offline loss and for the update, a loop over cameras
for the online positives. Both compute the same losses (METHOD.md section 4).
"""
import argparse
import statistics
import time
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from lwtgpf.memory import ProxyMemory


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=32, help="batch size B (proxies of 4 images)")
    parser.add_argument("--parts", type=int, default=5, help="part features P (1+P granularities)")
    parser.add_argument("--dim", type=int, default=768, help="feature width D")
    parser.add_argument("--clusters", type=int, default=1300, help="clusters")
    parser.add_argument("--proxies", type=int, default=4000, help="proxies K (clusters split over cameras)")
    parser.add_argument("--cameras", type=int, default=6, help="cameras")
    parser.add_argument("--iters", type=int, default=20, help="timed iterations of ours")
    parser.add_argument("--naive-iters", type=int, default=5, help="timed iterations of the naive baseline")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--seed", type=int, default=0)


class NaiveMemory:
    """Per-sample loops and the full K x K proxy similarity, as in the original code."""

    def __init__(self, memory: torch.Tensor, proxy_cluster: torch.Tensor, proxy_cam: torch.Tensor,
                 temp: float = 0.07, momentum: float = 0.2, neg_k: int = 50, pos_k: int = 3,
                 balance_w: float = 0.15, part_weight: float = 0.1) -> None:
        self.memory = memory.clone()
        self.temp, self.momentum, self.neg_k, self.pos_k = temp, momentum, neg_k, pos_k
        self.balance_w, self.part_weight = balance_w, part_weight
        self.proxy_cluster = proxy_cluster.tolist()
        members: Dict[int, List[int]] = {}
        for k, c in enumerate(self.proxy_cluster):
            members.setdefault(c, []).append(k)
        self.cluster2proxy = {c: torch.tensor(v, device=memory.device) for c, v in members.items()}
        self.cam2proxy = [torch.nonzero(proxy_cam == cam).flatten() for cam in torch.unique(proxy_cam)]

    @staticmethod
    def _set_loss(scores: torch.Tensor, sel: torch.Tensor, num_pos: int) -> torch.Tensor:
        """Positives at the end of `sel` (the original code's layout)."""
        log_prob = F.log_softmax(scores.gather(-1, sel), dim=-1)
        return -log_prob[..., -num_pos:].mean(dim=-1)

    def loss(self, feats: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        scores = feats.matmul(self.memory.transpose(1, 2)) / self.temp  # [L, B, K]
        detached = scores.detach().clone()
        off = []
        for b in range(feats.shape[1]):
            pos = self.cluster2proxy[self.proxy_cluster[int(targets[b])]]
            detached[:, b, pos] = float("inf")
            sel = torch.argsort(detached[:, b, :], dim=1)[:, -self.neg_k - len(pos):]
            off.append(self._set_loss(scores[:, b], sel, len(pos)))
        off = torch.stack(off, dim=1)  # [L, B]

        proxy_sims = self.memory.matmul(self.memory.transpose(1, 2))  # [L, K, K], every iteration
        sims = self.balance_w * scores.detach() * self.temp + (1 - self.balance_w) * proxy_sims[:, targets]
        tops = []
        for proxies in self.cam2proxy:
            tops.append(proxies[sims[:, :, proxies].argmax(dim=2)])
        tops = torch.stack(tops, dim=2)
        num_pos = min(self.pos_k, tops.shape[2])
        order = torch.argsort(sims.gather(2, tops), dim=2)[:, :, -num_pos:]
        pos = tops.gather(2, order)
        marked = sims.scatter(2, pos, float("inf"))
        sel = torch.argsort(marked, dim=2)[:, :, -self.neg_k - num_pos:]
        on = self._set_loss(scores, sel, num_pos)
        return off[0].mean() + on[0].mean() + self.part_weight * (off[1:].mean() + on[1:].mean())

    @torch.no_grad()
    def update(self, feats: torch.Tensor, targets: torch.Tensor) -> None:
        for b in range(feats.shape[1]):
            y = int(targets[b])
            mixed = self.momentum * self.memory[:, y] + (1 - self.momentum) * feats[:, b]
            self.memory[:, y] = mixed / mixed.norm(dim=1, keepdim=True)


def make_data(args: argparse.Namespace) -> Tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    """Clustered features with ~K camera-aware proxies, two images per proxy."""
    rng = np.random.default_rng(args.seed)
    # Every cluster seen by a base number of cameras, some by one more, so that the total is K.
    base, extra = divmod(args.proxies, args.clusters)
    if base + (extra > 0) > args.cameras:
        raise SystemExit(f"--proxies {args.proxies} needs more than --cameras {args.cameras} per cluster")
    counts = np.full(args.clusters, base)
    counts[rng.choice(args.clusters, extra, replace=False)] += 1
    clusters, cams, proxies = [], [], []
    for c, count in enumerate(counts):
        for cam in np.sort(rng.choice(args.cameras, count, replace=False)):
            clusters += [c, c]
            cams += [cam, cam]
            proxies += [len(proxies) // 2] * 2
    gen = torch.Generator().manual_seed(args.seed)
    levels = 1 + args.parts
    centres = torch.randn(levels, args.clusters, args.dim, generator=gen)
    noise = torch.randn(levels, len(clusters), args.dim, generator=gen)
    features = F.normalize(centres[:, clusters] + noise, dim=2)
    return features, np.array(clusters), np.array(proxies), np.array(cams)


def time_interleaved(step_ours: Callable[[int], None], step_naive: Callable[[int], None], iters: int,
                     naive_iters: int, sync: Callable[[], None]) -> Tuple[List[float], List[float]]:
    """Per-iteration times, the two implementations taking turns so that both see the same load
    on a shared machine."""
    def timed(step: Callable[[int], None], i: int) -> float:
        start = time.perf_counter()
        step(i)
        sync()
        return time.perf_counter() - start

    step_ours(0)  # warm-up
    step_naive(0)
    sync()
    ours, naive = [], []
    per_round = -(-iters // naive_iters)
    for r in range(naive_iters):
        ours += [timed(step_ours, 1 + i) for i in range(r * per_round, min(iters, (r + 1) * per_round))]
        naive.append(timed(step_naive, 1 + r))
    return ours, naive


def main(args: argparse.Namespace) -> None:
    if args.iters < 1 or args.naive_iters < 1:
        raise SystemExit(f"--iters and --naive-iters must be >= 1, got {args.iters} and {args.naive_iters}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    features, clusters, proxies, cams = make_data(args)
    ours = ProxyMemory().to(device)
    ours.reset(features, clusters, proxies, cams)
    naive = NaiveMemory(ours.memory, ours.proxy_to_cluster, ours.proxy_to_camera)
    num_proxies = ours.num_proxies
    print(f"B={args.batch} 1+P={1 + args.parts} D={args.dim} clusters={args.clusters} K={num_proxies} "
          f"cameras={args.cameras} device={device} threads={torch.get_num_threads()}")

    gen = torch.Generator().manual_seed(args.seed + 1)
    batches = []
    for _ in range(max(args.iters, args.naive_iters) + 1):
        targets = torch.randperm(num_proxies, generator=gen)[:args.batch // 4].repeat_interleave(4)
        noise = torch.randn(1 + args.parts, args.batch, args.dim, generator=gen)
        batches.append((F.normalize(ours.memory[:, targets.to(device)].cpu() + noise, dim=2).to(device),
                        targets.to(device)))

    def step_ours(i: int) -> None:
        feats = batches[i][0].clone().requires_grad_(True)
        ours(feats, batches[i][1])["loss"].backward()
        ours.update(feats.detach(), batches[i][1])

    def step_naive(i: int) -> None:
        feats = batches[i][0].clone().requires_grad_(True)
        naive.loss(feats, batches[i][1]).backward()
        naive.update(feats.detach(), batches[i][1])

    # Same losses on the same state: the comparison is between equal computations.
    check = batches[0][0].clone().requires_grad_(True)
    ours_loss, naive_loss = ours(check, batches[0][1])["loss"].item(), naive.loss(check, batches[0][1]).item()
    if not np.isclose(ours_loss, naive_loss, rtol=1e-4):
        raise SystemExit(f"ours and naive disagree: {ours_loss} vs {naive_loss}")

    times_ours, times_naive = time_interleaved(step_ours, step_naive, args.iters, args.naive_iters, sync)
    t_ours, t_naive = statistics.median(times_ours), statistics.median(times_naive)
    print("| implementation | median s / iteration | iterations |")
    print("|---|---|---|")
    print(f"| naive (K x K, per-sample loops) | {t_naive:.4f} | {args.naive_iters} |")
    print(f"| ours (ProxyMemory) | {t_ours:.4f} | {args.iters} |")
    print(f"speed-up: {t_naive / t_ours:.1f}x")
