"""``HiResVLMProcessor``: tokenizer + image processor + conversation template of one model.

A transformers ``ProcessorMixin`` (attributes ``image_processor`` — a
:class:`~hires_vlm.model.image_processing.HiResVLMImageProcessor` — and ``tokenizer``), saved and
loaded the transformers way: ``processor_config.json`` (the image processor's config nested, the
template, the method, the tower's patch size), ``chat_template.jinja`` (the model's conversation
template) and the tokenizer's files. Directories written by earlier versions
(a ``processor_config.json`` of ``template`` / ``imaging`` / ``method`` only) are rebuilt from their
``config.json`` as those versions did.

Two ways to give text, both left-padded for generation, any number of images per prompt:

* ``processor(prompts, images, system=...)`` — one-turn user prompts, wrapped in the model's
  template turn by turn (the token ids the model was trained on); ``images`` holds one entry per
  prompt (an image, a list of images or ``None``); a prompt without ``<image>`` gets one per image
  in front.
* ``processor(images=..., text=...)`` — transformers' form: the text is tokenised as written (e.g.
  the string ``apply_chat_template`` renders); ``images`` is flat (shared out over the prompts in
  placeholder order) or nested (one list per prompt).

``apply_chat_template(messages, add_generation_prompt=True, tokenize=True)`` encodes HF/OpenAI-style
messages turn by turn like the first form, so it gives the training-time ids even for templates
(``vicuna_v1``) whose markers a whole-string tokenisation would merge with the text around them.
Placeholders are expanded in the model, not here (SliME's router makes their count depend on the text).
"""

from __future__ import annotations

import dataclasses
import json
import os

from transformers import AutoTokenizer, PreTrainedConfig, ProcessorMixin
from transformers.feature_extraction_utils import BatchFeature
from transformers.utils import logging

from ..imaging import ImagingSpec
from ..methods import resolve_method_config
from ..text import (
    IMAGE_PLACEHOLDER,
    ConversationEncoder,
    ConversationError,
    add_image_token,
    chat_template_jinja,
    ensure_pad_token,
    get_template,
)
from .configuration import HiResVLMConfig
from .image_processing import HiResVLMImageProcessor, flatten_images

logger = logging.get_logger(__name__)

PROCESSOR_FILE = "processor_config.json"
IMAGE_PROCESSOR_FILE = "preprocessor_config.json"
_IMAGE_PART_KEYS = ("image", "url", "path", "base64")


def imaging_spec_for(config: HiResVLMConfig) -> ImagingSpec:
    """The cut a model config implies: its method's views at the tower's size, its normalisation and resampler."""
    from ..vision.native import tower_tile_size

    spec = resolve_method_config(config.method).imaging_spec(tower_tile_size(config.vision_config), config.image_mean,
                                                            config.image_std)
    return dataclasses.replace(spec, resampler=config.image_resampler)


def _is_image_like(x) -> bool:
    if isinstance(x, (list, tuple)):
        return any(_is_image_like(v) for v in x if v is not None)
    return x is not None and not isinstance(x, (str, dict)) and (hasattr(x, "size") or hasattr(x, "__array__"))


def _part_text(part: dict) -> str:
    kind = part.get("type")
    if kind in ("image", "image_url"):
        return IMAGE_PLACEHOLDER
    if kind == "text":
        return part.get("text", "")
    raise ValueError(f"message part of type {kind!r} is not supported; hires-vlm models read 'text' and 'image' parts")


def _part_images(part: dict) -> list:
    if part.get("type") == "image_url":
        url = part.get("image_url")
        return [url.get("url") if isinstance(url, dict) else url]
    if part.get("type") == "image":
        return [part[k] for k in _IMAGE_PART_KEYS if k in part]
    return []


def _messages_to_turns(messages: list[dict]) -> tuple[list[dict], list]:
    """HF/OpenAI chat messages → the encoder's ``[{"role", "content": str}]`` and the images in order."""
    turns, images = [], []
    for m in messages:
        content = m.get("content")
        if isinstance(content, (list, tuple)):
            images += [im for p in content for im in _part_images(p)]
            content = "".join(_part_text(p) for p in content)
        turns.append({"role": m.get("role"), "content": content if content is not None else ""})
    return turns, images


