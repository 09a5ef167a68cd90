"""Exact re-id ranking metrics (fast-reid's numbers, in seconds) and the evaluator that uses them."""
from .evaluator import ReidEvaluator, pairwise_distance
from .rank import evaluate_rank

__all__ = ["ReidEvaluator", "evaluate_rank", "pairwise_distance"]
