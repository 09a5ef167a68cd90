"""`lwtgpf.evaluation.evaluate_rank` against fast-reid's pure-Python ranking on fresh random problems."""
import lwtgpf  # noqa: F401  (fastreid compatibility fixes first)

import numpy as np
import pytest
from fastreid.evaluation.rank import evaluate_rank as fastreid_evaluate_rank

from lwtgpf.evaluation import evaluate_rank
from lwtgpf.evaluation.protocol import kept_mask, valid_queries


def _problem(rng, num_q, num_g, num_ids, num_cams, tied):
    q_pids, g_pids = rng.integers(0, num_ids, num_q), rng.integers(0, num_ids, num_g)
    q_cams, g_cams = rng.integers(0, num_cams, num_q), rng.integers(0, num_cams, num_g)
    if tied:
        distmat = rng.integers(0, 4, (num_q, num_g)).astype(np.float32)
    else:
        distmat = rng.random((num_q, num_g)).astype(np.float32)
    return distmat, q_pids, g_pids, q_cams, g_cams


def _assert_same(ours, ref):
    cmc, all_ap, all_inp = ours
    ref_cmc, ref_ap, ref_inp = ref
    assert cmc.dtype == np.float32 and cmc.shape == ref_cmc.shape
    np.testing.assert_allclose(cmc, ref_cmc, rtol=0, atol=1e-6)
    assert isinstance(all_ap, list) and isinstance(all_inp, list)
    assert len(all_ap) == len(ref_ap) and len(all_inp) == len(ref_inp)
    np.testing.assert_allclose(all_ap, ref_ap, rtol=0, atol=1e-6)
    np.testing.assert_allclose(all_inp, ref_inp, rtol=0, atol=1e-6)


@pytest.mark.parametrize("tied", [False, True], ids=["float", "integer-ties"])
@pytest.mark.parametrize("seed", range(4))
def test_matches_fastreid(seed, tied):
    rng = np.random.default_rng(seed)
    args = _problem(rng, num_q=40, num_g=120, num_ids=12, num_cams=3, tied=tied)
    ref = fastreid_evaluate_rank(*args, max_rank=50, use_cython=False)
    _assert_same(evaluate_rank(*args, max_rank=50), ref)
    _assert_same(evaluate_rank(*args, max_rank=50, chunk=7), ref)  # chunk borders change nothing


def test_queries_without_valid_match_are_skipped():
    rng = np.random.default_rng(10)
    distmat, q_pids, g_pids, q_cams, g_cams = _problem(rng, 30, 90, 8, 3, tied=True)
    q_pids[:5] = 100  # identity absent from the gallery
    q_pids[5:10], q_cams[5:10] = 101, 0
    g_pids[:4], g_cams[:4] = 101, 0  # present, but only in the query's own camera: all removed
    args = (distmat, q_pids, g_pids, q_cams, g_cams)
    ours = evaluate_rank(*args)
    _assert_same(ours, fastreid_evaluate_rank(*args, use_cython=False))
    has_match = [((g_pids == p) & (g_cams != c)).any() for p, c in zip(q_pids, q_cams)]
    assert len(ours[1]) == sum(has_match) <= 20


def _plain_protocol(distmat, q_pids, g_pids, q_cams, g_cams):
    """Written from the definition, one query at a time: rank the gallery, drop the images of the
    query's identity seen by its camera; the query is valid when a true match is left."""
    valid, all_ap = [], []
    for q in range(len(q_pids)):
        ranked = [g for g in np.argsort(distmat[q]) if not (g_pids[g] == q_pids[q] and g_cams[g] == q_cams[q])]
        hits = np.flatnonzero([g_pids[g] == q_pids[q] for g in ranked])
        valid.append(hits.size > 0)
        if hits.size:
            all_ap.append(np.mean(np.arange(1, hits.size + 1) / (hits + 1)))
    return np.array(valid), all_ap


@pytest.mark.parametrize("tied", [False, True], ids=["float", "integer-ties"])
@pytest.mark.parametrize("seed", range(3))
def test_valid_queries_and_ap_follow_the_definition(seed, tied):
    rng = np.random.default_rng(100 + seed)
    distmat, q_pids, g_pids, q_cams, g_cams = _problem(rng, 50, 80, 30, 3, tied=tied)
    valid, all_ap = _plain_protocol(distmat, q_pids, g_pids, q_cams, g_cams)
    assert 0 < valid.sum() < len(valid)  # both kinds of query, or the comparison proves little
    np.testing.assert_array_equal(valid_queries(q_pids, q_cams, g_pids, g_cams), valid)
    ours = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams)[1]
    assert len(ours) == len(all_ap)
    np.testing.assert_allclose(ours, all_ap, rtol=0, atol=1e-12)
    kept = kept_mask(q_pids[:, None], q_cams[:, None], g_pids[None], g_cams[None])
    np.testing.assert_array_equal(kept, ~((q_pids[:, None] == g_pids) & (q_cams[:, None] == g_cams)))


def test_gallery_smaller_than_max_rank():
    rng = np.random.default_rng(11)
    distmat, q_pids, g_pids, q_cams, g_cams = _problem(rng, 15, 12, 4, 2, tied=True)
    g_cams = q_cams.max() + 1 + g_cams  # disjoint cameras: nothing removed, every list has 12
    args = (distmat, q_pids, g_pids, q_cams, g_cams)
    ours = evaluate_rank(*args, max_rank=50)
    assert ours[0].shape == (12,)
    _assert_same(ours, fastreid_evaluate_rank(*args, max_rank=50, use_cython=False))


def test_uneven_short_lists_count_as_matched_past_their_end():
    # fast-reid fails here (ragged CMC rows); a query whose kept list ends early found its match.
    distmat = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]], dtype=np.float32)
    q_pids, q_cams = np.array([1, 2]), np.array([0, 0])
    g_pids, g_cams = np.array([2, 1, 2]), np.array([1, 1, 0])  # query 2 loses gallery 2 (same camera)
    cmc, all_ap, all_inp = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=10)
    # query 1: ranking [2, 1, 2] -> first match at rank 2; query 2: kept [1, 2] -> match at rank 2
    np.testing.assert_array_equal(cmc, np.array([0.0, 1.0, 1.0], dtype=np.float32))
    np.testing.assert_allclose(all_ap, [1 / 2, 1 / 2])
    np.testing.assert_allclose(all_inp, [1 / 2, 1 / 2])


def test_hand_computed_ap_and_inp():
    # one query, gallery ranked [m, x, m, x, m]: AP = (1/1 + 2/3 + 3/5) / 3, INP = 3 / 5
    distmat = np.array([[0.0, 0.1, 0.2, 0.3, 0.4]])
    g_pids = np.array([7, 1, 7, 2, 7])
    cmc, all_ap, all_inp = evaluate_rank(distmat, np.array([7]), g_pids, np.array([0]), np.ones(5, int), max_rank=3)
    np.testing.assert_array_equal(cmc, [1, 1, 1])
    np.testing.assert_allclose(all_ap, [(1 + 2 / 3 + 3 / 5) / 3])
    np.testing.assert_allclose(all_inp, [3 / 5])


def test_errors_name_the_problem():
    distmat = np.zeros((2, 3))
    with pytest.raises(ValueError, match="g_pids"):
        evaluate_rank(distmat, np.zeros(2), np.zeros(4), np.zeros(2), np.zeros(3))
    with pytest.raises(ValueError, match="no query identity"):
        evaluate_rank(distmat, np.array([1, 2]), np.array([3, 3, 3]), np.zeros(2), np.ones(3))
