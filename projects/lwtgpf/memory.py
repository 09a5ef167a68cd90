"""Camera-aware proxy memory with the offline and online contrastive losses of GP-O2CAP.

METHOD.md section 4. The memory holds one L2-normalised proxy per (cluster, camera) pair and per
granularity (global feature first, then the parts). It is rebuilt by `ProxyMemory.reset` every
epoch from the clustering result, used by `forward` for the losses and moved towards the batch
features by `update` after the optimiser step.

Everything is vectorised over granularities, samples and proxies: the only proxy-proxy
similarities computed are the B rows of the batch's own proxies, never the K x K matrix.
"""
from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ProxyMemory", "proxy_sums"]

LabelArray = Union[torch.Tensor, np.ndarray]


def _as_labels(labels: LabelArray, name: str, length: int) -> torch.Tensor:
    """Labels from a tensor, numpy array or sequence as a CPU int64 tensor of the given length."""
    tensor = labels.detach().cpu() if isinstance(labels, torch.Tensor) else torch.as_tensor(np.asarray(labels))
    if tensor.dtype.is_floating_point or tensor.dtype == torch.bool or tensor.dtype.is_complex:
        raise TypeError(f"ProxyMemory.reset: {name} must hold integers, got dtype {tensor.dtype}")
    if tensor.shape != (length,):
        raise ValueError(f"ProxyMemory.reset: {name} must have shape [{length}] (one per image), "
                         f"got {list(tensor.shape)}")
    return tensor.long()


def _group_table(group_of_item: torch.Tensor, num_groups: int) -> torch.Tensor:
    """[G, max group size] table of item ids per group, ascending, padded with -1."""
    order = torch.argsort(group_of_item, stable=True)  # items grouped, ascending ids inside a group
    sizes = torch.bincount(group_of_item, minlength=num_groups)
    starts = torch.cumsum(sizes, 0) - sizes
    sorted_groups = group_of_item[order]
    column = torch.arange(order.numel()) - starts[sorted_groups]
    table = torch.full((num_groups, int(sizes.max())), -1, dtype=torch.long)
    table[sorted_groups, column] = order
    return table


@torch.no_grad()
def proxy_sums(features: torch.Tensor, proxy_labels: torch.Tensor, num_proxies: Optional[int] = None) -> torch.Tensor:
    """Sums [1+P, K, D] in float32 of the features [1+P, N, D] of each proxy's members, on the
    features' device; images labelled < 0 (outliers) are left out, K defaults to max label + 1.

    One granularity at a time, so a float16 or sharded feature set never needs a float32 copy of the
    whole; normalising the sums gives the memory (the L2-normalised sum is the normalised mean)."""
    proxy_labels = torch.as_tensor(proxy_labels, device=features.device)
    num_proxies = int(proxy_labels.max()) + 1 if num_proxies is None else num_proxies
    keep = proxy_labels >= 0
    index = proxy_labels[keep]
    sums = features.new_zeros((features.shape[0], num_proxies, features.shape[2]), dtype=torch.float32)
    for level, total in zip(features, sums):
        total.index_add_(0, index, level[keep].float())
    return sums