class HiResVLMProcessor(ProcessorMixin):
    r"""
    Args:
        image_processor: the method's cut (:class:`HiResVLMImageProcessor`).
        tokenizer: the LM's tokenizer (``<image>`` is added as a special token when missing).
        chat_template: the Jinja chat template; default: the one rendering ``template``.
        template: the conversation template the model is trained with (``plain``, ``vicuna_v1``, ``llama3``, ``chatml``).
        method: the method config (a dict), which says how many visual tokens an image gets at most.
        patch_size: the tower's patch size (tokens per view side = ``size // patch_size``).
        max_length: longest sequence (text + visual tokens at their upper bound) a prompt may need.

    ``HiResVLMProcessor(tokenizer, config)`` (a :class:`HiResVLMConfig`) builds all of it from a model's config.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, template: str = "vicuna_v1",
                 method: dict | None = None, patch_size: int | None = None, max_length: int | None = 2048):
        config = None
        if isinstance(tokenizer, PreTrainedConfig):  # HiResVLMProcessor(tokenizer, config)
            config, tokenizer = tokenizer, image_processor
            image_processor = HiResVLMImageProcessor.from_spec(imaging_spec_for(config))
            template, method, max_length = config.template, config.method, config.max_length
            patch_size = config.vision_config.patch_size
        if image_processor is None or tokenizer is None:
            raise ValueError("a HiResVLMProcessor needs an image processor and a tokenizer (or a tokenizer and a "
                             "HiResVLMConfig)")
        if patch_size is None:
            raise ValueError("patch_size (the vision tower's) is needed to count visual tokens")
        ensure_pad_token(tokenizer)
        image_id = add_image_token(tokenizer)
        if config is not None and config.image_token_id != image_id:
            raise ValueError(
                f"the tokenizer's <image> id is {image_id} but the model config says {config.image_token_id}; "
                "load the tokenizer saved with the model"
            )
        self.template = get_template(template)
        self.method_config = resolve_method_config(method if method is not None else "llava")
        self.patch_size = int(patch_size)
        self.max_length = max_length
        self.image_token = IMAGE_PLACEHOLDER
        self.image_token_id = image_id
        if chat_template is None:
            chat_template = chat_template_jinja(self.template)
        if getattr(tokenizer, "chat_template", None) is None:
            tokenizer.chat_template = chat_template
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        self.config: HiResVLMConfig | None = config  # the model's config, when built from it or loaded next to it
        self.encoder = ConversationEncoder(tokenizer, self.template, image_id, max_length)

    # ------------------------------------------------------------------ the cut
    @property
    def imaging_spec(self) -> ImagingSpec:
        return self.image_processor.spec

    @property
    def tile_size(self) -> int:
        return self.imaging_spec.tile_size

    @property
    def grid(self) -> int:
        """Tokens per side of one view."""
        return self.tile_size // self.patch_size

    def max_visual_tokens(self, image_size) -> int:
        return self.method_config.max_visual_tokens(self.imaging_spec.record_for(image_size), self.grid)

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        from .auto import PROCESSOR_AUTO_MAP

        return {
            "processor_class": type(self).__name__, "auto_map": dict(PROCESSOR_AUTO_MAP),
            "image_processor": self.image_processor.to_dict(), "template": self.template.name,
            "method": self.method_config.to_dict(), "patch_size": self.patch_size, "max_length": self.max_length,
            "imaging": self.imaging_spec.to_dict(),  # the resolved cut, under the key earlier versions wrote
        }

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        from .auto import IMAGE_PROCESSOR_AUTO_MAP, write_import_shims

        # The image processor goes nested into processor_config.json, as transformers 5 writes it. A separate
        # preprocessor_config.json would also make AutoVideoProcessor (which pipelines try) guess a
        # "HiResVLMVideoProcessor" from its auto_map and ask whether to run remote code.
        self.image_processor.auto_map = dict(IMAGE_PROCESSOR_AUTO_MAP)
        files = super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        write_import_shims(save_directory)
        return files

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, config: HiResVLMConfig | None = None, **kwargs):
        """transformers' loading; for a directory of an earlier version (or with ``config``), from the model config."""
        path = os.fspath(pretrained_model_name_or_path)
        if config is None and _written_before_processor_mixin(path):
            if not os.path.isfile(os.path.join(path, "config.json")):
                raise FileNotFoundError(f"{path!r} holds a processor of an earlier hires-vlm version, which is rebuilt "
                                        "from the model's config.json; that file is missing")
            config = HiResVLMConfig.from_pretrained(path)
        if config is not None:
            kwargs = {k: v for k, v in kwargs.items() if not k.startswith("_") and k != "trust_remote_code"}
            return cls(AutoTokenizer.from_pretrained(path, **kwargs), config)
        processor = super().from_pretrained(path, **kwargs)
        model_config = os.path.join(path, "config.json")
        if os.path.isfile(model_config) and _model_type(model_config) == HiResVLMConfig.model_type:
            processor.config = HiResVLMConfig.from_pretrained(path)
            if processor.config.image_token_id != processor.image_token_id:
                raise ValueError(f"{path!r}: the tokenizer's <image> id is {processor.image_token_id} but config.json "
                                 f"says {processor.config.image_token_id}; the files come from different models")
        return processor

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoProcessor"):
        """Nothing to do: ``save_pretrained`` always writes the ``auto_map`` and the import shims."""

    # ------------------------------------------------------------------ encoding
    def __call__(self, prompts=None, images=None, system: str | None = None, *, text=None, videos=None, audio=None,
                 return_tensors="pt", padding=True, padding_side: str = "left", add_special_tokens: bool = True,
                 **kwargs) -> BatchFeature:
        """Generation inputs: ``input_ids``, ``attention_mask`` and, with images, ``pixel_values`` and ``image_sizes``.

        ``prompts`` are user prompts wrapped in the template; ``text`` is tokenised as written (see the module).
        """
        if videos is not None or audio is not None:
            raise ValueError("hires-vlm models read images and text; videos and audio are not supported")
        for key in kwargs:  # as transformers' processors do (pipelines pass generation arguments here too)
            logger.warning_once(f"Keyword argument `{key}` is not a valid argument for this processor and will be "
                                "ignored.")
        if text is None and _is_image_like(prompts) and not _is_image_like(images):
            prompts, images, text = None, prompts, images  # processor(images, text): transformers' positional order
        if (prompts is None) == (text is None):
            raise ValueError("give the text once: as prompts (wrapped in the model's template) or as text= "
                             "(tokenised as written)")
        if text is not None:
            if system is not None:
                raise ValueError("system= belongs to prompts wrapped in the template; text= is tokenised as written")
            texts = [text] if isinstance(text, str) else list(text)
            per_prompt = _share_out(images, [t.count(IMAGE_PLACEHOLDER) for t in texts])
            flat = [im for ims in per_prompt for im in ims]
            batch = self.image_processor(flat) if flat else None
            rows = [list(r) for r in self.tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]]
        else:
            prompts = [prompts] if isinstance(prompts, str) else list(prompts)
            per_prompt = _per_prompt(images, prompts)
            flat = [im for ims in per_prompt for im in ims]
            batch = self.image_processor(flat) if flat else None
            counts = [self.method_config.max_visual_tokens(r, self.grid) for r in (batch.records if batch else [])]
            rows, k = [], 0
            for prompt, ims in zip(prompts, per_prompt):
                rows.append(self.encoder.encode_prompt(prompt, len(ims), counts[k:k + len(ims)], system=system))
                k += len(ims)
        return self._batch(rows, batch, return_tensors, padding, padding_side)

    def _batch(self, rows: list[list[int]], images, return_tensors, padding, padding_side: str) -> BatchFeature:
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if padding in (False, "do_not_pad"):
            if return_tensors is not None and len({len(r) for r in rows}) > 1:
                raise ValueError("prompts of different lengths cannot be stacked into tensors without padding; "
                                 "pass padding=True or return_tensors=None")
            ids, mask = rows, [[1] * len(r) for r in rows]
        elif padding in (True, "longest"):
            width, pad = max(len(r) for r in rows), self.tokenizer.pad_token_id
            fill = [width - len(r) for r in rows]
            if padding_side == "left":
                ids = [[pad] * f + r for f, r in zip(fill, rows)]
                mask = [[0] * f + [1] * len(r) for f, r in zip(fill, rows)]
            else:
                ids = [r + [pad] * f for f, r in zip(fill, rows)]
                mask = [[1] * len(r) + [0] * f for f, r in zip(fill, rows)]
        else:
            raise ValueError(f"padding={padding!r} is not supported; use True ('longest') or False")
        data = {"input_ids": ids, "attention_mask": mask}
        if images is not None:
            data["pixel_values"] = images["pixel_values"]
            data["image_sizes"] = images["image_sizes"]
        return BatchFeature(data, tensor_type=return_tensors)

    def apply_chat_template(self, conversation, chat_template=None, add_generation_prompt: bool = False,
                            tokenize: bool = False, return_dict: bool = False, **kwargs):
        """transformers' ``apply_chat_template``; tokenising a prompt for generation (``add_generation_prompt=True``,
        ``tokenize=True``, the model's own template) goes turn by turn through the conversation encoder instead,
        which gives the token ids the model was trained on."""
        conversations = conversation if conversation and isinstance(conversation[0], (list, tuple)) else [conversation]
        # What only the Jinja path knows (tools, documents, a prefilled answer, assistant masks, …) goes there.
        generic = [k for k, v in kwargs.items() if k not in ("return_tensors", "processor_kwargs") and v]
        if (not tokenize or not add_generation_prompt or chat_template is not None or generic
                or any(not c or c[-1].get("role") != "user" for c in conversations)):
            return super().apply_chat_template(conversation, chat_template=chat_template,
                                               add_generation_prompt=add_generation_prompt, tokenize=tokenize,
                                               return_dict=return_dict, **kwargs)
        options = dict(kwargs.get("processor_kwargs") or {})
        return_tensors = kwargs.get("return_tensors", options.pop("return_tensors", "pt"))
        return_tensors = "pt" if return_tensors == "auto" else return_tensors
        encoded, images = [], []
        for i, conv in enumerate(conversations):
            turns, conv_images = _messages_to_turns(conv)
            images.append(flatten_images(self.image_processor.fetch_images(conv_images)))
            encoded.append((turns, len(images[-1])))
        flat = [im for ims in images for im in ims]
        batch = self.image_processor(flat) if flat else None
        counts = [self.method_config.max_visual_tokens(r, self.grid) for r in (batch.records if batch else [])]
        rows, k = [], 0
        for i, (turns, n) in enumerate(encoded):
            try:
                rows.append(self.encoder.encode(turns, counts[k:k + n], for_generation=True).input_ids)
            except ConversationError as err:
                raise type(err)(f"conversation {i}: {err}") from None
            k += n
        out = self._batch(rows, batch, return_tensors, options.pop("padding", True),
                          options.pop("padding_side", "left"))
        for key in options:
            logger.warning_once(f"Keyword argument `{key}` is not a valid argument for this processor and will be "
                                "ignored.")
        return out if return_dict else out["input_ids"]

    # ------------------------------------------------------------------ decoding
    def batch_decode(self, ids, **kwargs) -> list[str]:
        kwargs.setdefault("skip_special_tokens", True)
        return [t.strip() for t in self.tokenizer.batch_decode(ids, **kwargs)]

    def decode(self, ids, **kwargs) -> str:
        kwargs.setdefault("skip_special_tokens", True)
        return self.tokenizer.decode(ids, **kwargs).strip()


