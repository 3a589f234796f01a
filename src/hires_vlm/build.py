"""Assemble a ``HiResVLM`` from real parts in local directories (no download).

``build_from_parts(vision_dir, lm_dir, method)`` loads a transformers vision model (a CLIP or
SigLIP checkpoint — the full dual-encoder or the vision model alone), a causal LM and its
tokenizer, adds the ``<image>`` (and, if missing, ``<pad>``) token, resizes the LM's embeddings,
creates the method's connector with fresh weights, and returns the model and processor ready for
stage-1 training. ``hires-vlm build`` is the same call.
"""

from __future__ import annotations

import json
import logging
import os

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedConfig

from . import fsio
from .imaging import CLIP_MEAN, CLIP_STD
from .methods import Dims, build_method, resolve_method_config
from .model import HiResVLM, HiResVLMConfig, HiResVLMProcessor
from .text import add_image_token, ensure_pad_token, get_template, set_chat_template
from .vision.native import is_native_config, native_tower_class

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def _require_dir(path: str, what: str) -> None:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what} directory not found: {path!r}")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{what} directory {path!r} has no config.json; give a transformers model directory")


def vision_config_of(config: PreTrainedConfig) -> PreTrainedConfig:
    """The vision part of a config: itself if it is a vision config, else its ``vision_config``."""
    if hasattr(config, "vision_config") and config.vision_config is not None:
        return config.vision_config
    if is_native_config(config):
        return config
    if not hasattr(config, "image_size") or not hasattr(config, "patch_size"):
        raise ValueError(f"{type(config).__name__} is not a vision tower config (no image_size/patch_size)")
    return config


def load_vision_tower(vision_dir: str, dtype: torch.dtype | None = None):
    """The vision model of a checkpoint, its config, and its normalisation (mean, std)."""
    _require_dir(vision_dir, "vision model")
    full = AutoConfig.from_pretrained(vision_dir)
    vcfg = vision_config_of(full)
    if is_native_config(vcfg):  # Qwen2-VL's vision model (not in AutoModel's mapping)
        model_cls = native_tower_class()
    else:
        model_cls = AutoModel._model_mapping[type(vcfg)]
    from transformers.utils import logging as hf_logging

    # A full CLIP/SigLIP checkpoint also holds the text tower: its keys are expected to go unused.
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        vision = model_cls.from_pretrained(vision_dir, config=vcfg, dtype=dtype)
    finally:
        hf_logging.set_verbosity(level)
    mean, std = list(CLIP_MEAN), list(CLIP_STD)
    pre = os.path.join(vision_dir, "preprocessor_config.json")
    if os.path.isfile(pre):
        with open(pre) as f:
            info = json.load(f)
        mean, std = list(info.get("image_mean", mean)), list(info.get("image_std", std))
    else:
        logger.warning("%s has no preprocessor_config.json; using CLIP's mean/std", vision_dir)
    return vision, vcfg, mean, std


def infer_template(tokenizer) -> str:
    """The conversation template that matches a tokenizer's own chat template."""
    tmpl = getattr(tokenizer, "chat_template", None) or ""
    if "<|start_header_id|>" in tmpl:
        return "llama3"
    if "<|im_start|>" in tmpl:
        return "chatml"
    return "vicuna_v1"


def build_from_parts(vision_dir: str, lm_dir: str, method="llava_hd", *, template: str | None = None,
                     vision_feature_layer: int = -2, max_length: int | None = None,
                     dtype: str | torch.dtype | None = None, seed: int = 0, image_resampler: str = "pillow"):
    """Load the parts, add the image token, create the connector; returns (model, processor)."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not supported; choose one of {sorted(DTYPES)}")
        dtype = DTYPES[dtype]
    method_cfg = resolve_method_config(method)
    vision, vcfg, mean, std = load_vision_tower(vision_dir, dtype)
    native = method_cfg.imaging_spec(14, mean, std).is_native
    if native != is_native_config(vcfg):
        kind = "a native-resolution tower (a Qwen2-VL vision model)" if native else "a CLIP/SigLIP-style tower"
        raise ValueError(f"method {method_cfg.name!r} needs {kind}, but {vision_dir!r} holds a "
                         f"{type(vcfg).__name__} ({'native resolution' if is_native_config(vcfg) else 'fixed S×S views'})"
                         "; choose a matching method or vision model")
    _require_dir(lm_dir, "language model")
    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    method_cfg = method_cfg.bind_tokenizer(tokenizer)  # e.g. SliME's separator: the id of ','
    lm = AutoModelForCausalLM.from_pretrained(lm_dir, dtype=dtype)
    template = template or infer_template(tokenizer)
    get_template(template)
    ensure_pad_token(tokenizer)
    image_id = add_image_token(tokenizer)
    if len(tokenizer) > lm.get_input_embeddings().weight.shape[0]:
        lm.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    if getattr(tokenizer, "chat_template", None) is None:
        set_chat_template(tokenizer, template)
    if max_length is None:
        max_length = int(getattr(lm.config, "max_position_embeddings", 4096) or 4096)
    config = HiResVLMConfig(
        vision_config=vcfg.to_dict(), text_config=lm.config.to_dict(), method=method_cfg.to_dict(),
        image_token_id=image_id, vision_feature_layer=vision_feature_layer, image_mean=mean, image_std=std,
        image_resampler=image_resampler, max_length=max_length, template=template,
    )
    with torch.device("meta"):
        model = HiResVLM(config)
    if native:
        vision.merger = torch.nn.Identity()  # the 2×2 merge is the connector's (methods/qwen2vl.py)
    model.vision_tower.model = vision
    model.vision_tower.requires_grad_(False)
    model.language_model = lm
    torch.manual_seed(seed)
    dims = Dims(vision_dim=model.vision_tower.hidden_size, text_dim=lm.config.hidden_size,
                tile_size=model.vision_tower.tile_size, grid=model.vision_tower.grid)
    model.connector = build_method(method_cfg, dims)
    for module in model.connector.modules():
        model._init_weights(module)
    if dtype is not None:
        model.connector.to(dtype)
    model.config.text_config = lm.config
    model.config.vision_config = vcfg
    lm.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, HiResVLMProcessor(tokenizer, config)


def build_and_save(vision_dir: str, lm_dir: str, method, out_dir: str, overwrite: bool = False, **kwargs) -> str:
    """``build_from_parts`` then save model + processor atomically into ``out_dir``.

    An existing, non-empty ``out_dir`` is refused unless ``overwrite``; it is checked before the
    (slow) build starts.
    """
    fsio.refuse_occupied(out_dir, overwrite)
    model, processor = build_from_parts(vision_dir, lm_dir, method, **kwargs)
    with fsio.staged_dir(out_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return out_dir
