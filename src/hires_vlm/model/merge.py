"""Placeholders → visual tokens, as index arithmetic: every image's tokens where its ``<image>`` token was.

The merge is pure data movement, so it is written as one gather: the real text tokens of the batch
and all images' visual tokens form one pool, and an index built from the placeholder positions and
the images' token counts says which pool row lands in each slot of the merged samples (sample by
sample, in order). Then the samples are laid out as padded rows (right or left) by one scatter, or
left as the one concatenated row that packing wants. Gradients flow back through the same indices;
no value is summed, so the result and its gradients are exactly those of cutting and concatenating
sample by sample, in a few tensor operations however many samples and images the batch holds.

Shapes: ``text_embeds [b x l x d]``, ``input_ids`` / ``attention_mask`` / ``labels [b x l]``,
``visual``: one ``[nᵢ x d]`` per image in placeholder order (row-major over the batch) → merged
``[T x d]``, labels ``[T]``, ``lengths [b]`` (T = Σ lengths).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..text import IGNORE_INDEX


@dataclass
class Expanded:
    """The merged samples back to back: ``embeds [T x d]``, ``labels [T]`` (or None), ``lengths`` per sample."""

    embeds: torch.Tensor
    labels: torch.Tensor | None
    lengths: torch.Tensor
    image_slots: torch.Tensor | None = None  # [T] the image (placeholder order) each slot belongs to, −1 for text


def expand_placeholders(text_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        labels: torch.Tensor | None, visual: list[torch.Tensor], image_token_id: int) -> Expanded:
    """Each real token of each sample in order, every placeholder replaced by its image's visual tokens
    (cast to the text's dtype, labelled ``IGNORE_INDEX``)."""
    device, dim = text_embeds.device, text_embeds.shape[-1]
    valid = attention_mask.bool()
    ids = input_ids[valid]  # [n] the real tokens, sample after sample
    rows = torch.arange(input_ids.shape[0], device=device)[:, None].expand_as(input_ids)[valid]
    is_img = ids == image_token_id
    n_img = int(is_img.sum())
    if n_img != len(visual):
        raise ValueError(f"{n_img} placeholder(s) for {len(visual)} image(s) of visual tokens")
    counts = torch.tensor([v.shape[0] for v in visual], dtype=torch.long, device=device)
    reps = torch.ones_like(ids)
    reps[is_img] = counts
    slot_token = torch.repeat_interleave(torch.arange(ids.shape[0], device=device), reps)  # [T] its source token
    starts = torch.cumsum(reps, 0) - reps
    within = torch.arange(slot_token.shape[0], device=device) - starts[slot_token]  # index inside an image's tokens
    image_of = torch.cumsum(is_img.long(), 0) - 1  # the image a placeholder stands for
    vis_starts = torch.cumsum(counts, 0) - counts
    slot_img = is_img[slot_token]
    src = slot_token.clone()
    if n_img:
        src[slot_img] = ids.shape[0] + vis_starts[image_of[slot_token[slot_img]]] + within[slot_img]
    vis = torch.cat(visual, 0).to(text_embeds.dtype) if visual else text_embeds.new_zeros(0, dim)
    pool = torch.cat([text_embeds[valid], vis], 0)
    out_labels = None
    if labels is not None:
        out_labels = labels[valid][slot_token].masked_fill(slot_img, IGNORE_INDEX)
    lengths = torch.bincount(rows[slot_token], minlength=input_ids.shape[0])
    image_slots = torch.where(slot_img, image_of[slot_token], -1)
    return Expanded(pool[src], out_labels, lengths, image_slots)


def pad_rows(expanded: Expanded, padding_side: str, template_mask: torch.Tensor):
    """``(embeds [b x L x d], mask [b x L], labels [b x L] | None)``, L the longest sample, padded on
    ``padding_side``; ``template_mask`` gives the mask's dtype and device."""
    sample, col, bsz, width = _slots(expanded.lengths, padding_side)
    embeds = expanded.embeds.new_zeros(bsz, width, expanded.embeds.shape[-1])
    embeds = embeds.index_put((sample, col), expanded.embeds)
    mask = template_mask.new_zeros(bsz, width)
    mask[sample, col] = 1
    labels = None
    if expanded.labels is not None:
        labels = expanded.labels.new_full((bsz, width), IGNORE_INDEX)
        labels[sample, col] = expanded.labels
    return embeds, mask, labels


def _slots(lengths: torch.Tensor, padding_side: str):
    """``(sample, column, b, L)`` of every merged slot in rows of width L padded on ``padding_side``."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    bsz, width = lengths.shape[0], int(lengths.max()) if lengths.numel() else 0
    device = lengths.device
    sample = torch.repeat_interleave(torch.arange(bsz, device=device), lengths)
    col = torch.arange(sample.shape[0], device=device) - (torch.cumsum(lengths, 0) - lengths)[sample]
    if padding_side == "left":
        col = col + (width - lengths)[sample]
    return sample, col, bsz, width


def pad_values(expanded: Expanded, values: torch.Tensor, padding_side: str, fill) -> torch.Tensor:
    """Per-slot ``values [T]`` laid out as :func:`pad_rows` lays out the slots: ``[b x L]``, ``fill`` elsewhere
    (e.g. ``image_slots``, which FastV reads to find each image's visual tokens)."""
    sample, col, bsz, width = _slots(expanded.lengths, padding_side)
    out = values.new_full((bsz, width), fill)
    out[sample, col] = values
    return out
