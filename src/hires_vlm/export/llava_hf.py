"""The ``llava_hf`` format: a ``llava`` or ``llava_hd`` model in transformers' own LLaVA layouts.

``llava`` becomes ``LlavaForConditionalGeneration`` with a ``LlavaProcessor`` (image processor
``LlavaImageProcessorPil``, which pads to a square with the mean colour as LLaVA-1.5 does);
``llava_hd`` becomes ``LlavaNextForConditionalGeneration`` with a ``LlavaNextProcessor``
(``LlavaNextImageProcessorPil``). Those are the classes vLLM, SGLang and TGI serve. Every other
method is refused by :func:`check_exportable`, naming what has no equivalent there.

What is mapped, and why it agrees:

* **weights** — ``vision_tower.model.*`` → ``model.vision_tower.*`` (the same ``AutoModel`` class on
  both sides), ``connector.projector.{0,2}`` → ``model.multi_modal_projector.linear_{1,2}`` (our GELU
  is transformers' ``"gelu"``), ``connector.image_newline`` → ``model.image_newline``, the LM's base
  model → ``model.language_model.*`` and its output embedding → ``lm_head.weight``: the modules of
  transformers 5. The files carry the names of the ``llava-hf`` Hub checkpoints
  (``vision_tower.vision_model.*``, ``language_model.model.*``, ``language_model.lm_head.weight``,
  ``multi_modal_projector.*``, ``image_newline``), which every LLaVA loader reads (``hub_layout``).
* **grid** — our ``grid_candidates`` are (columns, rows) in tiles; transformers' pinpoints are
  (height, width) in pixels, so candidate (c, r) is written ``[r·S, c·S]``, in the same order.
  ``select_best_resolution`` is symmetric in the two axes and breaks exact ties by list order, so
  both sides pick the same grid for every size (``tests/export`` checks thousands of sizes).
* **views** — both resize keeping aspect with ``ceil`` into the canvas, centre-pad black
  (``(canvas − size) // 2`` before), cut tiles row-major and put the squashed global view first;
  both un-pad the token map with ``int(round(x, 7))`` and add the newline after every row.
* **features** — ``vision_feature_layer`` is ours; ``vision_feature_select_strategy`` is
  ``"default"`` when the tower has a CLS token (we drop it) and ``"full"`` when it has none, found by
  running the tower once; the processor's ``num_additional_image_tokens`` follows.
* **pixels** — mean/std are ours, resampling is bicubic; ``pillow`` models get the PIL-backed image
  processors, whose pixels are ours to float rounding (≤ 5e-7 after normalisation).

Differences that cannot be mapped (the export report lists them):

* transformers picks the image processor's backend when it loads it, torchvision when installed,
  whatever the saved class: a ``pillow`` model then sees pixels 1–2 grey levels off (load the image
  processor with ``backend="pil"`` to get ours), a ``torch`` model sees its own pixels only there.
* our processor applies the EXIF orientation of an image given as a ``PIL.Image``; transformers
  does only when it opens the file itself. Images longer than 8192 px are reduced first by us
  (``imaging.ops.MAX_WORKING_SIDE``), not by transformers. 16-bit greyscale is rescaled by us,
  clipped by Pillow's ``convert``.
* our conversation encoder tokenises the template's pieces one by one, transformers the rendered
  chat template as one string; the ids agree when the pieces meet at special tokens (``chatml``,
  ``llama3``) and may differ at a space (``vicuna_v1``); the self-test compares them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from ..methods import MethodConfig, resolve_method_config
from .hub_layout import hub_name, tower_level

FORMAT = "llava_hf"

#: our method → transformers' model, processor and image processor classes. The image processor is
#: built and saved with its PIL backend; transformers picks the backend again when it loads it.
ARCHITECTURES = {
    "llava": ("LlavaForConditionalGeneration", "LlavaProcessor", "LlavaImageProcessor"),
    "llava_hd": ("LlavaNextForConditionalGeneration", "LlavaNextProcessor", "LlavaNextImageProcessor"),
}

#: why the other methods have no export: no such architecture in transformers or the serving engines.
REFUSED_METHODS = {
    "slime": "SliME's connector — a noisy-gated mixture of an MLP and a query-former adapter on the global view, "
             "a query-former compressor on the local tiles, and a text-guided router whose kept tokens (and so the "
             "sequence length) depend on the prompt — has no architecture in transformers, vLLM, SGLang or TGI",
    "inf_llava": "INF-LLaVA's dual-perspective cropping (contiguous and strided tiles) and dual-perspective enhancement "
                 "(windowed cross-attention between the two maps, fusion, pooling) have no architecture in "
                 "transformers, vLLM, SGLang or TGI",
    "monkey": "the monkey baseline compresses global and local tokens with learnable-query resamplers, which no "
              "LLaVA architecture of transformers, vLLM, SGLang or TGI has",
}


class ExportRefused(ValueError):
    """The model cannot be written in the requested format; the message says why."""


# ---------------------------------------------------------------------- what can be exported
def check_exportable(method: str | dict | MethodConfig) -> MethodConfig:
    """The method's config if transformers has its architecture; else :class:`ExportRefused` naming why."""
    cfg = resolve_method_config(method)
    if cfg.name in REFUSED_METHODS:
        raise ExportRefused(f"method {cfg.name!r} cannot be exported as {FORMAT}: {REFUSED_METHODS[cfg.name]}. "
                            f"Only {sorted(ARCHITECTURES)} models can; serve this one with hires-vlm itself")
    if cfg.name not in ARCHITECTURES:
        raise ExportRefused(f"method {cfg.name!r} has no {FORMAT} equivalent; only {sorted(ARCHITECTURES)} can be exported")
    reasons = []
    if cfg.projector != "mlp2x_gelu":
        reasons.append(f"projector={cfg.projector!r} (transformers' multi_modal_projector is Linear → GELU → Linear, "
                       "our 'mlp2x_gelu')")
    if cfg.name == "llava_hd":
        if cfg.global_view != "squash":
            reasons.append("global_view='pad' (LlavaNextImageProcessor always squashes the base image)")
        if not cfg.unpad:
            reasons.append("unpad=False (LlavaNextModel always un-pads the tile map)")
        if not cfg.newline:
            reasons.append("newline=False (LlavaNextModel always adds image_newline after each row)")
    if reasons:
        raise ExportRefused(f"this {cfg.name} variant has no LlavaNext/Llava equivalent: {'; '.join(reasons)}")
    return cfg


