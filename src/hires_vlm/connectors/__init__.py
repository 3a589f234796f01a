"""Stage 3 of the pipeline — connectors: modules that turn view features into visual tokens in the
LM's width (projectors, layouts, resampler, gate, router, enhancement, fusion, pooling)."""

from .dem import ATTENTION_BLOCKS, DIRECTIONS, DualPerspectiveEnhancement, WindowCrossAttention
from .dual import WINDOW_KINDS, assemble_map, cut_map, merge_windows, split_map
from .fusion import FUSION_KINDS, FUSION_ORDERS, DualFusion
from .gate import GATE_MODES, GATE_NOISE, GatedMixture, NoisyGate
from .layout import (UNPAD_ROUNDINGS, anyres_layout, anyres_max_size, anyres_token_count, tiles_side, tiles_to_map,
                     unpadded_extent)
from .mlp import PROJECTOR_TYPES, build_projector
from .pooling import POOLING_KINDS, pool_map
from .resampler import Resampler, resize_pos_embed, sincos_2d
from .router import ROUTER_AGGREGATES, ROUTER_CUTOFFS, RouterSettings, RouteResult, route, text_similarity
from .shuffle import PS_VERSIONS, check_shuffle_grid, pixel_shuffle

__all__ = ["GATE_MODES", "GATE_NOISE", "PROJECTOR_TYPES", "ROUTER_AGGREGATES", "ROUTER_CUTOFFS", "GatedMixture",
           "NoisyGate", "Resampler", "RouteResult", "RouterSettings", "anyres_layout", "anyres_token_count",
           "build_projector", "resize_pos_embed", "route", "sincos_2d", "text_similarity", "tiles_to_map",
           "unpadded_extent"]
# INF-LLaVA: dual-perspective geometry, enhancement, fusion, pooling
__all__ += ["ATTENTION_BLOCKS", "DIRECTIONS", "FUSION_KINDS", "FUSION_ORDERS", "POOLING_KINDS", "WINDOW_KINDS",
            "DualFusion", "DualPerspectiveEnhancement", "WindowCrossAttention", "assemble_map", "cut_map",
            "merge_windows", "pool_map", "split_map"]
# LLaVA-OneVision's token budget, InternVL's pixel shuffle
__all__ += ["PS_VERSIONS", "UNPAD_ROUNDINGS", "anyres_max_size", "check_shuffle_grid", "pixel_shuffle", "tiles_side"]
