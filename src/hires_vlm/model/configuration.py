"""``HiResVLMConfig``: the transformers config of a hires-vlm model.

It nests the vision tower's config (any transformers vision config: CLIP, SigLIP) and the
language model's config (anything ``AutoModelForCausalLM`` builds), plus the method (a dict of a
:class:`~hires_vlm.methods.MethodConfig`, validated on load) and the few pipeline settings.
"""

from __future__ import annotations

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from ..imaging import CLIP_MEAN, CLIP_STD


class HiResVLMConfig(PreTrainedConfig):
    r"""
    Args:
        vision_config: the tower's config (dict with ``model_type``, or a config object).
        text_config: the causal LM's config.
        method: the method, e.g. ``{"name": "llava_hd", ...}`` or ``{"preset": "slime-paper"}``; stored resolved.
        image_token_id: id of the ``<image>`` placeholder token in the tokenizer.
        vision_feature_layer: hidden layer of the tower taken as features (−2 as LLaVA).
        vision_chunk_size: views per tower forward (None: all views of a batch in one forward).
        image_mean, image_std: the tower's normalisation.
        image_resampler: how views are resized: ``pillow`` (Pillow's antialiased bicubic, the pixels of the
            official LLaVA / SliME / INF-LLaVA code and of transformers' PIL processors; the default) or
            ``torch`` (torch's uint8 antialiased bicubic, the pixels of transformers' torchvision-backed
            processors; 4–5× faster on large images, 1–2 grey levels from Pillow's).
        max_length: longest sequence (text + visual tokens) the model accepts.
        template: conversation template the model is trained with (``plain``, ``vicuna_v1``, ``llama3``, ``chatml``).
        token_reduction: run-time, training-free visual token reduction, e.g. ``{"fastv_keep": 0.5}`` or
            ``{"visionzip_keep": 0.25}`` (fields of :class:`~hires_vlm.model.reduction.TokenReduction`);
            None: off. Set it at load time with ``from_pretrained(path, token_reduction={...})``.
    """

    model_type = "hires_vlm"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    method: dict | None = None
    image_token_id: int = -1
    vision_feature_layer: int = -2
    vision_chunk_size: int | None = None
    image_mean: list | None = None
    image_std: list | None = None
    image_resampler: str = "pillow"
    max_length: int | None = 2048
    template: str = "vicuna_v1"
    token_reduction: dict | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        from ..methods import resolve_method_config
        from ..text import get_template

        self.method = resolve_method_config(self.method if self.method is not None else "llava").to_dict()
        get_template(self.template)
        if self.token_reduction is not None:
            from .reduction import resolve_token_reduction

            self.token_reduction = resolve_token_reduction(self.token_reduction).to_dict()
        if self.image_mean is None:
            self.image_mean = list(CLIP_MEAN)
        if self.image_std is None:
            self.image_std = list(CLIP_STD)
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ValueError("image_mean and image_std need 3 values (R, G, B)")
        from ..imaging.resample import Resampler

        if self.image_resampler not in {r.value for r in Resampler}:
            raise ValueError(f"image_resampler={self.image_resampler!r} is not valid; choose one of "
                             f"{[r.value for r in Resampler]}")

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' ``save_pretrained`` with an ``auto_map`` and the import shims, for ``trust_remote_code``."""
        from .auto import CONFIG_AUTO_MAP, write_import_shims

        self.auto_map = {**(getattr(self, "auto_map", None) or {}), **CONFIG_AUTO_MAP}
        super().save_pretrained(save_directory, *args, **kwargs)
        write_import_shims(save_directory)

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoConfig"):
        """Nothing to do: ``save_pretrained`` always writes the ``auto_map`` and the import shims (``model.auto``);
        transformers' own version would copy this module, which imports the rest of the package relatively."""
