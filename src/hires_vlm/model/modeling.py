"""Stage 5 of the pipeline — ``HiResVLM``: vision tower + method connector + causal LM.

The text carries one ``<image>`` token per image; the model replaces each by that image's visual
tokens (their number can depend on the text — SliME's router — so the expansion happens here, as
in original LLaVA, and not in the processor), masks their labels, and re-pads the batch: right
padding for training, left padding for generation — or, with ``packing=True``, no padding at all:
the merged samples in one row whose attention stays within each sample (``packing.py``).
``generate`` hands the merged embeddings to the LM's own ``generate`` (KV cache, every decoding
strategy of transformers). Training-free token reduction (``token_reduction``: VisionZip after the
tower, FastV inside the LM; ``reduction.py``) applies to every forward and generation when set.

Shapes: ``input_ids [b x l]``, ``pixel_values [v x c x S x S]`` (all views of all images back to
back; a native-resolution tower's: flattened patches ``[n x c·T·p·p]``, ``vision/native.py``),
``image_sizes [n x 2]`` (width, height) per image in placeholder order.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedModel
from transformers import initialization as hf_init
from transformers.utils import ModelOutput

from .. import compat
from ..imaging import CutRecord, HiResImageProcessor, ImagingSpec
from ..methods import Dims, MethodOutput, TextContext, VisualMethod, build_method, resolve_method_config
from ..text import IGNORE_INDEX
from ..vision import build_vision_tower, check_tower_and_method
from .configuration import HiResVLMConfig
from .fastv import FastV, query_positions
from .merge import expand_placeholders, pad_rows, pad_values
from .packing import PackedSequences, PackingError, check_packable, pack_row
from .reduction import TokenReduction, resolve_token_reduction, visionzip_layout, visionzip_split, zipped_anyres_tokens


@compat.model_output
class HiResVLMOutput(ModelOutput):
    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Any = None  # the LM's KV cache; ``past_key_values`` on transformers < 5.24 (see compat)
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    labels: torch.LongTensor | None = None  # labels after image expansion (aligned with logits)
    attention_mask: torch.LongTensor | None = None  # attention mask after image expansion
    visual_tokens: torch.LongTensor | None = None  # visual tokens per image
    visual_aux: dict | None = None  # method observables (gate weights, kept tokens, …)
    sequence_lengths: list | None = None  # packed forward: tokens of each sample in the one packed row
    logits_positions: torch.LongTensor | None = None  # labelled_logits_only: the positions ``logits`` holds


@dataclass
class MergedInputs:
    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor | None
    visual_tokens: torch.Tensor
    visual_aux: dict
    packed: PackedSequences | None = None  # set when the samples were packed into one row
    image_index: torch.Tensor | None = None  # [b x L] the image each position belongs to, −1 for text (not packed)


class HiResVLMPreTrainedModel(PreTrainedModel):
    config_class = HiResVLMConfig
    base_model_prefix = "hires_vlm"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _skip_keys_device_placement = [compat.CACHE_NAME]

    def _init_weights(self, module):
        # Connector modules that need a specific initialisation (zero gates, scaled newline, …)
        # define ``init_parameters``; everything else gets the library's default.
        if hasattr(module, "init_parameters"):
            module.init_parameters(hf_init)
        elif isinstance(module, VisualMethod):
            for p in module.parameters(recurse=False):
                hf_init.normal_(p, mean=0.0, std=p.shape[-1] ** -0.5)
        else:
            super()._init_weights(module)


class HiResVLM(HiResVLMPreTrainedModel):
    """A LLaVA-style model over any transformers vision tower and any causal LM."""

    def __init__(self, config: HiResVLMConfig):
        super().__init__(config)
        self.vision_tower = build_vision_tower(config)  # VisionTower, or NativeVisionTower for Qwen2-VL's
        self.vision_tower.requires_grad_(False)  # frozen unless a training stage says otherwise
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        dims = Dims(
            vision_dim=self.vision_tower.hidden_size,
            text_dim=config.text_config.hidden_size,
            tile_size=self.vision_tower.tile_size,
            grid=self.vision_tower.grid,
        )
        method = resolve_method_config(config.method)
        check_tower_and_method(self.vision_tower, method.name)
        self.connector = build_method(method, dims)
        self._processor: HiResImageProcessor | None = None
        self.post_init()

    # ------------------------------------------------------------------ generation interface
    @classmethod
    def can_generate(cls) -> bool:
        """True: :meth:`generate` has ``GenerationMixin.generate``'s interface (it hands the merged embeddings to
        the LM's) and returns the new tokens only; pipelines check this before they generate."""
        return True

    @property
    def generation_config(self) -> GenerationConfig | None:
        """The LM's generation config (its stop tokens are the template's): ``generate`` decodes with the LM,
        so the model has one generation config, not two that could disagree."""
        lm = self._modules.get("language_model")
        return lm.generation_config if lm is not None else self.__dict__.get("_generation_config_before_lm")

    @generation_config.setter
    def generation_config(self, value: GenerationConfig | None) -> None:
        lm = self._modules.get("language_model")
        if lm is None:  # PreTrainedModel.__init__ sets one before the LM exists; the LM's replaces it
            self.__dict__["_generation_config_before_lm"] = value
        else:
            lm.generation_config = value

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' ``save_pretrained`` (safetensors, the LM's generation config, the config's ``auto_map``
        and import shims)."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            self.language_model.generation_config.save_pretrained(save_directory)

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoModel"):
        """Nothing to do: ``save_pretrained`` writes the ``auto_map`` and the import shims (see ``model.auto``)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model.vision_tower.requires_grad_(False)  # loading creates fresh parameters; keep the tower frozen
        path = os.fspath(pretrained_model_name_or_path)
        if os.path.isfile(os.path.join(path, "generation_config.json")):
            model.language_model.generation_config = GenerationConfig.from_pretrained(path)
        return model

    # ------------------------------------------------------------------ parts
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    @property
    def imaging_spec(self) -> ImagingSpec:
        spec = self.connector.imaging_spec(self.config.image_mean, self.config.image_std)
        return dataclasses.replace(spec, resampler=self.config.image_resampler)

    @property
    def image_processor(self) -> HiResImageProcessor:
        spec = self.imaging_spec  # follows the config (e.g. a changed image_resampler)
        if self._processor is None or self._processor.spec != spec:
            self._processor = HiResImageProcessor(spec)
        return self._processor

    def set_method_runtime(self, **changes) -> None:
        """Change run-time method fields (a training stage's branch, γ, …) and keep the config in step."""
        if not changes:
            return
        self.connector.set_runtime(**changes)
        self.config.method = self.connector.cfg.to_dict()
        self._processor = None

    @property
    def token_reduction(self) -> TokenReduction:
        """The run-time token reduction (FastV, VisionZip) of ``config.token_reduction``; all off by default."""
        return resolve_token_reduction(self.config.token_reduction)

    def set_token_reduction(self, **changes) -> None:
        """Change run-time reduction fields (``fastv_keep=0.5``, ``visionzip_keep=0.25``, …); kept in the config."""
        self.config.token_reduction = self.token_reduction.replace(**changes).to_dict()

    def _reduction(self, override: TokenReduction | dict | None) -> TokenReduction:
        if override is None:
            return self.token_reduction
        if isinstance(override, TokenReduction):
            return override
        return self.token_reduction.replace(**override)

    def records_for(self, image_sizes) -> list[CutRecord]:
        spec = self.imaging_spec
        if image_sizes is None:
            return []
        sizes = image_sizes.tolist() if torch.is_tensor(image_sizes) else list(image_sizes)
        return [spec.record_for((int(w), int(h))) for w, h in sizes]

    def max_visual_tokens(self, image_size) -> int:
        return self.connector.max_visual_tokens(self.imaging_spec.record_for(image_size))

    # ------------------------------------------------------------------ images
    def encode_images(self, pixel_values: torch.Tensor, records: list[CutRecord],
                      text: list[torch.Tensor] | None = None, token_reduction: TokenReduction | dict | None = None):
        """All views in one (chunked) tower forward, then the method's connector (VisionZip in between when set)."""
        expected = sum(r.num_views for r in records)
        if pixel_values.shape[0] != expected:
            raise ValueError(
                f"pixel_values holds {pixel_values.shape[0]} views but the image sizes imply {expected}; "
                "make pixel_values and image_sizes with the same processor"
            )
        conn_dtype = next(self.connector.parameters()).dtype
        ctx = TextContext(embeddings=text, embed_tokens=self.get_input_embeddings())
        reduction = self._reduction(token_reduction)
        if reduction.visionzip and records:
            if getattr(self.vision_tower, "native", False):
                raise ValueError("VisionZip reduces the tokens of S×S views; a native-resolution tower has none")
            return self._encode_zipped(pixel_values, records, ctx, reduction, conn_dtype)
        feats = self.vision_tower.encode(pixel_values, records)
        return self.connector(feats.to(conn_dtype), records, ctx)

    def _encode_zipped(self, pixel_values, records, ctx, reduction: TokenReduction, conn_dtype) -> MethodOutput:
        """VisionZip (``vision/visionzip.py``) on every view, then the connector or, for ``llava_hd``, the
        official VisionZip LLaVA-NeXT layout (``reduction.zipped_anyres_tokens``)."""
        from ..vision.visionzip import probe_tower, zip_views

        layout = visionzip_layout(self.connector.cfg.name, type(self.connector))
        probe = probe_tower(self.vision_tower, pixel_values)
        n_dom, n_cls, n_ctx = visionzip_split(self.vision_tower.num_tokens, reduction.visionzip_keep,
                                              reduction.visionzip_contextual,
                                              reduction.visionzip_cls and probe.cls is not None)
        zipped = zip_views(probe, n_dom, n_ctx, bool(n_cls))
        sizes = [r.num_views for r in records]
        aux = {"visionzip_dominant": list(zipped.dominant.split(sizes)), "visionzip_cls": zipped.n_cls,
               "visionzip_contextual": zipped.n_contextual}
        tokens = zipped.tokens.to(conn_dtype)
        if layout == "flat":
            out = self.connector(tokens, records, ctx)
            out.aux.update(aux)
            return out
        projected = self.connector.projector(tokens)
        out = [zipped_anyres_tokens(p, d, zipped.n_cls, rec, self.vision_tower.grid)
               for p, d, rec in zip(projected.split(sizes), zipped.dominant.split(sizes), records)]
        return MethodOutput(out, aux)

    def _router_text(self, embeds, input_ids, attention_mask, labels, image_owner):
        """One [L x d] tensor of text embeddings per image: its sample's prompt (or all) text."""
        scope = getattr(self.connector.cfg, "router_text", "prompt")
        keep = attention_mask.bool() & (input_ids != self.config.image_token_id)
        if scope == "prompt" and labels is not None:
            keep &= labels == IGNORE_INDEX
        return [embeds[b][keep[b]] for b in image_owner]

    def merge_inputs(self, input_ids, attention_mask=None, pixel_values=None, image_sizes=None, labels=None,
                     padding_side: str = "right", pack: bool = False,
                     token_reduction: TokenReduction | dict | None = None) -> MergedInputs:
        """Replace each ``<image>`` token by its visual tokens; re-pad the batch on ``padding_side``, or
        (``pack``) concatenate the samples into one row ``[1 x T x d]`` with restarting ``position_ids``
        and ``packed`` set (the attention mask is then all ones). VisionZip, when set, reduces the
        visual tokens here; FastV acts later, inside the LM."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        image_id = self.config.image_token_id
        is_img = (input_ids == image_id) & attention_mask.bool()
        counts = is_img.sum(1).tolist()
        records = self.records_for(image_sizes)
        if sum(counts) != len(records):
            raise ValueError(
                f"the text holds {sum(counts)} image placeholder token(s) but {len(records)} image(s) were given; "
                "use exactly one <image> per image"
            )
        if len(records) and pixel_values is None:
            raise ValueError("image_sizes were given without pixel_values")
        embed = self.get_input_embeddings()
        text_embeds = embed(input_ids.masked_fill(input_ids == image_id, 0))
        owner = [b for b, c in enumerate(counts) for _ in range(c)]
        aux: dict = {}
        visual: list[torch.Tensor] = []
        if records:
            text = None
            if self.connector.uses_text:
                text = self._router_text(text_embeds.detach() if not self.training else text_embeds,
                                         input_ids, attention_mask, labels, owner)
            out = self.encode_images(pixel_values, records, text, token_reduction)
            visual, aux = out.tokens, out.aux
        elif self.training and pixel_values is None:
            # Text-only batch: run the vision path on one dummy view and add it times zero, so every
            # rank executes the same modules (ZeRO-3 / FSDP collectives would hang otherwise).
            spec = self.imaging_spec
            dummy_rec = spec.record_for((spec.tile_size, spec.tile_size))
            dummy = self.vision_tower.blank_input(dummy_rec).to(input_ids.device, self.vision_tower.dtype)
            toks = self.encode_images(dummy, [dummy_rec], [text_embeds[0, :1]]).tokens[0]
            text_embeds = text_embeds + 0.0 * toks.sum()

        merged = expand_placeholders(text_embeds, input_ids, attention_mask, labels, visual, image_id)
        lengths = merged.lengths.tolist()
        max_len = max(lengths)
        limit = self.config.max_length
        if limit is not None and max_len > limit:
            raise ValueError(
                f"a sequence has {max_len} tokens after image expansion, more than max_length={limit}; "
                "truncate the text (the data pipeline does this) or raise max_length"
            )
        vt = torch.tensor([v.shape[0] for v in visual], dtype=torch.long, device=input_ids.device)
        if pack:
            packed = pack_row(merged.embeds, merged.labels, lengths)
            ones = attention_mask.new_ones(packed.position_ids.shape)
            return MergedInputs(packed.inputs_embeds, ones, packed.position_ids, packed.labels, vt, aux, packed)
        embeds, mask, out_labels = pad_rows(merged, padding_side, attention_mask)
        position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
        image_index = pad_values(merged, merged.image_slots, padding_side, -1)
        return MergedInputs(embeds, mask, position_ids, out_labels, vt, aux, image_index=image_index)

    # ------------------------------------------------------------------ forward / generate
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        packing: bool = False,
        labelled_logits_only: bool = False,
        token_reduction: TokenReduction | dict | None = None,
        **kwargs,
    ) -> HiResVLMOutput:
        """The LM's forward over the merged sequence; the KV cache comes in as ``cache`` or
        ``past_key_values`` (either transformers naming) and goes out under the installed one's.

        ``packing``: the merged samples go to the LM as one row without padding (``packing.py``); the
        logits, labels and mask returned are that row's ``[1 x T …]``, ``sequence_lengths`` its samples'.

        ``labelled_logits_only`` (with labels; what the trainer's training steps ask): the LM head runs only
        on the positions that predict a label (``logits_positions``, the same for every row), the loss is
        the LM's own loss function on those — the same value, without the ``[b x L x V]`` logits of
        image and prompt tokens, which make most of a LLaVA sequence and predict nothing.

        ``token_reduction`` (this call's changes to ``config.token_reduction``): with FastV the logits,
        labels and mask returned are those of the pruned sequence (each row's kept tokens, re-padded on the
        right; ``visual_aux["fastv_positions"]`` maps them to the merged positions) and no KV cache is
        kept unless ``use_cache=True`` (it holds pruned layers: continue with ``generate``)."""
        cache = compat.pop_cache(kwargs)
        merged = None
        reduction = self._reduction(token_reduction)
        if packing and reduction.fastv:
            raise PackingError("FastV (fastv_keep < 1) prunes each sample's visual tokens inside the LM and cannot "
                               "run on packed rows; call with packing=False")
        if packing:
            self._check_packed_call(input_ids, inputs_embeds, position_ids, cache, use_cache)
            use_cache = False  # transformers reads restarting position_ids as packed only without a cache
        if packing or (inputs_embeds is None and input_ids is not None and (
            (input_ids == self.config.image_token_id).any() or image_sizes is not None or self.training
        )):
            merged = self.merge_inputs(input_ids, attention_mask, pixel_values, image_sizes, labels, pack=packing,
                                       token_reduction=reduction)
            inputs_embeds, attention_mask, position_ids = merged.inputs_embeds, merged.attention_mask, merged.position_ids
            labels, input_ids = merged.labels, None
        fastv = self._fastv(reduction, merged, labels, "right") if merged is not None and cache is None else None
        if fastv is not None and use_cache is None:
            use_cache = False
        lm_mask = attention_mask
        if merged is not None and merged.packed is not None:
            lm_mask = None  # restarting position_ids, no mask: transformers' packed-sequence convention
            kwargs.update(merged.packed.attention_kwargs())
        lm_kwargs = dict(input_ids=input_ids, attention_mask=lm_mask, position_ids=position_ids,
                         inputs_embeds=inputs_embeds, use_cache=use_cache, **compat.cache_kwargs(cache))
        positions = None
        if fastv is not None:  # the pruned sequence's logits; the loss on its labels (the labels of every token kept)
            num_items = kwargs.pop("num_items_in_batch", None)
            with fastv:
                out = self.language_model(**lm_kwargs, **kwargs)
            res = fastv.result
            attention_mask = res.valid.to(attention_mask.dtype)
            merged.visual_aux.update(res.aux())
            loss = None
            if labels is not None:
                labels = res.prune(labels, IGNORE_INDEX)
                loss = self.language_model.loss_function(logits=out.logits, labels=labels,
                                                         vocab_size=out.logits.shape[-1], num_items_in_batch=num_items)
        elif labelled_logits_only and labels is not None and self._lm_keeps_logits():
            targets = nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]
            positions = torch.nonzero((targets != IGNORE_INDEX).any(0)).flatten()
            num_items = kwargs.pop("num_items_in_batch", None)
            out = self.language_model(**lm_kwargs, logits_to_keep=positions, **kwargs)
            loss = self.language_model.loss_function(logits=out.logits, labels=None, vocab_size=out.logits.shape[-1],
                                                     shift_labels=targets[:, positions], num_items_in_batch=num_items)
        else:
            out = self.language_model(**lm_kwargs, labels=labels, **kwargs)
            loss = out.loss
        return HiResVLMOutput(
            loss=loss,
            logits=out.logits,
            **compat.cache_kwargs(compat.cache_of(out)),
            hidden_states=getattr(out, "hidden_states", None),
            attentions=getattr(out, "attentions", None),
            labels=labels,
            attention_mask=attention_mask,
            visual_tokens=merged.visual_tokens if merged is not None else None,
            visual_aux=merged.visual_aux if merged is not None else None,
            sequence_lengths=merged.packed.lengths if merged is not None and merged.packed is not None else None,
            logits_positions=positions,
        )

    def _lm_keeps_logits(self) -> bool:
        """Whether the LM's forward takes ``logits_to_keep`` (every transformers causal LM that generates does);
        read once per LM class, not at every training step."""
        return _takes_logits_to_keep(type(self.language_model))

    def _check_packed_call(self, input_ids, inputs_embeds, position_ids, cache, use_cache) -> None:
        """Refuse, with the reason, a packed forward that could not keep its samples apart."""
        if input_ids is None or inputs_embeds is not None:
            raise PackingError("packing=True packs input_ids after image expansion; it cannot pack given inputs_embeds")
        if position_ids is not None:
            raise PackingError("packing=True makes the position_ids (restarting per sample); do not pass them")
        if cache is not None or use_cache:
            raise PackingError("packing=True is for training and scoring forwards: a KV cache of a packed row mixes "
                               "its samples. Call with use_cache=False; generate() left-pads instead")
        check_packable(self.language_model)

    def _fastv(self, reduction: TokenReduction, merged: MergedInputs, labels, padding_side: str) -> FastV | None:
        """The FastV context of a merged batch, or None when FastV is off or the batch has no visual token."""
        if not reduction.fastv or merged.image_index is None or not bool((merged.image_index >= 0).any()):
            return None
        mask = merged.attention_mask
        if padding_side == "left":
            if not bool(mask[:, -1].all()):
                raise ValueError("FastV generation needs left-padded merged inputs (merge_inputs(padding_side='left'))")
            query = torch.full((mask.shape[0],), mask.shape[1] - 1, dtype=torch.long, device=mask.device)
        else:
            query = query_positions(mask, labels, IGNORE_INDEX)
        return FastV(self.language_model, reduction.fastv_keep, reduction.fastv_layer, merged.image_index, mask,
                     query, padding_side)

    @torch.no_grad()
    def generate(self, input_ids=None, attention_mask=None, pixel_values=None, image_sizes=None,
                 generation_config: GenerationConfig | None = None, return_visual_aux: bool = False,
                 token_reduction: TokenReduction | dict | None = None, **kwargs):
        """Greedy/sampled/beam decoding with the KV cache; batches are left-padded after expansion.

        Returns the LM's ``generate`` output — the new tokens only, since the prompt goes in as
        embeddings. With ``return_visual_aux`` returns ``(output, merged)`` to expose the method's
        observables (e.g. which local tokens SliME's router kept, which visual tokens FastV kept).
        ``token_reduction``: this call's changes to ``config.token_reduction`` (FastV, VisionZip).
        """
        reduction = self._reduction(token_reduction)
        merged = self.merge_inputs(input_ids, attention_mask, pixel_values, image_sizes, None, padding_side="left",
                                   token_reduction=reduction)
        if generation_config is not None:
            kwargs["generation_config"] = generation_config
        out = self.generate_merged(merged, token_reduction=reduction, **kwargs)
        return (out, merged) if return_visual_aux else out

    @torch.no_grad()
    def generate_merged(self, merged: MergedInputs, token_reduction: TokenReduction | dict | None = None, **kwargs):
        """The LM's ``generate`` on left-padded merged inputs (``merge_inputs(padding_side="left")``), with
        FastV's pruning of the prefill and its KV cache when set; FastV's observables go to ``merged.visual_aux``."""
        if kwargs.get("use_cache") is False:
            raise ValueError(
                "use_cache=False is not supported: transformers keeps the KV cache on when decoding from "
                "inputs_embeds; recompute with forward() in a loop if you need an uncached reference"
            )
        fastv = self._fastv(self._reduction(token_reduction), merged, None, "left")
        if fastv is None:
            return self.language_model.generate(inputs_embeds=merged.inputs_embeds,
                                                attention_mask=merged.attention_mask, **kwargs)
        with fastv:
            out = self.language_model.generate(inputs_embeds=merged.inputs_embeds,
                                               attention_mask=merged.attention_mask, **kwargs)
        merged.visual_aux.update(fastv.result.aux())
        return out


@functools.lru_cache(maxsize=None)
def _takes_logits_to_keep(lm_class: type) -> bool:
    return "logits_to_keep" in inspect.signature(lm_class.forward).parameters
