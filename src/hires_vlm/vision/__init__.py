"""Stage 2 of the pipeline — vision: one batched forward of a transformers vision tower over all views
(or, for a native-resolution tower, over every image's patches at its own size)."""

from .feature_cache import FeatureCache, attach_feature_cache
from .native import NativeVisionTower, build_vision_tower, check_tower_and_method, is_native_config, tower_tile_size
from .tower import VisionTower

__all__ = ["FeatureCache", "NativeVisionTower", "VisionTower", "attach_feature_cache", "build_vision_tower",
           "check_tower_and_method", "is_native_config", "tower_tile_size"]
