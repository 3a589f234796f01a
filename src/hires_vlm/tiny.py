"""The embedded default: a tiny model built from transformers configs with random weights.

A CLIP-style vision tower (S = 112 px tiles, 14 px patches → 8×8 tokens per view), a Llama-style
causal LM and a byte-level BPE tokenizer trained offline — no download. Real checkpoints go
through the same ``HiResVLM`` code (see ``hires_vlm.build``).

A native-resolution method (``qwen2vl``) gets a tiny Qwen2-VL vision tower instead (transformers'
``Qwen2VisionTransformerPretrainedModel``: 14-px patches, 2×2 merge, the same width and depth as
the CLIP one), always with random weights: the foundation's tower is a CLIP ViT with fixed
112-px tiles and cannot take an image at its own size (:data:`NATIVE_FOUNDATION_ERROR`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from transformers import CLIPVisionConfig, GenerationConfig, LlamaConfig

from .imaging import CLIP_MEAN, CLIP_STD
from .methods import MethodConfig, resolve_method_config
from .model import HiResVLM, HiResVLMConfig, HiResVLMProcessor
from .text import add_image_token, build_bpe_tokenizer, get_template, set_chat_template

TINY_TILE = 112
TINY_PATCH = 14


def tiny_vision_config(tile_size: int = TINY_TILE, patch_size: int = TINY_PATCH, hidden_size: int = 64,
                       layers: int = 2) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        image_size=tile_size, patch_size=patch_size, hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=layers, num_attention_heads=4, projection_dim=hidden_size,
    )


def tiny_native_vision_config(patch_size: int = TINY_PATCH, merge_size: int = 2, temporal_patch_size: int = 2,
                              hidden_size: int = 64, layers: int = 2):
    """A tiny Qwen2-VL vision config (embed_dim ``hidden_size``, 4 heads); the tower's own merger is not used."""
    from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig

    return Qwen2VLVisionConfig(depth=layers, embed_dim=hidden_size, hidden_size=hidden_size, mlp_ratio=2,
                               num_heads=4, patch_size=patch_size, spatial_merge_size=merge_size,
                               temporal_patch_size=temporal_patch_size)


NATIVE_FOUNDATION_ERROR = (
    "method {name!r} needs a native-resolution vision tower, but the foundation's tower is a CLIP ViT pretrained on "
    "fixed {tile}-px tiles (absolute position embeddings for one {grid}x{grid} grid): it cannot take an image at its "
    "own size with 2-D rotary positions. Build the tiny {name!r} model without a foundation (random tower: drop "
    "model.foundation / foundation=...), or first pretrain a native-resolution tower (a Qwen2-VL vision config) on "
    "the benchmark's world with the foundation builder — which ships only the CLIP tower today")


def tiny_text_config(vocab_size: int, hidden_size: int = 128, layers: int = 2, pad_token_id: int | None = None,
                     bos_token_id: int | None = None, eos_token_id: int | None = None) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=hidden_size * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096, tie_word_embeddings=False,
        pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
    )


def stop_token_ids(tokenizer, template_name: str) -> list[int]:
    """EOS plus the template's end-of-turn tokens, for ``generation_config.eos_token_id``."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for s in get_template(template_name).stop_strings:
        toks = tokenizer(s, add_special_tokens=False)["input_ids"]
        if len(toks) == 1:
            ids.add(toks[0])
    if template_name == "plain":
        ids.update(tokenizer("\n", add_special_tokens=False)["input_ids"][:1])
    return sorted(ids)


def build_tiny(method: str | dict | MethodConfig = "llava_hd", *, template: str = "chatml", seed: int = 0,
               corpus: Iterable[str] | None = None, tile_size: int = TINY_TILE, patch_size: int = TINY_PATCH,
               vision_hidden: int = 64, vision_layers: int = 2, text_hidden: int = 128, text_layers: int = 2,
               max_length: int = 2048, vocab_size: int = 1024,
               image_resampler: str = "pillow", foundation: str | None = None) -> tuple[HiResVLM, HiResVLMProcessor]:
    """A tiny model of ``method`` and its processor; deterministic for a seed.

    Without ``foundation`` every weight is random (the from-scratch regime). With it (a foundation
    directory, or ``"shipped"`` for the packaged one) the tower, the LM and the tokenizer are the
    foundation's and only the connector is new; the sizes are the foundation's.
    """
    found = None
    method_cfg = resolve_method_config(method)
    native = method_cfg.imaging_spec(tile_size, CLIP_MEAN, CLIP_STD).is_native
    if native and foundation is not None:
        raise ValueError(NATIVE_FOUNDATION_ERROR.format(name=method_cfg.name, tile=TINY_TILE,
                                                        grid=TINY_TILE // TINY_PATCH))
    if native and patch_size != method_cfg.patch_size:
        raise ValueError(f"patch_size={patch_size} differs from method {method_cfg.name!r}'s patch_size="
                         f"{method_cfg.patch_size}; set the method's (its tower is built from it)")
    if foundation is not None:
        from .foundation import load_foundation

        found = load_foundation(foundation)
        sz = found.sizes
        tile_size, patch_size = sz["tile_size"], sz["patch_size"]
        vision_hidden, vision_layers = sz["vision_hidden"], sz["vision_layers"]
        text_hidden, text_layers = sz["text_hidden"], sz["text_layers"]
        tokenizer = found.tokenizer()
        set_chat_template(tokenizer, template)
    else:
        tokenizer = build_bpe_tokenizer(corpus, vocab_size=vocab_size, template=template)
    image_id = add_image_token(tokenizer)
    method_cfg = method_cfg.bind_tokenizer(tokenizer)
    torch.manual_seed(seed)
    if native:
        vision = tiny_native_vision_config(method_cfg.patch_size, method_cfg.merge_size,
                                           method_cfg.temporal_patch_size, vision_hidden, vision_layers)
    else:
        vision = tiny_vision_config(tile_size, patch_size, vision_hidden, vision_layers)
    config = HiResVLMConfig(
        vision_config=vision.to_dict(), vision_feature_layer=-1 if native else -2,
        text_config=tiny_text_config(len(tokenizer), text_hidden, text_layers, tokenizer.pad_token_id,
                                     tokenizer.bos_token_id, tokenizer.eos_token_id).to_dict(),
        method=method_cfg.to_dict(), image_token_id=image_id, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD),
        image_resampler=image_resampler, max_length=max_length, template=template,
    )
    model = HiResVLM(config)
    if found is not None:
        from .foundation import apply_foundation

        apply_foundation(model, found)
    model.language_model.generation_config = GenerationConfig(
        eos_token_id=stop_token_ids(tokenizer, template), pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, max_new_tokens=32, do_sample=False,
    )
    return model, HiResVLMProcessor(tokenizer, config)
