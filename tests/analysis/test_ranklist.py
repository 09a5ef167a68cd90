"""Rank lists mark true and false matches as the evaluator ranks them; CMC and ROC pictures."""
import numpy as np
import pytest
import torch
from PIL import Image

from lwtgpf.analysis.ranklist import (cmc_figure, ranked_gallery, ranklist_image, roc_curve, roc_figure,
                                      select_queries)
from lwtgpf.evaluation import ReidEvaluator

from .conftest import tiny_cfg


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """An evaluation of random features with re-ranking, whose images are small coloured files."""
    folder = tmp_path_factory.mktemp("imgs")
    g = torch.Generator().manual_seed(0)
    num_query, num_gallery, num_ids = 12, 40, 6
    pids = torch.randint(0, num_ids, (num_query + num_gallery,), generator=g)
    camids = torch.randint(0, 3, (num_query + num_gallery,), generator=g)
    feats = torch.randn(num_ids, 8, generator=g)[pids] + 0.9 * torch.randn(len(pids), 8, generator=g)
    paths = []
    for i in range(len(pids)):
        paths.append(str(folder / f"{int(pids[i]):04d}_c{int(camids[i]) + 1}_{i:03d}.png"))
        Image.fromarray(np.full((16, 8, 3), 10 * i % 255, np.uint8)).save(paths[-1])
    cfg = tiny_cfg(["TEST.RERANK.ENABLED", "True", "TEST.RERANK.K1", "6", "TEST.RERANK.K2", "3"])
    evaluator = ReidEvaluator(cfg, num_query)
    evaluator.reset()
    for i in range(0, len(pids), 16):
        evaluator.process({"targets": pids[i:i + 16], "camids": camids[i:i + 16], "img_paths": paths[i:i + 16]},
                          feats[i:i + 16])
    results = evaluator.evaluate()
    return evaluator.ranking, results


def test_marks_follow_the_evaluator(evaluated):
    ranking, results = evaluated
    assert np.nanmean(ranking.average_precision) * 100 == pytest.approx(results["mAP"])
    first_hits = []
    for q in range(len(ranking.q_pids)):
        gallery, matches = ranked_gallery(ranking, q, topk=len(ranking.g_pids))
        # plain protocol: the whole gallery by distance, minus the query's identity in its camera
        same_pid = ranking.g_pids == ranking.q_pids[q]
        kept = [g for g in np.argsort(ranking.distmat[q]) if not (same_pid[g] and ranking.g_camids[g] == ranking.q_camids[q])]
        assert list(gallery) == kept
        assert list(matches) == [bool(same_pid[g]) for g in kept]
        if matches.any():  # the evaluator's AP, recomputed from these marks
            hits = np.flatnonzero(matches)
            ap = np.mean(np.arange(1, len(hits) + 1) / (hits + 1))
            assert ap == pytest.approx(ranking.average_precision[q])
            first_hits.append(hits[0])
        else:
            assert np.isnan(ranking.average_precision[q])
    assert np.mean(np.array(first_hits) == 0) * 100 == pytest.approx(results["Rank-1"])


def test_selection_and_pictures(evaluated):
    ranking, _ = evaluated
    best, worst = select_queries(ranking, 3, "best"), select_queries(ranking, 3, "worst")
    ap = ranking.average_precision
    assert ap[best[0]] == np.nanmax(ap) and ap[worst[0]] == np.nanmin(ap)
    assert select_queries(ranking, 2) == [0, 1]
    query = worst[0]
    picture = ranklist_image(ranking, query, topk=5, size=(16, 8))
    _, matches = ranked_gallery(ranking, query, 5)
    assert picture.dtype == np.uint8 and picture.shape[1] == 6 * (8 + 6) + 7 * 4
    for k, match in enumerate(matches, start=1):  # the frame's colour: green for a true match, red for a false one
        frame = picture[18 + 4 + 1, 4 + k * (8 + 6 + 4) + 1]
        assert tuple(frame) == ((0, 170, 0) if match else (220, 0, 0))
    fpr, tpr = roc_curve(ranking)
    assert fpr[0] == 0 and tpr[-1] == 1 and np.all(np.diff(fpr) >= 0)
    for figure in (cmc_figure(ranking), roc_figure(ranking)):
        assert figure.ndim == 3 and figure.shape[2] == 3 and figure.std() > 0
