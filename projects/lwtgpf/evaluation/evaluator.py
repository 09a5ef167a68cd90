"""fast-reid `DatasetEvaluator` for re-id that runs on CPU-only machines and ranks in seconds."""
import copy
import itertools
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from fastreid.evaluation import ReidEvaluator as _FastReidEvaluator
from fastreid.utils import comm

from .protocol import valid_queries
from .rank import evaluate_rank

__all__ = ["Ranking", "ReidEvaluator", "pairwise_distance"]

logger = logging.getLogger(__name__)

_METRICS = ("cosine", "euclidean")


@torch.no_grad()
def pairwise_distance(x: torch.Tensor, y: torch.Tensor, metric: str = "cosine", chunk: int = 1024) -> np.ndarray:
    """(len(x), len(y)) float32 distances, `chunk` rows of `x` at a time, on `x`'s device.

    `cosine` is 1 - cos; `euclidean` is the *squared* Euclidean distance, as fast-reid's
    `build_dist` computes it (same ranking, and re-ranking sees the same numbers).
    """
    if metric not in _METRICS:
        raise ValueError(f"TEST.METRIC must be one of {_METRICS}, got {metric!r}")
    x, y = x.float(), y.to(x.device, torch.float32)
    if metric == "cosine":
        x, y = F.normalize(x, dim=1), F.normalize(y, dim=1)
    else:
        x_sq, y_sq = x.pow(2).sum(1, keepdim=True), y.pow(2).sum(1)
    out = np.empty((x.shape[0], y.shape[0]), dtype=np.float32)
    for i in range(0, x.shape[0], chunk):
        block = x[i:i + chunk] @ y.t()
        if metric == "cosine":
            block = 1 - block
        else:
            block = x_sq[i:i + chunk] + y_sq - 2 * block
        out[i:i + chunk] = block.cpu().numpy()
    return out


@dataclass
class Ranking:
    """What `ReidEvaluator.evaluate()` ranked, kept for pictures of the results (rank lists, curves)."""
    distmat: np.ndarray  # [Q, G] float32, after AQE / re-ranking when configured
    q_pids: np.ndarray
    g_pids: np.ndarray
    q_camids: np.ndarray
    g_camids: np.ndarray
    q_paths: List[str]  # image paths, when the loader gave them (else empty)
    g_paths: List[str]
    average_precision: np.ndarray  # [Q], NaN for a query without a true match in another camera
    cmc: np.ndarray


class ReidEvaluator(_FastReidEvaluator):
    """fast-reid's `ReidEvaluator` with exact fast ranking and no Cython build.

    `process(inputs, outputs)` stores the [B, D] eval features with `inputs["targets"]` and
    `inputs["camids"]`; the first `num_query` stored samples are the queries. `evaluate()`
    gathers them from every process (results on the main process only), applies the optional
    average query expansion (TEST.AQE) and k-reciprocal re-ranking (TEST.RERANK: Zhong et al.,
    CVPR 2017, fast-reid's `re_ranking`, dense in (queries + gallery)^2 memory), then returns
    Rank-1/5/10, mAP, mINP (percent) and `metric` = (mAP + Rank-1) / 2, like fast-reid. The
    distances and per-query results stay in `ranking` (main process).
    """

    def __init__(self, cfg, num_query: int, output_dir: Optional[str] = None):
        # Deliberately not calling super().__init__: it builds fast-reid's Cython ranking with
        # `make` inside site-packages and exits the process when that fails.
        if cfg.TEST.METRIC not in _METRICS:
            raise ValueError(f"TEST.METRIC must be one of {_METRICS}, got {cfg.TEST.METRIC!r}")
        self.cfg = cfg
        self._num_query = num_query
        self._output_dir = output_dir
        self._cpu_device = torch.device("cpu")
        self._predictions = []
        self.ranking: Optional[Ranking] = None

    def process(self, inputs, outputs):
        super().process(inputs, outputs)
        self._predictions[-1]["paths"] = list(inputs.get("img_paths", []))

    def _distance_device(self) -> torch.device:
        device = torch.device(self.cfg.MODEL.DEVICE)
        if device.type == "cuda" and not torch.cuda.is_available():
            return self._cpu_device
        return device

    def evaluate(self) -> Dict[str, float]:
        if comm.get_world_size() > 1:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(self._predictions, dst=0)))
            if not comm.is_main_process():
                return {}
        else:
            predictions = self._predictions
        if not predictions:
            raise RuntimeError("ReidEvaluator.evaluate() called before any process(inputs, outputs)")

        features = torch.cat([p["feats"] for p in predictions], dim=0)
        pids = torch.cat([p["pids"] for p in predictions], dim=0).numpy()
        camids = torch.cat([p["camids"] for p in predictions], dim=0).numpy()
        nq = self._num_query
        if not 0 < nq < len(features):
            raise ValueError(f"num_query={nq} must be between 1 and the number of evaluated samples - 1 "
                             f"({len(features) - 1})")
        q_feat, g_feat = features[:nq], features[nq:]

        test = self.cfg.TEST
        if test.AQE.ENABLED:
            from fastreid.evaluation.query_expansion import aqe
            logger.info("Test with AQE setting")
            q_feat, g_feat = aqe(q_feat, g_feat, test.AQE.QE_TIME, test.AQE.QE_K, test.AQE.ALPHA)

        device = self._distance_device()
        q_feat, g_feat = q_feat.to(device), g_feat.to(device)
        dist = pairwise_distance(q_feat, g_feat, test.METRIC)
        if test.RERANK.ENABLED:
            from fastreid.evaluation.rerank import re_ranking
            logger.info("Test with rerank setting")
            dist = re_ranking(dist, pairwise_distance(q_feat, q_feat, test.METRIC),
                              pairwise_distance(g_feat, g_feat, test.METRIC),
                              k1=test.RERANK.K1, k2=test.RERANK.K2, lambda_value=test.RERANK.LAMBDA)

        q_pids, g_pids, q_camids, g_camids = pids[:nq], pids[nq:], camids[:nq], camids[nq:]
        cmc, all_AP, all_INP = evaluate_rank(dist, q_pids, g_pids, q_camids, g_camids)
        mAP, mINP = float(np.mean(all_AP)), float(np.mean(all_INP))
        paths = list(itertools.chain(*(p.get("paths", []) for p in predictions)))
        paths = paths if len(paths) == len(pids) else []
        average_precision = np.full(nq, np.nan)
        average_precision[valid_queries(q_pids, q_camids, g_pids, g_camids)] = all_AP
        self.ranking = Ranking(dist, q_pids, g_pids, q_camids, g_camids, paths[:nq], paths[nq:],
                               average_precision, cmc)

        self._results = OrderedDict()
        for r in (1, 5, 10):
            # a CMC shorter than r (tiny gallery) has reached its final value already
            self._results[f"Rank-{r}"] = float(cmc[min(r, len(cmc)) - 1]) * 100
        self._results["mAP"] = mAP * 100
        self._results["mINP"] = mINP * 100
        self._results["metric"] = (mAP + float(cmc[0])) / 2 * 100

        if test.ROC.ENABLED:
            from fastreid.evaluation.roc import evaluate_roc
            from sklearn import metrics
            scores, labels = evaluate_roc(dist, q_pids, g_pids, q_camids, g_camids, use_cython=False)
            fprs, tprs, _ = metrics.roc_curve(labels, scores)
            for fpr in (1e-4, 1e-3, 1e-2):
                self._results[f"TPR@FPR={fpr:.0e}"] = float(tprs[np.argmin(np.abs(fprs - fpr))])

        return copy.deepcopy(self._results)
