"""Padding-free training: the samples of a batch packed into one row, attention kept within each sample.

The model expands every ``<image>`` placeholder into that image's visual tokens (``HiResVLM.merge_inputs``),
so a sample's length is only known after the merge, and packing happens there: the merged samples are
concatenated into one row ``[1 x T x d]`` (``T = Σ lᵢ``, no pad token anywhere), ``position_ids``
restart at 0 for every sample, and the label of each sample's first token is ignored (in a packed
row the token before it belongs to the previous sample; padded rows never predict their first
token either, so the loss is the same sum over the same targets).

That is transformers' convention for packed sequences (``DataCollatorWithFlattening``): a causal LM
called with ``attention_mask=None`` and restarting ``position_ids`` keeps every sample to itself —
FlashAttention-2/3 through ``cu_seq_lens`` (varlen kernels, passed here so that no layer has to
derive them), SDPA / eager / flex attention through a block-diagonal causal mask. That dense
``[T x T]`` mask costs ``T²`` work and memory, more than the padded batch it replaces, so on SDPA
:func:`enable_packing` switches the LM to :data:`VARLEN_SDPA`: transformers' own SDPA function run
once per sample (``Σ lᵢ²``), which on any input that is not a packed row is exactly SDPA.

Shapes: a packed batch is ``inputs_embeds [1 x T x d]``, ``position_ids [1 x T]``, ``labels [1 x T]``,
``cu_seq_lens [n + 1]`` (int32 offsets of the n samples).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from ..text import IGNORE_INDEX

logger = logging.getLogger(__name__)

#: The attention implementation :func:`enable_packing` gives an SDPA language model.
VARLEN_SDPA = "hires_sdpa_varlen"
#: Implementations that keep the samples of a packed row apart: the varlen kernels from ``cu_seq_lens``,
#: the others from the block-diagonal mask transformers builds from restarting ``position_ids``.
FLASH_IMPLEMENTATIONS = ("flash_attention_2", "flash_attention_3", "flash_attention_4")
PACKABLE_IMPLEMENTATIONS = (VARLEN_SDPA, "sdpa", "eager", "flex_attention") + FLASH_IMPLEMENTATIONS


class PackingError(ValueError):
    """A packed forward was asked of a model or call that cannot keep the samples apart; the message says why."""


@dataclass
class PackedSequences:
    """Merged samples concatenated into one row (see the module docstring for the shapes)."""

    inputs_embeds: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor | None
    lengths: list[int]
    cu_seq_lens: torch.Tensor

    def attention_kwargs(self) -> dict:
        """The LM keywords that give the varlen kernels the sample boundaries (``FlashAttentionKwargs``)."""
        longest = max(self.lengths)
        return {"cu_seq_lens_q": self.cu_seq_lens, "cu_seq_lens_k": self.cu_seq_lens,
                "max_length_q": longest, "max_length_k": longest}


def pack_row(embeds: torch.Tensor, labels: torch.Tensor | None, lengths: list[int]) -> PackedSequences:
    """Samples already back to back (``embeds [T x d]``, ``labels [T]``, ``lengths`` summing to T) as one
    packed row."""
    lengths = [int(n) for n in lengths]
    if not lengths:
        raise PackingError("nothing to pack: the batch has no sample")
    if min(lengths) == 0:
        raise PackingError("a sample has no token after image expansion; a packed row cannot hold an empty sample")
    if sum(lengths) != embeds.shape[0]:
        raise PackingError(f"the samples' lengths sum to {sum(lengths)} but the row holds {embeds.shape[0]} tokens")
    device = embeds.device
    offsets = torch.tensor([0] + lengths, dtype=torch.int32, device=device).cumsum(0, dtype=torch.int32)
    sizes = torch.tensor(lengths, device=device)
    position_ids = torch.arange(embeds.shape[0], device=device) - torch.repeat_interleave(offsets[:-1].long(), sizes)
    out_labels = None
    if labels is not None:
        out_labels = labels.clone()
        out_labels[offsets[:-1].long()] = IGNORE_INDEX  # each would be the target of the previous sample's last token
        out_labels = out_labels[None]
    return PackedSequences(embeds[None], position_ids[None], out_labels, lengths, offsets)


def pack_sequences(seqs: list[torch.Tensor], labels: list[torch.Tensor] | None = None) -> PackedSequences:
    """``seqs`` (each ``[lᵢ x d]``) and their labels (each ``[lᵢ]``) as one packed row."""
    if not seqs:
        raise PackingError("nothing to pack: the batch has no sample")
    return pack_row(torch.cat(seqs, 0), torch.cat(labels) if labels is not None else None,
                    [int(s.shape[0]) for s in seqs])


def unpack(values: torch.Tensor, lengths: list[int]) -> list[torch.Tensor]:
    """A packed row's per-token values ``[1 x T x …]`` back into one tensor per sample."""
    return list(values[0].split(lengths, 0))


# ---------------------------------------------------------------------- the language model
def _uses_sliding_window(config) -> bool:
    layer_types = getattr(config, "layer_types", None) or ()
    if any(t != "full_attention" for t in layer_types):
        return True
    return bool(getattr(config, "sliding_window", None)) and getattr(config, "use_sliding_window", True)