# ---------------------------------------------------------------------- weights
@dataclass
class WeightRule:
    """Source names ``source + rest`` become ``target + rest`` (``exact``: the whole name)."""

    source: str
    target: str  # the name in transformers 5's modules
    exact: bool = False
    count: int = 0
    level: str = ""  # the tower level the Hub layout adds (see ``hub_layout``)

    def apply(self, name: str) -> str | None:
        if self.exact:
            return self.target if name == self.source else None
        return self.target + name[len(self.source):] if name.startswith(self.source) else None

    def to_dict(self) -> dict:
        return {"from": self.source, "to": self.target, "file": hub_name(self.target, self.level),
                "tensors": self.count}


def weight_rules(model) -> list[WeightRule]:
    """The renaming of ``model``'s state dict into transformers' Llava / LlavaNext names."""
    lm = model.language_model
    prefix = lm.base_model_prefix
    if not isinstance(getattr(lm, prefix, None), torch.nn.Module):
        raise ExportRefused(f"the language model {type(lm).__name__} has no base model under {prefix!r}")
    head = lm.get_output_embeddings()
    head_name = next((n for n, m in lm.named_modules() if m is head), None)
    if head_name is None or getattr(head, "bias", None) is not None:
        raise ExportRefused("the language model's output layer is missing or has a bias; transformers' Llava "
                            "lm_head is a Linear without bias")
    rules = [
        WeightRule("vision_tower.model.", "model.vision_tower.", level=tower_level(model.vision_tower.model)),
        WeightRule(f"language_model.{prefix}.", "model.language_model."),
        WeightRule(f"language_model.{head_name}.weight", "lm_head.weight", exact=True),
        WeightRule("connector.projector.0.", "model.multi_modal_projector.linear_1."),
        WeightRule("connector.projector.2.", "model.multi_modal_projector.linear_2."),
    ]
    if model.connector.cfg.name == "llava_hd":
        rules.append(WeightRule("connector.image_newline", "model.image_newline", exact=True))
    return rules


