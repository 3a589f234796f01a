"""SliME checkpoints (github yfzhang114/SliME): ``LlavaLlamaForCausalLM`` with ``mm_projector_type: gated``.

Key names, from the official ``multimodal_projector/builder.py::GatedBlock``,
``multimodal_resampler/{builder,sampler}.py`` (``TextGuidedSampler``, ``Resampler``) and
``llava_arch.py`` (``self.mm_projector``, ``self.sampler``):

==============================================  ===========================================
source                                          ours
==============================================  ===========================================
``model.mm_projector.projection.{0,2}``         ``connector.projector.{0,2}`` (shared MLP)
``model.mm_projector.attn.query``, ``.attn.*``  ``connector.mixture.resampler.query``, ``.attn.*``
(``nn.MultiheadAttention``: ``in_proj_*``,
``out_proj.*``), ``.ln_q``, ``.ln_kv``,
``.ln_post``
``model.mm_projector.w_gate``, ``.w_noise``     ``connector.mixture.gate.w_gate``, ``.w_noise``
``model.sampler.post_qformer.*``                ``connector.local_compressor.*``
``*.pos_embed`` (fixed 2-D sin-cos, fp16)       ``*.pos_table``: checked against the 2-D sin-cos
                                                table, then kept as stored (``pos_embed="checkpoint"``,
                                                the official numbers) or recomputed in float32
                                                (``"recompute"``); an all-NaN table (the official
                                                "init error" branch rebuilds it) is recomputed
``model.mm_projector.mean``, ``.std``           constant buffers (0, 1) of the unused load
                                                estimate: checked, not stored
==============================================  ===========================================

plus the LM and tower keys of :mod:`.llava`. ``GatedBlock.expert_ffn`` is a plain list, so it has
no keys of its own; ``kv_proj`` and ``proj`` are identities (kv_dim = embed_dim, no post
projection). The learnable ``qformer`` router (``model.sampler.selector.*``) is refused.

Config → method (preset ``slime-release`` by default, ``slime`` with ``router="head"``):
``mm_resampler_dim`` → ``local_queries``, ``mm_resampler_topp`` → ``gamma``,
``mm_resampler_temp`` → ``router_temperature``, ``seperator`` (sic) → ``separator_token_id``,
``mm_learnable_gated`` −1/0/1 → ``gate_mode`` mix/mlp/resampler, ``use_global_only`` /
``use_local_only`` → ``branches``; heads = ``mm_hidden_size // 128`` as the official code.

Which router preset: the official code until 8 Nov 2024 applied an extra ``softmax(·/0.5)``
before the router noise (``router_pre_softmax=0.5``, preset ``slime-release``); HEAD does not
(preset ``slime``). The released checkpoints (June 2024) were trained before that change, so
``slime-release`` is the default.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..connectors import sincos_2d
from ..methods import MethodConfig, resolve_method_config
from .checkpoint import CheckpointMismatch
from .common import ImportSpec, VisionSource
from .keymap import KeyMap, close_to
from .llava import prepare_llava_family

ROUTER_PRESETS = {"release": "slime-release", "head": "slime"}
POS_EMBED_ATOL = 1e-2  # the official table is stored in fp16 (bf16 after a bf16 save)
PROJ = "model.mm_projector."
SAMPLER = "model.sampler."


POS_EMBED_MODES = ("checkpoint", "recompute")


def pos_table(dim: int, grid: int, what: str, mode: str = "checkpoint"):
    """The transform of an official ``pos_embed`` (a frozen parameter) into our ``pos_table`` buffer.

    The table must be the 2-D sin-cos table of the grid (within fp16 storage error); ``checkpoint``
    keeps its stored values — the numbers the official forward adds, so outputs match it, where a
    float32 recomputation moves them by ≈ 2e-4 relative — and ``recompute`` uses ours. A table with
    NaN is accepted and recomputed: the official forward then rebuilds it (its "init error" branch).
    """
    if mode not in POS_EMBED_MODES:
        raise ValueError(f"pos_embed={mode!r} is not valid; choose one of {list(POS_EMBED_MODES)}")
    expected = sincos_2d(dim, grid)
    strict = close_to(expected, POS_EMBED_ATOL, what=f"the {grid}x{grid} 2-D sin-cos table")

    def transform(t: torch.Tensor) -> torch.Tensor:
        if tuple(t.shape) == tuple(expected.shape) and torch.isnan(t.float()).any():
            return expected
        problem = strict(t)
        if problem:
            raise CheckpointMismatch(f"({what}): {problem}")
        return t if mode == "checkpoint" else expected

    return transform


def constant_check(value: float):
    def check(t: torch.Tensor) -> str | None:
        if t.numel() != 1 or float(t.float().reshape(-1)[0]) != value:
            return f"expected the constant [{value}]"
        return None

    return check


def _grid_of(queries: int, what: str) -> int:
    g = math.isqrt(int(queries))
    if g * g != int(queries):
        raise CheckpointMismatch(f"{what}={queries} is not a square number")
    return g


def slime_connector(km: KeyMap, cfg: dict, vis: VisionSource, pos_embed: str = "checkpoint") -> None:
    dv = int(vis.config.hidden_size)
    g = int(vis.config.image_size) // int(vis.config.patch_size)
    q = _grid_of(cfg.get("mm_resampler_dim", 144), "mm_resampler_dim")
    km.exact(PROJ + "attn.pos_embed", "connector.mixture.resampler.pos_table", pos_table(dv, g, "global expert's fixed position table",
                                                                                   pos_embed))
    km.verify("^" + PROJ + r"mean$", "unused gating buffer", constant_check(0.0))
    km.verify("^" + PROJ + r"std$", "unused gating buffer", constant_check(1.0))
    km.prefix(PROJ + "projection.", "connector.projector.")
    km.prefix(PROJ + "attn.", "connector.mixture.resampler.")
    km.exact(PROJ + "w_gate", "connector.mixture.gate.w_gate")
    km.exact(PROJ + "w_noise", "connector.mixture.gate.w_noise")
    km.exact(SAMPLER + "post_qformer.pos_embed", "connector.local_compressor.pos_table",
             pos_table(dv, q, "local compressor's fixed position table", pos_embed))
    km.prefix(SAMPLER + "post_qformer.", "connector.local_compressor.")
    km.refuse("^" + SAMPLER + r"selector\.", "the learnable 'qformer' router is not supported (SliME's models use "
              "mm_resampler_type 'cosine', which has no parameters)")


def slime_method(router: str):
    if router not in ROUTER_PRESETS:
        raise ValueError(f"router {router!r} is not valid; choose one of {sorted(ROUTER_PRESETS)}")

    def method(cfg: dict, vis: VisionSource, tokenizer, notes: list[str]) -> MethodConfig:
        problems = []
        if cfg.get("mm_projector_type") != "gated":
            problems.append(f"mm_projector_type {cfg.get('mm_projector_type')!r} (SliME's mixture is 'gated')")
        if cfg.get("mm_resampler_type") != "cosine":
            problems.append(f"mm_resampler_type {cfg.get('mm_resampler_type')!r} (supported: 'cosine')")
        if cfg.get("image_aspect_ratio") != "anyres":
            problems.append(f"image_aspect_ratio {cfg.get('image_aspect_ratio')!r} (SliME slices with 'anyres')")
        if cfg.get("mm_patch_merge_type", "spatial") != "spatial":
            problems.append(f"mm_patch_merge_type {cfg.get('mm_patch_merge_type')!r} (supported: 'spatial', one "
                            "raster over the whole grid)")
        if problems:
            raise CheckpointMismatch("not a SliME configuration we can reproduce: " + "; ".join(problems))
        dv = int(vis.config.hidden_size)
        g = int(vis.config.image_size) // int(vis.config.patch_size)
        heads = dv // 128
        if heads < 1:
            raise CheckpointMismatch(f"the official resampler has mm_hidden_size // 128 heads, 0 for a {dv}-d tower")
        if g * g != 576:
            notes.append(f"the tower gives {g}x{g} tokens per view; the official GatedBlock mixes only views of 576 "
                         "tokens (24x24) — the mixture is built for this tower's grid")
        gated = int(cfg.get("mm_learnable_gated", -1))
        gate_mode = {-1: "mix", 0: "mlp", 1: "resampler"}.get(gated)
        if gate_mode is None:
            raise CheckpointMismatch(f"mm_learnable_gated {gated} is not valid (−1, 0 or 1)")
        if cfg.get("use_global_only") and cfg.get("use_local_only"):
            raise CheckpointMismatch("use_global_only and use_local_only are both set")
        branches = "global" if cfg.get("use_global_only") else "local" if cfg.get("use_local_only") else "both"
        sep = int(cfg.get("seperator", 1919))  # the official fallback id when the config has none
        if sep >= max(len(tokenizer), int(cfg.get("vocab_size", 0))):
            raise CheckpointMismatch(f"seperator={sep} (the separator's token id) is outside the vocabulary")
        preset = ROUTER_PRESETS[router]
        notes.append(f"method preset {preset} (router={router}: "
                     + ("extra softmax(·/0.5) before the router noise, as the code the June 2024 checkpoints were "
                        "trained with)" if router == "release" else "router of the code at HEAD, after Nov 2024)"))
        base = resolve_method_config(preset)
        return base.replace(
            projector="mlp2x_gelu", resampler_heads=heads, local_queries=int(cfg.get("mm_resampler_dim", 144)),
            gamma=float(cfg.get("mm_resampler_topp", 0.95)), router_temperature=float(cfg.get("mm_resampler_temp", 1.0)),
            separator="token", separator_token_id=sep, gate_mode=gate_mode, branches=branches,
        )

    return method


def prepare_slime(src: str, *, vision: str | None = None, lm_dir: str | None = None, adapters: Sequence[str] = (),
                  template: str | None = None, router: str = "release", init_missing: bool = False,
                  pos_embed: str = "checkpoint") -> ImportSpec:
    if pos_embed not in POS_EMBED_MODES:
        raise ValueError(f"pos_embed={pos_embed!r} is not valid; choose one of {list(POS_EMBED_MODES)}")

    def connector(km, cfg, vis):
        slime_connector(km, cfg, vis, pos_embed)

    return prepare_llava_family("slime", src, vision=vision, lm_dir=lm_dir, adapters=adapters, template=template,
                                connector=connector, method=slime_method(router),
                                allow_missing=("connector.",) if init_missing else ())