def _per_prompt(images, prompts: list[str]) -> list[list]:
    """``images`` of the prompts form (one entry per prompt: an image, a list of images or None) → a list per prompt."""
    if images is None:
        return [[] for _ in prompts]
    if not isinstance(images, (list, tuple)):
        if len(prompts) != 1:
            raise ValueError(f"one image was given for {len(prompts)} prompts; give one entry (an image, a list of "
                             "images or None) per prompt")
        images = [images]
    if len(images) != len(prompts):
        raise ValueError(f"{len(prompts)} prompt(s) but {len(images)} image entries; give one entry (an image, a "
                         "list of images or None) per prompt")
    out = []
    for i, (prompt, entry) in enumerate(zip(prompts, images)):
        ims = flatten_images(entry)
        found = prompt.count(IMAGE_PLACEHOLDER)
        if found and found != len(ims):
            raise ValueError(f"prompt {i} has {found} {IMAGE_PLACEHOLDER!r} placeholder(s) but {len(ims)} image(s) "
                             f"were given for it")
        out.append(ims)
    return out


def _share_out(images, counts: list[int]) -> list[list]:
    """``images`` of the transformers form (flat in placeholder order, or nested per prompt) → a list per prompt."""
    if images is None:
        images = []
    elif not isinstance(images, (list, tuple)):
        images = [images]
    nested = bool(images) and all(isinstance(x, (list, tuple)) or x is None for x in images)
    if nested:
        if len(images) != len(counts):
            raise ValueError(f"{len(counts)} prompt(s) but {len(images)} lists of images; give one list per prompt")
        per_prompt = [flatten_images(x) for x in images]
    else:
        flat, per_prompt, k = flatten_images(images), [], 0
        for i, c in enumerate(counts):
            if k + c > len(flat):
                raise ValueError(f"prompt {i} has {c} {IMAGE_PLACEHOLDER!r} placeholder(s) but only {len(flat) - k} "
                                 f"image(s) are left for it ({len(flat)} given for {sum(counts)} placeholders in all)")
            per_prompt.append(flat[k:k + c])
            k += c
        if k != len(flat):
            raise ValueError(f"{len(flat)} image(s) were given but the text holds {sum(counts)} "
                             f"{IMAGE_PLACEHOLDER!r} placeholder(s) ({counts} per prompt); put one per image")
    for i, (c, ims) in enumerate(zip(counts, per_prompt)):
        if c != len(ims):
            raise ValueError(f"prompt {i} has {c} {IMAGE_PLACEHOLDER!r} placeholder(s) but {len(ims)} image(s) were "
                             "given for it")
    return per_prompt


def _model_type(config_file: str) -> str | None:
    try:
        with open(config_file, encoding="utf-8") as f:
            return json.load(f).get("model_type")
    except (OSError, ValueError):
        return None


def _written_before_processor_mixin(path: str) -> bool:
    """A local directory whose processor was saved by an earlier version (or never saved: model and tokenizer only)."""
    if not os.path.isdir(path) or os.path.isfile(os.path.join(path, IMAGE_PROCESSOR_FILE)):
        return False
    proc_file = os.path.join(path, PROCESSOR_FILE)
    if not os.path.isfile(proc_file):
        return True
    with open(proc_file, encoding="utf-8") as f:
        return "image_processor" not in json.load(f)
