"""Stage 3 of the pipeline — connectors: modules that turn view features into visual tokens in the
LM's width (projectors, layouts, resampler, gate, router, enhancement, fusion, pooling)."""

from .layout import anyres_layout, anyres_token_count, tiles_to_map, unpadded_extent
from .mlp import PROJECTOR_TYPES, build_projector

__all__ = ["PROJECTOR_TYPES", "anyres_layout", "anyres_token_count", "build_projector", "tiles_to_map",
           "unpadded_extent"]