def map_state_dict(model) -> tuple[dict[str, torch.Tensor], list[WeightRule]]:
    """``(transformers state dict, rules with counts)``; a tensor no rule takes is refused by name."""
    rules = weight_rules(model)
    out: dict[str, torch.Tensor] = {}
    unmapped = []
    for name, tensor in model.state_dict().items():
        for rule in rules:
            target = rule.apply(name)
            if target is not None:
                out[target] = tensor
                rule.count += 1
                break
        else:
            unmapped.append(name)
    if unmapped:
        raise ExportRefused(f"{len(unmapped)} tensor(s) have no place in the transformers layout: {unmapped[:5]}")
    return out, rules


# ---------------------------------------------------------------------- config and processor
def grid_pinpoints(grid_candidates, tile_size: int) -> list[list[int]]:
    """Our (columns, rows) tile grids → transformers' ``image_grid_pinpoints``, (height, width) in pixels."""
    return [[int(rows) * tile_size, int(cols) * tile_size] for cols, rows in grid_candidates]


def feature_select_strategy(model) -> str:
    """``"default"`` if the tower emits a CLS token before its patch tokens (we drop it), ``"full"`` if not."""
    tower = model.vision_tower
    param = next(tower.model.parameters())
    with torch.no_grad():
        probe = torch.zeros(1, 3, tower.tile_size, tower.tile_size, dtype=param.dtype, device=param.device)
        tokens = tower.model(pixel_values=probe).last_hidden_state.shape[1]
    extra = tokens - tower.num_tokens
    if extra not in (0, 1):
        raise ExportRefused(f"the vision tower emits {extra} extra tokens; LLaVA layouts know 0 (full) or 1 (CLS)")
    return "default" if extra == 1 else "full"


@dataclass
class LlavaHFPlan:
    """Everything the export writes, decided from the model alone."""

    method: MethodConfig
    architecture: str
    processor_class: str
    image_processor_class: str
    config_fields: dict
    image_processor_kwargs: dict
    processor_kwargs: dict
    differences: list[str] = field(default_factory=list)
    tower_level: str = ""  # what the Hub layout adds above the tower's names (``hub_layout``)

    def to_dict(self) -> dict:
        return {"architecture": self.architecture, "processor_class": self.processor_class,
                "image_processor_class": self.image_processor_class, "config": self.config_fields,
                "image_processor": self.image_processor_kwargs, "processor": self.processor_kwargs,
                "differences": self.differences}


