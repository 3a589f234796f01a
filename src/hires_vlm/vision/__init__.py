"""Stage 2 of the pipeline — vision: one batched forward of a transformers vision tower over all views."""

from .feature_cache import FeatureCache, attach_feature_cache
from .tower import VisionTower

__all__ = ["FeatureCache", "VisionTower", "attach_feature_cache"]