class ProxyMemory(nn.Module):
    """Camera-aware proxy memory [1+P, K, D] with offline (cluster) and online (camera-aware
    nearest neighbour) proxy contrastive losses.

    Args:
        temp: softmax temperature tau.
        momentum: alpha, weight of the old proxy in the momentum update.
        neg_k: number of hard negative proxies per sample.
        pos_k: number of online positives (best proxy of each of the best cameras).
        balance_w: beta, weight of the sample-proxy similarity in the online affinity.
        part_weight: lambda, weight of the part losses in the total.
    """

    def __init__(
            self,
            temp: float = 0.07,
            momentum: float = 0.2,
            neg_k: int = 50,
            pos_k: int = 3,
            balance_w: float = 0.15,
            part_weight: float = 0.1,
    ) -> None:
        super().__init__()
        if temp <= 0:
            raise ValueError(f"ProxyMemory: temp must be > 0, got {temp}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"ProxyMemory: momentum must be in [0, 1], got {momentum}")
        if not 0.0 <= balance_w <= 1.0:
            raise ValueError(f"ProxyMemory: balance_w must be in [0, 1], got {balance_w}")
        if int(neg_k) != neg_k or neg_k < 0:
            raise ValueError(f"ProxyMemory: neg_k must be a non-negative integer, got {neg_k}")
        if int(pos_k) != pos_k or pos_k < 1:
            raise ValueError(f"ProxyMemory: pos_k must be a positive integer, got {pos_k}")
        self.temp = float(temp)
        self.momentum = float(momentum)
        self.neg_k = int(neg_k)
        self.pos_k = int(pos_k)
        self.balance_w = float(balance_w)
        self.part_weight = float(part_weight)
        # Rebuilt every epoch with a new K, so none of this belongs in a checkpoint.
        self.register_buffer("_memory", torch.empty(0, 0, 0), persistent=False)
        # proxy -> cluster label; cluster label -> its proxies (padded with -1).
        self.register_buffer("proxy_to_cluster", torch.empty(0, dtype=torch.long), persistent=False)
        self.register_buffer("cluster_to_proxies", torch.empty(0, 0, dtype=torch.long), persistent=False)
        # proxy -> camera id; camera id -> its proxies (padded with -1, an empty row when a camera
        # has no proxy, e.g. all its images are outliers).
        self.register_buffer("proxy_to_camera", torch.empty(0, dtype=torch.long), persistent=False)
        self.register_buffer("camera_to_proxies", torch.empty(0, 0, dtype=torch.long), persistent=False)
        self.num_cameras = 0  # cameras that own at least one proxy

    @property
    def memory(self) -> torch.Tensor:
        """The proxies, [1+P, K, D], L2-normalised (the live buffer)."""
        return self._memory

    @property
    def num_proxies(self) -> int:
        return self._memory.shape[1]

    def extra_repr(self) -> str:
        return (f"temp={self.temp}, momentum={self.momentum}, neg_k={self.neg_k}, pos_k={self.pos_k}, "
                f"balance_w={self.balance_w}, part_weight={self.part_weight}, memory={list(self._memory.shape)}")

    @torch.no_grad()
    def reset(
            self,
            features: torch.Tensor,
            cluster_labels: LabelArray,
            proxy_labels: LabelArray,
            cams: LabelArray,
    ) -> None:
        """Rebuild the memory from one epoch's features and pseudo labels.

        Args:
            features: [1+P, N, D] features of every training image, global first.
            cluster_labels: [N] cluster of each image, -1 for outliers.
            proxy_labels: [N] proxy of each image, 0..K-1 (every id used), -1 for outliers.
            cams: [N] camera id (>= 0) of each image.
        """
        features = torch.as_tensor(features)
        if features.dim() != 3 or not features.is_floating_point():
            raise ValueError(f"ProxyMemory.reset: features must be a float tensor [1+P, N, D], "
                             f"got {features.dtype} {list(features.shape)}")
        proxies = _as_labels(proxy_labels, "proxy_labels", features.shape[1])
        self.reset_from_sums(proxy_sums(features, proxies), cluster_labels, proxies, cams)

    @torch.no_grad()
    def reset_from_sums(
            self,
            sums: torch.Tensor,
            cluster_labels: LabelArray,
            proxy_labels: LabelArray,
            cams: LabelArray,
    ) -> None:
        """`reset` from the per-proxy sums of the member features, [1+P, K, D] (`proxy_sums`), so
        that the features themselves need not be in one place (e.g. summed per process, then
        all-reduced); the other arguments are `reset`'s."""
        num_images = len(proxy_labels)
        clusters = _as_labels(cluster_labels, "cluster_labels", num_images)
        proxies = _as_labels(proxy_labels, "proxy_labels", num_images)
        cams = _as_labels(cams, "cams", num_images)
        if (cams < 0).any():
            raise ValueError(f"ProxyMemory.reset: camera ids must be >= 0, got {int(cams.min())}")
        if (proxies < -1).any() or (clusters < -1).any():
            raise ValueError("ProxyMemory.reset: labels must be >= 0, or -1 for outliers")
        keep = proxies >= 0
        if not torch.equal(keep, clusters >= 0):
            bad = int(torch.nonzero(keep != (clusters >= 0))[0])
            raise ValueError(f"ProxyMemory.reset: image {bad} has cluster label {int(clusters[bad])} but proxy label "
                             f"{int(proxies[bad])}; outliers must be -1 in both")
        if not keep.any():
            raise ValueError("ProxyMemory.reset: every image is an outlier, there is no proxy to build")

        member_proxy, member_cluster, member_cam = proxies[keep], clusters[keep], cams[keep]
        num_proxies = int(member_proxy.max()) + 1
        sizes = torch.bincount(member_proxy, minlength=num_proxies)
        if (sizes == 0).any():
            missing = torch.nonzero(sizes == 0).flatten()[:10].tolist()
            raise ValueError(f"ProxyMemory.reset: proxy labels must be 0..K-1 with every id used (K={num_proxies}); "
                             f"ids without images: {missing}")
        proxy_cluster = torch.empty(num_proxies, dtype=torch.long).scatter_(0, member_proxy, member_cluster)
        proxy_cam = torch.empty(num_proxies, dtype=torch.long).scatter_(0, member_proxy, member_cam)
        checks = (("clusters", proxy_cluster, member_cluster), ("cameras", proxy_cam, member_cam))
        for name, per_proxy, per_member in checks:
            mixed = member_proxy[per_proxy[member_proxy] != per_member]
            if mixed.numel():
                raise ValueError(f"ProxyMemory.reset: proxy {int(mixed[0])} holds images of several {name}; "
                                 f"a proxy is one (cluster, camera) pair")

        if sums.dim() != 3 or sums.shape[1] != num_proxies:
            raise ValueError(f"ProxyMemory.reset_from_sums: sums must be [1+P, {num_proxies}, D] (one row per proxy), "
                             f"got {list(sums.shape)}")
        device = self._memory.device
        self._memory = F.normalize(sums.float(), dim=2).to(device)
        self.proxy_to_cluster = proxy_cluster.to(device)
        self.cluster_to_proxies = _group_table(proxy_cluster, int(proxy_cluster.max()) + 1).to(device)
        self.proxy_to_camera = proxy_cam.to(device)
        self.camera_to_proxies = _group_table(proxy_cam, int(proxy_cam.max()) + 1).to(device)
        self.num_cameras = int(torch.unique(proxy_cam).numel())

    def training_state(self) -> Dict[str, torch.Tensor]:
        """The proxies and their maps, on the CPU: what a run resumed inside an epoch needs (they
        are rebuilt every epoch, so they are not in the model's state dict)."""
        return {name: buf.detach().cpu().clone() for name, buf in self.named_buffers(recurse=False)}

    def load_training_state(self, state: Dict[str, torch.Tensor]) -> None:
        """Put back what `training_state` returned."""
        device = self._memory.device
        for name, _ in list(self.named_buffers(recurse=False)):
            setattr(self, name, state[name].to(device))
        self.num_cameras = int(torch.unique(self.proxy_to_camera).numel())

    def _check_batch(self, features: torch.Tensor, proxy_targets: torch.Tensor,
                     caller: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """Validated float32 features [1+P, B, D] and int64 targets [B] on the memory's device."""
        if self._memory.numel() == 0:
            raise RuntimeError(f"ProxyMemory.{caller}: the memory is empty; call reset() with the epoch's "
                               f"features and pseudo labels first")
        levels, num_proxies, dim = self._memory.shape
        if not isinstance(features, torch.Tensor) or features.dim() != 3 or features.shape[0] != levels \
                or features.shape[2] != dim or not features.is_floating_point():
            got = list(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise ValueError(f"ProxyMemory.{caller}: features must be a float tensor [{levels}, B, {dim}] "
                             f"(granularities, batch, dim) like the memory, got {got}")
        if features.device != self._memory.device:
            raise ValueError(f"ProxyMemory.{caller}: features are on {features.device} but the memory is on "
                             f"{self._memory.device}; move the module with .to(device)")
        targets = torch.as_tensor(proxy_targets, device=features.device)
        if targets.dtype.is_floating_point or targets.dtype == torch.bool or targets.shape != (features.shape[1],):
            raise ValueError(f"ProxyMemory.{caller}: proxy_targets must be integers of shape [{features.shape[1]}], "
                             f"got {targets.dtype} {list(targets.shape)}")
        targets = targets.long()
        if targets.numel() > 0:
            low, high = torch.aminmax(targets)
            if int(low) < 0 or int(high) >= num_proxies:
                raise ValueError(f"ProxyMemory.{caller}: proxy_targets must lie in [0, {num_proxies - 1}], "
                                 f"got values in [{int(low)}, {int(high)}]")
        return features.float(), targets

    def _negatives(self, ranking: torch.Tensor, pos: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The neg_k proxies outside `pos` with the highest `ranking` [L, B, K], and their validity
        (False where fewer than neg_k proxies lie outside the positives)."""
        masked = ranking.scatter(2, pos, float("-inf"))
        values, index = masked.topk(min(self.neg_k, ranking.shape[2]), dim=2)
        return index, values > float("-inf")

    def _offline_positives(self, targets: torch.Tensor, levels: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """All proxies of each sample's cluster, [L, B, max cluster size], padding filled with the
        sample's own proxy (always a positive) so that indexing with it stays harmless."""
        table = self.cluster_to_proxies[self.proxy_to_cluster[targets]]
        valid = table >= 0
        pos = torch.where(valid, table, targets[:, None])
        return pos.expand(levels, -1, -1), valid.expand(levels, -1, -1)

    def _online_positives(self, affinity: torch.Tensor) -> torch.Tensor:
        """Camera-aware nearest neighbours, [L, B, min(pos_k, cameras)]: per camera the proxy with
        the highest affinity, then the pos_k best of those winners."""
        levels, batch, num_proxies = affinity.shape
        num_slots = self.camera_to_proxies.shape[0]
        cam = self.proxy_to_camera.expand(levels, batch, -1)
        best = affinity.new_full((levels, batch, num_slots), float("-inf"))
        best = best.scatter_reduce(2, cam, affinity, reduce="amax")
        # The lowest proxy id among exact ties, so the choice is deterministic.
        ids = torch.arange(num_proxies, device=affinity.device).expand(levels, batch, -1)
        candidates = torch.where(affinity == best.gather(2, cam), ids, num_proxies)
        winner = torch.full_like(best, num_proxies, dtype=torch.long).scatter_reduce(2, cam, candidates, reduce="amin")
        # Camera slots without a proxy keep -inf and lose to every real camera.
        top = best.topk(min(self.pos_k, self.num_cameras), dim=2).indices
        return winner.gather(2, top)

    @staticmethod
    def _set_loss(logits: torch.Tensor, pos: torch.Tensor, pos_valid: torch.Tensor,
                  neg: torch.Tensor, neg_valid: torch.Tensor) -> torch.Tensor:
        """[L, B] mean over positives of -log softmax over (positives + negatives)."""
        pos_logits = logits.gather(2, pos)
        neg_logits = logits.gather(2, neg)
        every = torch.cat([pos_logits.masked_fill(~pos_valid, float("-inf")),
                           neg_logits.masked_fill(~neg_valid, float("-inf"))], dim=2)
        pos_mean = (pos_logits * pos_valid).sum(2) / pos_valid.sum(2)
        return torch.logsumexp(every, dim=2) - pos_mean

    def forward(self, features: torch.Tensor, proxy_targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Offline and online losses of a batch.

        Args:
            features: [1+P, B, D] L2-normalised features, global first.
            proxy_targets: [B] proxy id of each sample.
        Returns:
            dict, in float32, of `loss` = global_off + global_on + part_weight * (part_off_unweighted
            + part_on_unweighted) and those four terms (part terms are means over the parts; 0 when
            there are none). The part terms are named unweighted because `part_off` / `part_on`
            mean the weighted terms everywhere else (`GPO2CAP`'s loss dict, the logged scalars).
        """
        feats, targets = self._check_batch(features, proxy_targets, "forward")
        levels = feats.shape[0]
        with torch.autocast(device_type=feats.device.type, enabled=False):
            memory = self._memory
            scores = torch.bmm(feats, memory.transpose(1, 2))  # [L, B, K]; memory is a constant
            logits = scores / self.temp
            with torch.no_grad():
                sims = scores.detach()
                off_pos, off_valid = self._offline_positives(targets, levels)
                off_neg, off_neg_valid = self._negatives(sims, off_pos)
                # Only the rows of the batch's distinct proxies (B/4 with proxy-balanced batches),
                # never the K x K proxy-proxy similarity.
                distinct, row = torch.unique(targets, return_inverse=True)
                proxy_sims = torch.bmm(memory[:, distinct], memory.transpose(1, 2))[:, row]
                affinity = self.balance_w * sims + (1.0 - self.balance_w) * proxy_sims
                on_pos = self._online_positives(affinity)
                on_valid = torch.ones_like(on_pos, dtype=torch.bool)
                on_neg, on_neg_valid = self._negatives(affinity, on_pos)
            off = self._set_loss(logits, off_pos, off_valid, off_neg, off_neg_valid)
            on = self._set_loss(logits, on_pos, on_valid, on_neg, on_neg_valid)

        zero = logits.new_zeros(())
        losses = {
            "global_off": off[0].mean(),
            "global_on": on[0].mean(),
            "part_off_unweighted": off[1:].mean() if levels > 1 else zero,
            "part_on_unweighted": on[1:].mean() if levels > 1 else zero,
        }
        losses["loss"] = (losses["global_off"] + losses["global_on"]
                          + self.part_weight * (losses["part_off_unweighted"] + losses["part_on_unweighted"]))
        return losses

    @torch.no_grad()
    def update(self, features: torch.Tensor, proxy_targets: torch.Tensor) -> None:
        """Momentum update, sample by sample in batch order:
        M[l, y_b] <- normalise(alpha M[l, y_b] + (1 - alpha) f[l, b]).

        A proxy met several times is updated several times, in order; the work is vectorised
        over the first occurrences of each proxy, then the second ones, and so on.
        """
        feats, targets = self._check_batch(features, proxy_targets, "update")
        if targets.numel() == 0:
            return
        # Occurrence rank of each sample among the earlier samples with the same proxy.
        order = torch.argsort(targets, stable=True)
        sorted_targets = targets[order]
        position = torch.arange(targets.numel(), device=targets.device)
        run_start = torch.ones_like(sorted_targets, dtype=torch.bool)
        run_start[1:] = sorted_targets[1:] != sorted_targets[:-1]
        first = torch.cummax(torch.where(run_start, position, 0), dim=0).values
        rank = torch.empty_like(position)
        rank[order] = position - first

        memory = self._memory
        for occurrence in range(int(rank.max()) + 1):
            samples = torch.nonzero(rank == occurrence).flatten()
            proxies = targets[samples]
            mixed = self.momentum * memory[:, proxies] + (1.0 - self.momentum) * feats[:, samples]
            memory[:, proxies] = F.normalize(mixed, dim=2)
