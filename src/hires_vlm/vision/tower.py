"""Stage 2 of the pipeline — vision: a wrapper around any transformers vision tower (CLIP, SigLIP).

All views of all images of a batch go through the tower in one batched forward, chunked only to
bound memory (``chunk_size`` views at a time). The output is the chosen hidden layer (default −2,
as LLaVA) with the CLS token dropped when the tower has one (detected from the sequence length,
so CLIP drops it and SigLIP, which has none, does not). Frozen by default: a frozen tower runs
under ``torch.no_grad`` so no activation is kept for it, and may read its features from an on-disk
cache (``feature_cache``, see ``feature_cache.py``), which it consults only while frozen.

Shapes: ``[v x c x S x S]`` views → ``[v x t x d]`` with t = (S / patch)² tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import compat


class TowerModule(nn.Module):
    """What every tower wrapper reports about the transformers model it holds (``self.model``)."""

    model: nn.Module

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def is_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.model.parameters())


class VisionTower(TowerModule):
    def __init__(self, model: nn.Module, feature_layer: int = -2, chunk_size: int | None = None):
        super().__init__()
        self.model = model
        cfg = model.config
        self.feature_layer = int(feature_layer)
        self.chunk_size = chunk_size
        self.tile_size = int(cfg.image_size)
        self.patch_size = int(cfg.patch_size)
        if self.tile_size % self.patch_size:
            raise ValueError(f"tower image_size {self.tile_size} is not a multiple of patch_size {self.patch_size}")
        self.grid = self.tile_size // self.patch_size
        self.hidden_size = int(cfg.hidden_size)
        n_layers = int(cfg.num_hidden_layers)
        if not -(n_layers + 1) <= self.feature_layer <= n_layers:
            raise ValueError(f"vision_feature_layer {feature_layer} is out of range for a {n_layers}-layer tower")
        self.calls = 0  # number of tower forwards, for tests and benchmarks
        self.feature_cache = None  # a FeatureCache (feature_cache.py), used while the tower is frozen

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid

    @property
    def feature_layer_index(self) -> int:
        """The feature layer as an index into ``hidden_states`` (0 = embeddings, n = the last layer's output)."""
        n_layers = int(self.model.config.num_hidden_layers)
        return self.feature_layer if self.feature_layer >= 0 else n_layers + 1 + self.feature_layer

    def _encoder_layers(self):
        """The tower's ``encoder.layers`` ModuleList (CLIP, SigLIP and most ViTs), or None."""
        for root in (self.model, getattr(self.model, "vision_model", None)):
            enc = getattr(root, "encoder", None)
            layers = getattr(enc, "layers", None)
            if isinstance(layers, nn.ModuleList):
                return enc, layers
        return None, None

    def _install_output_hooks(self) -> None:
        """Hooks that record hidden states, installed on every layer before a sliced forward
        (``compat.install_output_capturing_hooks``: installed during one, they would miss the layers
        left out, and every later full forward would return too few hidden states)."""
        compat.install_output_capturing_hooks(self.model)

    def _encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        k = self.feature_layer_index
        enc, layers = self._encoder_layers()
        if enc is not None and 1 <= k < len(layers):
            # Run only the layers the feature layer needs (LLaVA's −2 skips the last): less compute,
            # fewer stored hidden states. The slice shares the modules; the full list is put back.
            self._install_output_hooks()
            enc.layers = layers[:k]
            try:
                out = self.model(pixel_values=pixel_values.to(self.dtype), output_hidden_states=True)
            finally:
                enc.layers = layers
            feats = out.hidden_states[k]
        else:
            out = self.model(pixel_values=pixel_values.to(self.dtype), output_hidden_states=True)
            feats = out.hidden_states[self.feature_layer]
        extra = feats.shape[1] - self.num_tokens
        if extra == 1:
            feats = feats[:, 1:]
        elif extra != 0:
            raise ValueError(
                f"the tower returned {feats.shape[1]} tokens for a {self.grid}x{self.grid} patch grid; "
                "only towers with no or one (CLS) extra token are supported"
            )
        return feats

    def encode(self, pixel_values: torch.Tensor, records=None) -> torch.Tensor:
        """The model's call: ``records`` (the images' cuts) matter only to a native-resolution tower (``native.py``)."""
        return self(pixel_values)

    def blank_input(self, record) -> torch.Tensor:
        """Zero views for one image cut as ``record`` (the text-only batch's dummy image)."""
        return torch.zeros(record.num_views, 3, self.tile_size, self.tile_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[v x c x S x S]`` → ``[v x t x d]``; v may be 0."""
        if pixel_values.ndim != 4 or pixel_values.shape[-1] != self.tile_size or pixel_values.shape[-2] != self.tile_size:
            raise ValueError(
                f"pixel_values must be [views, 3, {self.tile_size}, {self.tile_size}], got {tuple(pixel_values.shape)}"
            )
        n = pixel_values.shape[0]
        if n == 0:
            return pixel_values.new_zeros(0, self.num_tokens, self.hidden_size, dtype=self.dtype)
        if self.feature_cache is not None and self.is_frozen:
            return self.feature_cache.features(pixel_values, self._encode_all)
        return self._encode_all(pixel_values)

    def _encode_all(self, pixel_values: torch.Tensor) -> torch.Tensor:
        n = pixel_values.shape[0]
        chunk = self.chunk_size or n
        grad = torch.is_grad_enabled() and not self.is_frozen
        with torch.set_grad_enabled(grad):
            parts = [self._encode(pixel_values[i:i + chunk]) for i in range(0, n, chunk)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, 0)
