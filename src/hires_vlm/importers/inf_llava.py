"""INF-LLaVA checkpoints (github WeihuangLin/INF-LLaVA): ``llava_llama`` + ``model.spatial_embed`` (the DEM).

Key names, from the official ``INF_llava/model/llava_arch.py`` (``SpatialEmbed``,
``MultiHeadedAttention``): the attention's ``linears`` are applied as
``zip(self.linears, (q, k, v))`` and ``self.linears[-1]`` on the heads' concatenation, so
0, 1, 2, 3 = W_q, W_k, W_v, W_o; heads split the width into contiguous ``d/8`` chunks
(``view(b, -1, h, d_k)``), as ours. ``ffn_crop`` runs on the local-query output
(``global_enhanced_local``), ``ffn_stride`` on the global-query output, and their concatenation
is ``[crop, stride]`` (our ``fusion_order: local_first``).

==============================================  ===========================================
source                                          ours
==============================================  ===========================================
``model.mm_projector.{0,2}``                    ``connector.projector.{0,2}``
``model.spatial_embed.attention.linears.0..3``  ``connector.dem.attention.{q,k,v,out}_proj``
``model.spatial_embed.attention.ln``            ``connector.dem.attention.norm``
``model.spatial_embed.ffn_crop.{0,2}``          ``connector.fusion.local_mlp.{0,2}``
``model.spatial_embed.ffn_stride.{0,2}``        ``connector.fusion.global_mlp.{0,2}``
``model.spatial_embed.ln_fuse``                 ``connector.fusion.norm``
==============================================  ===========================================

(the same table as :func:`hires_vlm.methods.inf_llava.official_key_map`, which this uses), plus
the LM and tower keys of :mod:`.llava`. Method: preset ``inf_llava`` (the official code: fixed
3×3 grid, shared 8-head attention, bottleneck-MLP fusion, bilinear 72→24, mean with the low-res
view); ``image_aspect_ratio`` pad → canvas ``pad_square`` (fine-tuning), square → ``center_crop``
(pre-training).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..methods import MethodConfig, resolve_method_config
from ..methods.inf_llava import official_key_map
from .checkpoint import CheckpointMismatch
from .common import ImportSpec, VisionSource
from .keymap import KeyMap
from .llava import prepare_llava_family, projector_kind, projector_rules

CANVAS = {"pad": "pad_square", "square": "center_crop"}


def inf_connector(km: KeyMap, cfg: dict, vis: VisionSource) -> None:
    projector_rules(km, projector_kind(cfg))
    for src, dst in official_key_map().items():
        if src.startswith("model.spatial_embed."):
            km.exact(src, dst)


def inf_method(cfg: dict, vis: VisionSource, tokenizer, notes: list[str]) -> MethodConfig:
    kind = projector_kind(cfg)
    merge = cfg.get("mm_patch_merge_type", "flat") or "flat"
    if merge != "flat":
        raise CheckpointMismatch(f"mm_patch_merge_type {merge!r}: INF-LLaVA's released runs use 'flat'")
    aspect = cfg.get("image_aspect_ratio", "square") or "square"
    if aspect not in CANVAS:
        raise CheckpointMismatch(f"image_aspect_ratio {aspect!r} is not one INF-LLaVA uses (pad, square)")
    g = int(vis.config.image_size) // int(vis.config.patch_size)
    if g != 24:
        notes.append(f"the tower gives {g}x{g} tokens per view; the official code hard-codes 24x24 (CLIP-L/14-336) "
                     f"— the fused map is pooled to {g}x{g} here")
    notes.append("method preset inf_llava; images are cut on the training canvas (3x3 tiles of the tower's size); "
                 "the official eval scripts feed 336-px images that the model upsamples bicubically")
    return resolve_method_config("inf_llava").replace(projector=kind, canvas=CANVAS[aspect])


def prepare_inf_llava(src: str, *, vision: str | None = None, lm_dir: str | None = None,
                      adapters: Sequence[str] = (), template: str | None = None,
                      init_missing: bool = False) -> ImportSpec:
    return prepare_llava_family("inf_llava", src, vision=vision, lm_dir=lm_dir, adapters=adapters,
                                template=template, connector=inf_connector, method=inf_method,
                                allow_missing=("connector.",) if init_missing else ())