def check_packable(language_model) -> str:
    """The LM's attention implementation if a packed row keeps its samples apart there; else :class:`PackingError`."""
    name = type(language_model).__name__
    if not getattr(language_model, "_supports_attention_backend", False):
        raise PackingError(f"packing needs a language model on transformers' attention interface, which reads "
                           f"packed position_ids; {name} is not. Train it padded (training.packing: false)")
    config = language_model.config
    if not getattr(config, "is_causal", True):
        raise PackingError(f"{name} is not causal; packing keeps samples apart with a causal block mask only")
    impl = config._attn_implementation
    if impl not in PACKABLE_IMPLEMENTATIONS:
        raise PackingError(f"packing cannot keep samples apart with the attention implementation {impl!r} of {name}; "
                           f"use one of {list(PACKABLE_IMPLEMENTATIONS)} (LM attn_implementation) or train padded "
                           "(training.packing: false)")
    return impl


def enable_packing(model) -> str:
    """Prepare ``model`` (a ``HiResVLM``) for packed forwards; returns the LM's attention implementation.

    An SDPA language model is switched to :data:`VARLEN_SDPA` (same results on every input; per-sample
    attention on packed rows), unless it uses sliding-window layers, whose windows the per-sample
    kernel does not apply: those keep SDPA and transformers' block mask. Other implementations are
    kept as they are; one that cannot keep samples apart is refused (:func:`check_packable`).
    """
    lm = model.language_model
    impl = check_packable(lm)
    if impl == "sdpa":
        if _uses_sliding_window(lm.config):
            logger.warning("packing: %s has sliding-window layers, so it keeps SDPA with a dense block mask "
                           "(T² memory per packed row); flash_attention_2 packs it without one",
                           type(lm).__name__)
        else:
            lm.set_attn_implementation(VARLEN_SDPA)
            impl = VARLEN_SDPA
    elif impl == "eager":
        logger.warning("packing with eager attention builds a dense [T x T] block mask per packed row; "
                       "SDPA (per-sample kernels) or flash_attention_2 is faster")
    return impl


# ---------------------------------------------------------------------- the varlen SDPA implementation
def _segments(query, key, attention_mask, cu_seq_lens_q, position_ids) -> list[list[int]] | None:
    """Per row, the offsets of the packed samples, or ``None`` when the call is not a packed row."""
    q_len = query.shape[2]
    if attention_mask is not None or q_len != key.shape[2] or q_len < 2:
        return None
    if cu_seq_lens_q is not None:
        if query.shape[0] != 1:
            raise PackingError(f"cu_seq_lens describe one packed row; the batch has {query.shape[0]}")
        bounds = [int(x) for x in cu_seq_lens_q.tolist()]
        if bounds[0] != 0 or bounds[-1] != q_len:
            raise PackingError(f"cu_seq_lens {bounds[:3]}…{bounds[-1]} do not cover the row of {q_len} tokens")
        return [bounds] if len(bounds) > 2 else None
    if position_ids is None:
        return None
    pos = position_ids.expand(query.shape[0], -1)
    starts = torch.diff(pos, dim=-1) != 1
    if not bool(starts.any()):
        return None
    rows = []
    for r in range(pos.shape[0]):
        cuts = (torch.nonzero(starts[r]).flatten() + 1).tolist()
        rows.append([0] + cuts + [q_len])
    return rows


def varlen_sdpa_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                          is_causal=None, cu_seq_lens_q=None, position_ids=None, **kwargs):
    """transformers' SDPA attention; on a packed row (no mask, restarting positions or ``cu_seq_lens``),
    the same function once per sample, causal within it. ``query [b x h x T x d]`` → ``[b x T x h x d]``."""
    rows = _segments(query, key, attention_mask, cu_seq_lens_q, position_ids)
    if rows is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    if kwargs.get("position_bias") is not None:
        raise PackingError("a packed row cannot carry a position bias over the whole row; train this LM padded")
    out_rows = []
    for r, bounds in enumerate(rows):
        parts = []
        for s, e in zip(bounds[:-1], bounds[1:]):
            o, _ = sdpa_attention_forward(module, query[r:r + 1, :, s:e], key[r:r + 1, :, s:e],
                                          value[r:r + 1, :, s:e], None, dropout=dropout, scaling=scaling,
                                          is_causal=True, **kwargs)
            parts.append(o)
        out_rows.append(torch.cat(parts, 1))
    return torch.cat(out_rows, 0), None


def varlen_sdpa_mask(*args, **kwargs):
    """No mask for a packed row (the attention splits it); SDPA's mask for everything else.

    transformers calls a mask function with ``attention_mask=None``, no offsets and ``q_length ==
    kv_length`` exactly when the causal mask is plain or packed; both are what the attention
    function does without a mask."""
    if (kwargs.get("attention_mask") is None and not kwargs.get("q_offset") and not kwargs.get("kv_offset")
            and kwargs.get("q_length") == kwargs.get("kv_length")):
        return None
    return sdpa_mask(*args, **kwargs)


AttentionInterface.register(VARLEN_SDPA, varlen_sdpa_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(VARLEN_SDPA, varlen_sdpa_mask)
