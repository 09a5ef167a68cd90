"""`lwtgpf.evaluation.ReidEvaluator` end to end on random features with a tiny config."""
import lwtgpf  # noqa: F401  (fastreid compatibility fixes first)

import numpy as np
import pytest
import torch
from fastreid.config import get_cfg
from fastreid.evaluation.rank import evaluate_rank as fastreid_evaluate_rank
from fastreid.evaluation.rerank import re_ranking

from lwtgpf.config import add_lwtgpf_config
from lwtgpf.evaluation import ReidEvaluator, pairwise_distance


def _cfg(metric="cosine", rerank=False):
    cfg = add_lwtgpf_config(get_cfg())
    cfg.MODEL.DEVICE = "cpu"
    cfg.TEST.METRIC = metric
    cfg.TEST.RERANK.ENABLED = rerank
    cfg.TEST.RERANK.K1, cfg.TEST.RERANK.K2 = 6, 3
    return cfg


def _plain_distance(x, y, metric):
    x, y = x.double().numpy(), y.double().numpy()
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        y = y / np.linalg.norm(y, axis=1, keepdims=True)
        return 1 - x @ y.T
    return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_pairwise_distance(metric):
    x, y = torch.randn(9, 5), torch.randn(13, 5)
    np.testing.assert_allclose(pairwise_distance(x, y, metric, chunk=4), _plain_distance(x, y, metric), atol=1e-5)


@pytest.mark.parametrize("metric,rerank", [("cosine", False), ("euclidean", False), ("cosine", True)])
def test_evaluator_end_to_end(metric, rerank):
    g = torch.Generator().manual_seed(0)
    num_query, num_gallery, num_ids = 24, 72, 8
    pids = torch.randint(0, num_ids, (num_query + num_gallery,), generator=g)
    camids = torch.randint(0, 3, (num_query + num_gallery,), generator=g)
    centres = torch.randn(num_ids, 16, generator=g)
    feats = centres[pids] + 0.8 * torch.randn(len(pids), 16, generator=g)

    evaluator = ReidEvaluator(_cfg(metric, rerank), num_query)
    evaluator.reset()
    for i in range(0, len(pids), 10):
        evaluator.process({"targets": pids[i:i + 10], "camids": camids[i:i + 10]}, feats[i:i + 10])
    results = evaluator.evaluate()

    q, gal = slice(0, num_query), slice(num_query, None)
    dist = _plain_distance(feats[q], feats[gal], metric)
    if rerank:
        dist = re_ranking(dist, _plain_distance(feats[q], feats[q], metric),
                          _plain_distance(feats[gal], feats[gal], metric), k1=6, k2=3, lambda_value=0.3)
    p, c = pids.numpy(), camids.numpy()
    cmc, all_ap, all_inp = fastreid_evaluate_rank(dist, p[q], p[gal], c[q], c[gal], use_cython=False)

    assert list(results) == ["Rank-1", "Rank-5", "Rank-10", "mAP", "mINP", "metric"]
    expected = [cmc[0] * 100, cmc[4] * 100, cmc[9] * 100, np.mean(all_ap) * 100, np.mean(all_inp) * 100,
                (np.mean(all_ap) + cmc[0]) / 2 * 100]
    np.testing.assert_allclose(list(results.values()), expected, atol=1e-3)
    assert results["mAP"] > 30  # features are clustered by identity: the ranking is far from chance


def test_bad_metric_is_reported():
    with pytest.raises(ValueError, match="TEST.METRIC"):
        ReidEvaluator(_cfg("hamming"), num_query=3)