def plan_export(model) -> LlavaHFPlan:
    """Map a loaded ``HiResVLM`` onto transformers' config, image processor and processor fields."""
    cfg = check_exportable(model.config.method)
    arch, proc_cls, image_cls = ARCHITECTURES[cfg.name]
    vc, tc = model.config.vision_config, model.config.text_config
    s, patch = int(vc.image_size), int(vc.patch_size)
    strategy = feature_select_strategy(model)
    fields = {
        "image_token_index": int(model.config.image_token_id),
        "projector_hidden_act": "gelu",
        "multimodal_projector_bias": True,
        "vision_feature_layer": int(model.config.vision_feature_layer),
        "vision_feature_select_strategy": strategy,
        "image_seq_length": (s // patch) ** 2,
        "tie_word_embeddings": bool(getattr(tc, "tie_word_embeddings", False)),
    }
    image_kwargs = {
        "size": {"height": s, "width": s}, "crop_size": {"height": s, "width": s}, "do_center_crop": False,
        "resample": 3,  # PIL.Image.BICUBIC, as our processor
        "image_mean": list(model.config.image_mean), "image_std": list(model.config.image_std),
        "do_convert_rgb": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
    }
    if cfg.name == "llava_hd":
        fields["image_grid_pinpoints"] = grid_pinpoints(cfg.grid_candidates, s)
        image_kwargs.update(image_grid_pinpoints=fields["image_grid_pinpoints"], do_pad=True)
    else:  # pad: LLaVA-1.5's expand2square with int(mean·255); squash: a plain resize to S×S
        image_kwargs["do_pad"] = cfg.global_view == "pad"
    processor_kwargs = {"patch_size": patch, "vision_feature_select_strategy": strategy, "image_token": "<image>",
                        "num_additional_image_tokens": 1 if strategy == "default" else 0}
    resampler = model.config.image_resampler
    backend = "pil" if resampler == "pillow" else "torchvision"
    differences = [
        (f"image resampler {resampler!r}: transformers chooses the image processor's backend when it loads it "
         "(torchvision if installed, else PIL). The PIL backend's pixels are those of our 'pillow' resampler, the "
         "torchvision backend's those of our 'torch' resampler; the other pairing differs by 1-2 grey levels. "
         f"AutoImageProcessor.from_pretrained(out, backend={backend!r}) gives this model's pixels"),
        ("EXIF orientation: our processor applies it to every image; transformers only to files it opens itself "
         "(a path or URL in the chat message), not to a PIL image handed to it"),
        "images longer than 8192 px are reduced (aspect kept) before the cut by our processor, not by transformers",
        ("prompt text: our encoder tokenises template pieces separately, transformers the rendered chat template "
         "whole; identical where pieces meet at special tokens (chatml, llama3), checked by the self-test"),
        (f"sequence length: our model refuses sequences over max_length={model.config.max_length} tokens after image "
         "expansion; transformers does not check (give the server a max model length)"),
    ]
    return LlavaHFPlan(cfg, arch, proc_cls, image_cls, fields, image_kwargs, processor_kwargs, differences,
                       tower_level(model.vision_tower.model))


def build_hf_config(model, plan: LlavaHFPlan):
    import transformers

    config_cls = getattr(transformers, plan.architecture.replace("ForConditionalGeneration", "Config"))
    vc = model.config.vision_config.to_dict()
    tc = model.config.text_config.to_dict()
    config = config_cls(vision_config=vc, text_config=tc, **plan.config_fields)
    config.architectures = [plan.architecture]
    config.dtype = next(model.parameters()).dtype
    return config


def build_hf_model(model, plan: LlavaHFPlan):
    """transformers' model holding ``model``'s tensors (no copy: built on the meta device, then assigned)."""
    import transformers
    from transformers import GenerationConfig

    config = build_hf_config(model, plan)
    state, rules = map_state_dict(model)
    with torch.device("meta"):
        hf_model = getattr(transformers, plan.architecture)(config)
    expected = set(hf_model.state_dict())
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or extra:
        raise ExportRefused(f"the mapped weights do not fill {plan.architecture}: missing {missing[:5]}, "
                            f"unexpected {extra[:5]}")
    hf_model.load_state_dict(state, strict=True, assign=True)
    gen = model.language_model.generation_config
    hf_model.generation_config = GenerationConfig.from_dict(gen.to_dict()) if gen is not None else GenerationConfig()
    return hf_model, rules


def build_hf_processor(processor, plan: LlavaHFPlan):
    """transformers' processor: the image processor of the plan, a copy of our tokenizer (left padding,
    for generation) and our chat template, whose image parts render as ``<image>``."""
    import transformers

    image_processor = getattr(transformers, plan.image_processor_class + "Pil")(**plan.image_processor_kwargs)
    tokenizer = processor.tokenizer
    chat_template = getattr(processor, "chat_template", None) or tokenizer.chat_template
    tok = copy.deepcopy(tokenizer)
    tok.padding_side = "left"
    processor_cls = getattr(transformers, plan.processor_class)
    return processor_cls(image_processor=image_processor, tokenizer=tok, chat_template=chat_template,
                         **plan.processor_kwargs)
