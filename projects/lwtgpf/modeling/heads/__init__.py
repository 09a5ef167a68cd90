from .global_part import GlobalPartHead, stripe_pool

__all__ = ["GlobalPartHead", "stripe_pool"]
