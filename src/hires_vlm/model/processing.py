"""``HiResVLMProcessor``: tokenizer + image processor + conversation template of one model.

Built from the model's config (the method decides the views, the config names the template), so
the same directory that ``HiResVLM.from_pretrained`` reads also gives its processor. Prompts are
left-padded for generation.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import torch
from PIL import Image
from transformers import AutoTokenizer

from ..imaging import HiResImageProcessor, ImagingSpec
from ..methods import resolve_method_config
from ..text import ConversationEncoder, add_image_token, ensure_pad_token, get_template, set_chat_template
from .configuration import HiResVLMConfig

PROCESSOR_FILE = "processor_config.json"


class HiResVLMProcessor:
    def __init__(self, tokenizer, config: HiResVLMConfig):
        self.tokenizer = tokenizer
        self.config = config
        ensure_pad_token(tokenizer)
        image_id = add_image_token(tokenizer)
        if config.image_token_id != image_id:
            raise ValueError(
                f"the tokenizer's <image> id is {image_id} but the model config says {config.image_token_id}; "
                "load the tokenizer saved with the model"
            )
        self.template = get_template(config.template)
        if getattr(tokenizer, "chat_template", None) is None:
            set_chat_template(tokenizer, config.template)
        self.method_config = resolve_method_config(config.method)
        vc = config.vision_config
        self.tile_size = int(vc.image_size)
        self.grid = self.tile_size // int(vc.patch_size)
        spec = self.method_config.imaging_spec(self.tile_size, config.image_mean, config.image_std)
        self.imaging_spec: ImagingSpec = dataclasses.replace(spec, resampler=config.image_resampler)
        self.image_processor = HiResImageProcessor(self.imaging_spec)
        self.encoder = ConversationEncoder(tokenizer, self.template, image_id, config.max_length)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, config: HiResVLMConfig | None = None) -> "HiResVLMProcessor":
        config = config or HiResVLMConfig.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        return cls(tokenizer, config)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        os.makedirs(path, exist_ok=True)
        self.tokenizer.save_pretrained(path)
        info = {"processor_class": type(self).__name__, "template": self.template.name,
                "imaging": self.imaging_spec.to_dict(), "method": self.method_config.to_dict()}
        tmp = os.path.join(path, PROCESSOR_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(info, f, indent=2)
        os.replace(tmp, os.path.join(path, PROCESSOR_FILE))

    def max_visual_tokens(self, image_size) -> int:
        return self.method_config.max_visual_tokens(self.imaging_spec.record_for(image_size), self.grid)

    def __call__(self, prompts: str | Sequence[str], images: Sequence[Image.Image | None] | Image.Image | None = None,
                 system: str | None = None) -> dict[str, torch.Tensor]:
        """Generation inputs for one-turn prompts (one image or none per prompt), left-padded."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if images is None or isinstance(images, Image.Image):
            images = [images] * len(prompts) if len(prompts) == 1 or images is None else None
        if images is None or len(images) != len(prompts):
            raise ValueError("give one image (or None) per prompt")
        real = [im for im in images if im is not None]
        batch = self.image_processor(real) if real else None
        rows, k = [], 0
        for prompt, im in zip(prompts, images):
            counts = []
            if im is not None:
                counts = [self.method_config.max_visual_tokens(batch.records[k], self.grid)]
                k += 1
            rows.append(self.encoder.encode_prompt(prompt, len(counts), counts, system=system))
        pad = self.tokenizer.pad_token_id
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
        out = {"input_ids": ids, "attention_mask": mask}
        if batch is not None:
            out["pixel_values"] = batch.pixel_values
            out["image_sizes"] = torch.tensor([r.image_size for r in batch.records], dtype=torch.long)
        return out

    def batch_decode(self, ids, **kwargs) -> list[str]:
        kwargs.setdefault("skip_special_tokens", True)
        texts = self.tokenizer.batch_decode(ids, **kwargs)
        return [t.strip() for t in texts]
