"""A native-resolution vision tower: transformers' Qwen2-VL vision model over variable-size images.

Where :class:`~hires_vlm.vision.VisionTower` encodes S×S views, this wrapper takes every image of a
batch at its own size, as Qwen2-VL's flattened patches (``imaging/native.py``), and runs
``Qwen2VisionTransformerPretrainedModel`` (2-D rotary positions, attention kept within each image
through ``cu_seqlens``) once over all of them. It returns the chosen block's output (default: the
last, as Qwen2-VL) *before* the tower's own ``PatchMerger``: the 2×2 merge is the method's
connector (``methods/qwen2vl.py``), trained like every other connector, so the tower's merger is
replaced by an identity and holds no weights.

Geometry it reports to the rest of the model: ``tile_size`` = ``patch_size · merge_size`` (the
pixels of one visual token, 28) and ``grid`` = ``merge_size`` (patches per token side), so
``tile_size // grid`` is the patch size everywhere a processor or method computes it.

Shapes: ``pixel_values [n x c·T·p·p]`` (n = Σ patches of the batch's images) and one
:class:`~hires_vlm.imaging.CutRecord` per image → ``[n x dv]``.
"""

from __future__ import annotations

import torch
from torch import nn

from .tower import TowerModule

NATIVE_MODEL_TYPES = ("qwen2_vl_vision",)


def is_native_config(vision_config) -> bool:
    return getattr(vision_config, "model_type", None) in NATIVE_MODEL_TYPES


def tower_tile_size(vision_config) -> int:
    """The view size S a tower config implies: ``image_size``, or for a native tower ``patch · merge``."""
    if is_native_config(vision_config):
        return int(vision_config.patch_size) * int(vision_config.spatial_merge_size)
    return int(vision_config.image_size)


def native_tower_class():
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

    return Qwen2VisionTransformerPretrainedModel


class NativeVisionTower(TowerModule):
    native = True

    def __init__(self, model: nn.Module, feature_layer: int = -1):
        super().__init__()
        model.merger = nn.Identity()  # the merge is the connector's (methods/qwen2vl.py)
        self.model = model
        cfg = model.config
        self.patch_size = int(cfg.patch_size)
        self.merge_size = int(cfg.spatial_merge_size)
        self.temporal_patch_size = int(cfg.temporal_patch_size)
        self.in_channels = int(cfg.in_channels)
        self.tile_size = self.patch_size * self.merge_size
        self.grid = self.merge_size
        self.hidden_size = int(cfg.embed_dim)
        depth = int(cfg.depth)
        self.feature_layer = int(feature_layer)
        k = self.feature_layer if self.feature_layer >= 0 else depth + 1 + self.feature_layer
        if not 1 <= k <= depth:
            raise ValueError(f"vision_feature_layer {feature_layer} is out of range for a {depth}-block native tower "
                             f"(use 1..{depth} or -1..-{depth}; -1, the last block, is Qwen2-VL's)")
        self.feature_layer_index = k
        self.calls = 0
        self.feature_cache = None  # not supported: the cache is keyed by S×S views

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid  # patches per visual token

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.temporal_patch_size * self.patch_size ** 2

    @staticmethod
    def grid_thw(records) -> torch.Tensor:
        """``[n x 3]`` (frames, patch rows, patch columns) per image, as Qwen2-VL's ``image_grid_thw``."""
        return torch.tensor([[1, r.grid[1], r.grid[0]] for r in records], dtype=torch.long)

    def blank_input(self, record) -> torch.Tensor:
        """Zero patches for one image cut as ``record`` (the text-only batch's dummy image)."""
        return torch.zeros(record.num_views, self.patch_dim)

    def encode(self, pixel_values: torch.Tensor, records) -> torch.Tensor:
        """``[n x c·T·p·p]`` patches of ``records``' images → ``[n x dv]`` features."""
        if any(not r.is_native for r in records):
            raise ValueError("a native-resolution tower encodes native cuts only (method 'qwen2vl'); "
                             "this batch was cut into S×S views")
        if pixel_values.ndim != 2 or pixel_values.shape[1] != self.patch_dim:
            raise ValueError(
                f"pixel_values must be flattened patches [patches, {self.patch_dim}] (c·T·p·p = {self.in_channels}·"
                f"{self.temporal_patch_size}·{self.patch_size}·{self.patch_size}), got {tuple(pixel_values.shape)}; "
                "make them with this model's processor (its patch and temporal sizes must be the tower's)")
        if pixel_values.shape[0] == 0:
            return pixel_values.new_zeros(0, self.hidden_size, dtype=self.dtype)
        self.calls += 1
        grid = self.grid_thw(records).to(pixel_values.device)
        blocks = self.model.blocks
        grad = torch.is_grad_enabled() and not self.is_frozen
        with torch.set_grad_enabled(grad):
            self.model.blocks = blocks[:self.feature_layer_index]  # only the blocks the feature layer needs
            try:
                out = self.model(pixel_values.to(self.dtype), grid_thw=grid)
            finally:
                self.model.blocks = blocks
        return out.last_hidden_state

    def forward(self, pixel_values: torch.Tensor, records=None) -> torch.Tensor:
        if records is None:
            raise ValueError("a native-resolution tower needs the images' cut records (their patch grids)")
        return self.encode(pixel_values, records)


def build_vision_tower(config):
    """The tower of a ``HiResVLMConfig``: a :class:`NativeVisionTower` for a Qwen2-VL vision config, else a
    :class:`~hires_vlm.vision.VisionTower` over ``AutoModel.from_config``."""
    if is_native_config(config.vision_config):
        return NativeVisionTower(native_tower_class()(config.vision_config), config.vision_feature_layer)
    from transformers import AutoModel

    from .tower import VisionTower

    return VisionTower(AutoModel.from_config(config.vision_config), config.vision_feature_layer,
                       config.vision_chunk_size)


def check_tower_and_method(tower, method_name: str, native_methods=("qwen2vl",)) -> None:
    """Refuse a method on a tower that cannot feed it, saying why and what to do."""
    native = getattr(tower, "native", False)
    if method_name in native_methods and not native:
        raise ValueError(
            f"method {method_name!r} needs a native-resolution vision tower (a Qwen2-VL vision config, "
            f"model_type 'qwen2_vl_vision'), which takes each image at its own size with 2-D rotary positions; "
            f"this model's tower is {type(tower.model).__name__} with fixed {tower.tile_size}-px views. Build it with "
            "hires_vlm.tiny.build_tiny(method='qwen2vl') (random native tower) or from a Qwen2-VL vision checkpoint")
    if native and method_name not in native_methods:
        raise ValueError(f"method {method_name!r} cuts S×S views, which a native-resolution tower does not take; "
                         f"use one of {list(native_methods)} with it, or a CLIP/SigLIP tower")
