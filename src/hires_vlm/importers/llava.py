"""Original LLaVA checkpoints (``llava``) and transformers' LLaVA / LLaVA-NeXT (``llava_hf``).

``llava`` — haotian-liu/LLaVA's ``LlavaLlamaForCausalLM`` (LLaVA-1.5, the LLaVA-NeXT inference
code, and the SliME / INF-LLaVA forks, which share :func:`prepare_llava_family`):

==============================================  ===========================================
source                                          ours
==============================================  ===========================================
``model.embed_tokens``, ``model.layers.*``,     ``language_model.model.*``
``model.norm``
``lm_head``                                     ``language_model.lm_head``
``model.mm_projector.{0,2}`` (``.weight``        ``connector.projector.{0,2}`` (``.0``)
when linear)
``model.image_newline`` (NeXT)                  ``connector.image_newline``
``model.vision_tower.vision_tower.*``           ``vision_tower.model.*`` (``vision_model.``
                                                dropped for transformers v5)
==============================================  ===========================================

The tower is often absent (``mm_vision_tower`` names a hub repository): it then comes from
``--vision``. Config: ``image_aspect_ratio`` pad → method ``llava`` (pad to square), anyres →
``llava_hd`` with ``image_grid_pinpoints`` — (width, height) in original LLaVA — as the grid
candidates; ``mm_patch_merge_type`` spatial_unpad → un-padding + newline, spatial → neither.

``llava_hf`` — ``LlavaForConditionalGeneration`` / ``LlavaNextForConditionalGeneration``, both
key layouts: transformers v4 (``vision_tower.vision_model.*``, ``multi_modal_projector.*``,
``language_model.model.*``, ``language_model.lm_head``, ``image_newline``) and v5
(``model.vision_tower.*``, ``model.multi_modal_projector.*``, ``model.language_model.*``,
``lm_head``, ``model.image_newline``); ``linear_1``/``linear_2`` → ``connector.projector.0``/``.2``;
pinpoints are (height, width) there and are flipped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence

from transformers import AutoConfig

from ..imaging import CLIP_MEAN, CLIP_STD, flip_pairs
from ..methods import LlavaConfig, LlavaHDConfig, MethodConfig
from .checkpoint import Checkpoint, CheckpointMismatch, open_model_dir, open_with_adapters, read_config
from .common import (
    ImportSpec,
    VisionSource,
    _normalisation,
    check_vision_width,
    generation_config_from,
    lm_config_from_llava,
    lm_rules,
    load_tokenizer,
    resolve_vision,
    rope_check,
)
from .keymap import KeyMap

FAMILY_TOWER_PREFIX = "model.vision_tower.vision_tower."
FORMATS = ("llava", "llava_hf", "slime", "inf_llava")


# ---------------------------------------------------------------------- format detection
def detect_format(cfg: dict, keys: Sequence[str]) -> str | None:
    """Which of our formats a config + tensor names look like (None: none of them)."""
    if cfg.get("model_type") == "hires_vlm":
        return "hires_vlm"
    if "vision_config" in cfg and "text_config" in cfg:
        return "llava_hf"
    if any(".spatial_embed." in k or k.startswith("spatial_embed.") for k in keys):
        return "inf_llava"
    if cfg.get("mm_projector_type") == "gated" or cfg.get("mm_resampler_type") not in (None, "identity", "spatial") \
            or any(k.startswith("model.sampler.") for k in keys):
        return "slime"
    if "mm_vision_tower" in cfg or "mm_hidden_size" in cfg or any("mm_projector" in k for k in keys):
        return "llava"
    return None


def check_format(fmt: str, src: str, cfg: dict, keys: Sequence[str]) -> None:
    found = detect_format(cfg, keys)
    if found == fmt:
        return
    if found == "hires_vlm":
        raise CheckpointMismatch(f"{src} is already a hires-vlm model directory; load it with HiResVLM.from_pretrained")
    if found is None:
        raise CheckpointMismatch(
            f"{src} does not look like a {fmt} checkpoint (no mm_vision_tower / mm_projector, no vision_config); "
            f"supported formats: {list(FORMATS)}")
    raise CheckpointMismatch(f"{src} looks like a {found} checkpoint, not {fmt}; use --format {found}")


# ---------------------------------------------------------------------- LLaVA-family (haotian) checkpoints
def projector_rules(km: KeyMap, kind: str, src: str = "model.mm_projector.", dst: str = "connector.projector.") -> None:
    """``mm_projector``: an ``nn.Linear`` itself when linear, else an ``nn.Sequential`` (0, 2, …)."""
    if kind == "linear":
        km.exact(src + "weight", dst + "0.weight")
        km.exact(src + "bias", dst + "0.bias")
    else:
        km.prefix(src, dst)


def projector_kind(cfg: dict) -> str:
    kind = cfg.get("mm_projector_type", "linear")
    if kind not in ("linear", "mlp2x_gelu", "mlp3x_gelu"):
        raise CheckpointMismatch(f"mm_projector_type {kind!r} is not supported here; "
                                 "supported: linear, mlp2x_gelu, mlp3x_gelu")
    return kind


def check_select_feature(cfg: dict) -> int:
    feature = cfg.get("mm_vision_select_feature", "patch")
    if feature != "patch":
        raise CheckpointMismatch(f"mm_vision_select_feature {feature!r} is not supported: our tower drops the "
                                 "CLS token ('patch')")
    return int(cfg.get("mm_vision_select_layer", -1))


def prepare_llava_family(fmt: str, src: str, *, vision: str | None, lm_dir: str | None,
                         adapters: Sequence[str], template: str | None,
                         connector: Callable[[KeyMap, dict, VisionSource], None],
                         method: Callable[[dict, VisionSource, object, list[str]], MethodConfig],
                         allow_missing: Sequence[str] = ()) -> ImportSpec:
    """A ``LlavaLlamaForCausalLM``-style checkpoint (full, or stage adapters over a base LM)."""
    cfg = read_config(src)
    notes: list[str] = []
    if adapters:
        if not lm_dir:
            raise ValueError("--adapter needs the base language model: give its directory with --lm-dir")
        ckpt = open_with_adapters(open_model_dir(lm_dir), adapters)
        notes.append(f"language model from {lm_dir}; adapters {[os.path.basename(a) for a in adapters]} on top")
        if any(os.path.basename(a).startswith("non_lora_trainables") for a in adapters):
            notes.append("non_lora_trainables.bin holds the non-LoRA weights only: --lm-dir must already have the "
                         "LoRA deltas merged in")
    else:
        ckpt = open_model_dir(src)
    check_format(fmt, src, cfg, ckpt.keys())
    layer = check_select_feature(cfg)
    if cfg.get("mm_use_im_start_end"):
        raise CheckpointMismatch("mm_use_im_start_end=True (<im_start>/<im_end> around the image) is not supported")
    text_config = lm_config_from_llava(cfg)
    has_tower = any(k.startswith(FAMILY_TOWER_PREFIX) for k in ckpt.keys())
    vis = resolve_vision(cfg.get("mm_vision_tower"), has_tower, vision, ckpt, notes)
    check_vision_width(cfg.get("mm_hidden_size"), vis)
    tokenizer = load_tokenizer(src, lm_dir)
    km = KeyMap()
    connector(km, cfg, vis)
    lm_rules(km, text_config)
    meth = method(cfg, vis, tokenizer, notes)
    return ImportSpec(
        fmt=fmt, src=src, ckpt=ckpt, keymap=km, tower_prefixes=[FAMILY_TOWER_PREFIX], method=meth,
        text_config=text_config, vision=vis, tokenizer=tokenizer, vision_feature_layer=layer, template=template,
        max_length=cfg.get("tokenizer_model_max_length"),
        generation_config=generation_config_from(src) or generation_config_from(lm_dir),
        allow_missing=tuple(allow_missing), notes=notes,
    )


def parse_pinpoints(pinpoints, tile: int) -> tuple[tuple[int, int], ...]:
    """Original-LLaVA pinpoints — (width, height) pixel pairs, or LLaVA-NeXT's ``"(1x1),...,(3x3)"``
    grid string — as (columns, rows) grids of ``tile``-pixel tiles."""
    if isinstance(pinpoints, str):
        found = re.findall(r"\((\d+)x(\d+)\)", pinpoints)
        if not found:
            raise CheckpointMismatch(f"image_grid_pinpoints {pinpoints!r} is not understood")
        lo, hi = (int(found[0][0]), int(found[0][1])), (int(found[-1][0]), int(found[-1][1]))
        return tuple((c, r) for c in range(lo[0], hi[0] + 1) for r in range(lo[1], hi[1] + 1))
    grids = []
    for w, h in pinpoints:
        if w % tile or h % tile:
            raise CheckpointMismatch(f"pinpoint {w}x{h} is not a multiple of the tower's {tile}-pixel input")
        grids.append((w // tile, h // tile))
    return tuple(grids)


def llava_method(cfg: dict, vis: VisionSource, tokenizer, notes: list[str]) -> MethodConfig:
    """``image_aspect_ratio`` / ``mm_patch_merge_type`` of an original LLaVA checkpoint → our method."""
    kind = projector_kind(cfg)
    aspect = cfg.get("image_aspect_ratio", "square") or "square"
    merge = cfg.get("mm_patch_merge_type", "flat") or "flat"
    tile = int(vis.config.image_size)
    if aspect in ("pad", "square"):
        if "unpad" in merge:
            raise CheckpointMismatch(f"mm_patch_merge_type {merge!r} with image_aspect_ratio {aspect!r} appends "
                                     "image_newline after the single view; that layout is not supported")
        if aspect == "square":
            notes.append("image_aspect_ratio 'square': the official code resizes the short side and centre-crops; "
                         "we pad to square instead (method llava, global_view pad)")
        return LlavaConfig(projector=kind, global_view="pad")
    if aspect != "anyres":
        raise CheckpointMismatch(f"image_aspect_ratio {aspect!r} is not supported (pad, square, anyres)")
    if merge not in ("spatial", "spatial_unpad"):
        raise CheckpointMismatch(f"mm_patch_merge_type {merge!r} is not supported with anyres "
                                 "(spatial_unpad or spatial; 'flat' orders tokens tile by tile)")
    pinpoints = cfg.get("image_grid_pinpoints")
    if not pinpoints:
        raise CheckpointMismatch("image_aspect_ratio anyres needs image_grid_pinpoints in the config")
    grids = parse_pinpoints(pinpoints, tile)
    unpad = merge == "spatial_unpad"
    if unpad:
        notes.append("un-padding uses transformers' rounding (int(round(x, 7))); original LLaVA truncates (int(x)), "
                     "which differs by one row or column only when the float product falls just below an integer")
    return LlavaHDConfig(projector=kind, grid_candidates=grids, global_view="squash", unpad=unpad, newline=unpad)


def llava_connector(km: KeyMap, cfg: dict, vis: VisionSource) -> None:
    projector_rules(km, projector_kind(cfg))
    km.exact("model.image_newline", "connector.image_newline")


def prepare_llava(src: str, *, vision: str | None = None, lm_dir: str | None = None, adapters: Sequence[str] = (),
                  template: str | None = None, init_missing: bool = False) -> ImportSpec:
    return prepare_llava_family("llava", src, vision=vision, lm_dir=lm_dir, adapters=adapters, template=template,
                                connector=llava_connector, method=llava_method,
                                allow_missing=("connector.",) if init_missing else ())


# ---------------------------------------------------------------------- transformers' LLaVA / LLaVA-NeXT
HF_TYPES = ("llava", "llava_next")


def prepare_llava_hf(src: str, *, template: str | None = None, vision: str | None = None,
                     lm_dir: str | None = None) -> ImportSpec:
    cfg = read_config(src)
    ckpt: Checkpoint = open_model_dir(src)
    check_format("llava_hf", src, cfg, ckpt.keys())
    notes: list[str] = []
    if vision:
        notes.append("--vision is ignored for llava_hf: the checkpoint holds the tower and its config")
    mtype = cfg.get("model_type")
    if mtype not in HF_TYPES:
        raise CheckpointMismatch(f"model_type {mtype!r} is not supported by llava_hf (supported: {list(HF_TYPES)})")
    hf = AutoConfig.from_pretrained(src)
    layer = cfg.get("vision_feature_layer", -2)
    if not isinstance(layer, int):
        raise CheckpointMismatch(f"vision_feature_layer {layer!r}: only one layer is supported")
    strategy = cfg.get("vision_feature_select_strategy", "default")
    if strategy != "default":
        raise CheckpointMismatch(f"vision_feature_select_strategy {strategy!r} is not supported: our tower drops "
                                 "the CLS token ('default')")
    act = cfg.get("projector_hidden_act", "gelu")
    if act != "gelu":
        raise CheckpointMismatch(f"projector_hidden_act {act!r} is not supported (gelu)")
    if cfg.get("multimodal_projector_bias", True) is False:
        raise CheckpointMismatch("multimodal_projector_bias=False is not supported (our projector has biases)")
    vcfg = hf.vision_config
    norm = _normalisation(os.path.join(src, "preprocessor_config.json"))
    mean, std = norm or (list(CLIP_MEAN), list(CLIP_STD))
    vis = VisionSource(vcfg, mean, std, None)
    tile = int(vcfg.image_size)
    if mtype == "llava":
        meth: MethodConfig = LlavaConfig(projector="mlp2x_gelu", global_view="pad")
        notes.append("transformers' CLIPImageProcessor resizes and centre-crops; we pad to square as the original "
                     "LLaVA-1.5 training did (method llava, global_view pad)")
    else:
        pins = cfg.get("image_grid_pinpoints") or hf.image_grid_pinpoints
        grids = parse_pinpoints(flip_pairs(pins), tile)  # transformers: (height, width)
        meth = LlavaHDConfig(projector="mlp2x_gelu", grid_candidates=grids, global_view="squash", unpad=True,
                             newline=True)
    tokenizer = load_tokenizer(src, lm_dir)
    image_index = cfg.get("image_token_index", cfg.get("image_token_id"))
    vocab = tokenizer.get_vocab()
    if image_index is not None and vocab.get("<image>") not in (None, image_index):
        raise CheckpointMismatch(f"the tokenizer's <image> is id {vocab['<image>']} but the config's image_token_index "
                                 f"is {image_index}")
    km = KeyMap()
    for pre in ("model.", ""):
        km.prefix(pre + "multi_modal_projector.linear_1.", "connector.projector.0.")
        km.prefix(pre + "multi_modal_projector.linear_2.", "connector.projector.2.")
        km.exact(pre + "image_newline", "connector.image_newline")
    km.verify(r"\.rotary_emb\.inv_freq$", "rotary frequencies", rope_check(hf.text_config))
    km.prefix("model.language_model.", "language_model.model.")  # v5
    km.prefix("language_model.model.", "language_model.model.")  # v4
    km.prefix("language_model.lm_head.", "language_model.lm_head.")  # v4
    km.prefix("lm_head.", "language_model.lm_head.")  # v5
    text_config = hf.text_config
    return ImportSpec(
        fmt="llava_hf", src=src, ckpt=ckpt, keymap=km, tower_prefixes=["model.vision_tower.", "vision_tower."],
        method=meth, text_config=text_config, vision=vis, tokenizer=tokenizer, vision_feature_layer=layer,
        template=template, max_length=None, generation_config=generation_config_from(src), notes=notes,
    )

