"""The placeholder merge (``model/merge.py``) against the plain sample-by-sample cut and concatenation it
replaces: the same values, labels, masks and gradients, bit for bit, on ragged batches."""

import pytest
import torch

from hires_vlm.model.merge import expand_placeholders, pad_rows
from hires_vlm.text import IGNORE_INDEX

IMG = 7


def _reference(text_embeds, input_ids, attention_mask, labels, visual, padding_side):
    """Sample by sample: cut the text at each placeholder, put the image's tokens in, concatenate, pad."""
    seqs, labs, k = [], [], 0
    for b in range(input_ids.shape[0]):
        valid = attention_mask[b].bool()
        ids, emb, lab = input_ids[b][valid], text_embeds[b][valid], labels[b][valid]
        parts, lparts, start = [], [], 0
        for p in torch.nonzero(ids == IMG).flatten().tolist():
            parts += [emb[start:p], visual[k].to(emb.dtype)]
            lparts += [lab[start:p], lab.new_full((visual[k].shape[0],), IGNORE_INDEX)]
            start, k = p + 1, k + 1
        seqs.append(torch.cat(parts + [emb[start:]]))
        labs.append(torch.cat(lparts + [lab[start:]]))
    width = max(s.shape[0] for s in seqs)
    embeds = text_embeds.new_zeros(len(seqs), width, text_embeds.shape[-1])
    mask = attention_mask.new_zeros(len(seqs), width)
    out = labels.new_full((len(seqs), width), IGNORE_INDEX)
    for b, (s, y) in enumerate(zip(seqs, labs)):
        sl = slice(width - len(s), width) if padding_side == "left" else slice(0, len(s))
        embeds[b, sl], mask[b, sl], out[b, sl] = s, 1, y
    return embeds, mask, out


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    bsz, width, dim = 4, 12, 6
    ids = torch.randint(10, 50, (bsz, width), generator=g)
    mask = torch.ones(bsz, width, dtype=torch.long)
    images = {0: [2], 1: [0, 5], 2: [], 3: [9]}  # several images, none, one at the very start
    for b, lengths in enumerate((12, 8, 10, 11)):
        mask[b, lengths:] = 0
        ids[b, lengths:] = 0
        for p in images[b]:
            ids[b, p] = IMG
    labels = torch.where(torch.rand(bsz, width, generator=g) < 0.5, ids, torch.full_like(ids, IGNORE_INDEX))
    counts = [3, 1, 4, 2]
    text = torch.randn(bsz, width, dim, generator=g, dtype=torch.float64).requires_grad_(True)
    visual = [torch.randn(n, dim, generator=g).requires_grad_(True) for n in counts]  # float32 → cast
    return text, ids, mask, labels, visual


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_merge_equals_cutting_and_concatenating_sample_by_sample(padding_side, seed):
    text, ids, mask, labels, visual = _batch(seed)
    ref = _reference(text, ids, mask, labels, visual, padding_side)
    got = pad_rows(expand_placeholders(text, ids, mask, labels, visual, IMG), padding_side, mask)
    for a, b in zip(got, ref):
        assert a.dtype == b.dtype and torch.equal(a, b)
    w = torch.randn(ref[0].shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    grads = []
    for embeds in (ref[0], got[0]):
        gs = torch.autograd.grad((embeds * w).sum(), [text, *visual])
        grads.append(gs)
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_the_concatenated_samples_and_their_lengths():
    text, ids, mask, labels, visual = _batch(0)
    e = expand_placeholders(text, ids, mask, labels, visual, IMG)
    ref = _reference(text, ids, mask, labels, visual, "right")
    assert e.lengths.tolist() == ref[1].sum(1).tolist() == [12 + 2, 8 - 2 + 5, 10, 11 + 1]
    assert torch.equal(e.embeds, ref[0][ref[1].bool()]) and torch.equal(e.labels, ref[2][ref[1].bool()])
    with pytest.raises(ValueError, match="4 placeholder"):
        expand_placeholders(text, ids, mask, labels, visual[:3], IMG)
    with pytest.raises(ValueError, match="padding_side"):
        pad_rows(e, "center", mask)


def test_a_batch_without_images_is_its_text():
    ids = torch.tensor([[11, 12, 13], [14, 15, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    text = torch.randn(2, 3, 4)
    e = expand_placeholders(text, ids, mask, None, [], IMG)
    assert e.labels is None and e.lengths.tolist() == [3, 2] and torch.equal(e.embeds, text[mask.bool()])
