"""Modality-length grouping (``data/sampling.py``) and the sample lengths it reads (``data/lengths.py``)."""

import json
import os
import random

import numpy as np
import pytest
import torch
from PIL import Image

from hires_vlm.data.llava_json import LlavaCollator, LlavaDataset
from hires_vlm.data.sampling import ModalityLengthGroupedBatchSampler

SMALL_TINY = {"vision_hidden": 32, "vision_layers": 1, "text_hidden": 64, "text_layers": 1, "vocab_size": 300}

pytestmark = pytest.mark.usefixtures("one_thread")


def _mixed(n=203, text_share=0.3, seed=0):
    rng = np.random.default_rng(seed)
    has_image = (rng.random(n) >= text_share).tolist()
    lengths = [int(x) for x in np.where(has_image, rng.integers(600, 3000, n), rng.integers(20, 900, n))]
    return lengths, has_image


def _padding(lengths, batches):
    return 1 - sum(lengths[i] for b in batches for i in b) / sum(len(b) * max(lengths[i] for i in b) for b in batches)


def test_batches_are_modality_pure_and_cover_the_epoch_once():
    lengths, has_image = _mixed()
    s = ModalityLengthGroupedBatchSampler(lengths, has_image, 8, group=4, seed=3)
    batches = list(s)
    assert all(len({has_image[i] for i in b}) == 1 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert len(batches) == len(s)
    assert sum(len(b) < 8 for b in batches) <= 2  # at most each modality's last batch is short


def test_batches_are_length_grouped_within_each_group():
    lengths, has_image = _mixed()
    s = ModalityLengthGroupedBatchSampler(lengths, has_image, 8, group=4, seed=3)
    batches = s.batches()
    full = [batches[i:i + 4] for i in range(0, len(batches), 4) if sum(len(b) for b in batches[i:i + 4]) == 32
            and len({has_image[j] for b in batches[i:i + 4] for j in b}) == 1]
    assert full
    for group in full:  # sorted longest first across the group's batches
        ls = [lengths[i] for b in group for i in b]
        assert ls == sorted(ls, reverse=True)
    # The group holding the longest record of the full groups comes first.
    assert lengths[batches[0][0]] == max(lengths[i] for g in full for b in g for i in b)


def test_grouping_reduces_padding_and_more_batches_per_group_reduce_it_more():
    lengths, has_image = _mixed(n=2000)
    order = np.random.default_rng(0).permutation(len(lengths)).tolist()
    random_batches = [order[i:i + 8] for i in range(0, len(order), 8)]
    one = ModalityLengthGroupedBatchSampler(lengths, has_image, 8, group=1, seed=0).batches()
    eight = ModalityLengthGroupedBatchSampler(lengths, has_image, 8, group=8, seed=0).batches()
    fifty = ModalityLengthGroupedBatchSampler(lengths, has_image, 8, group=50, seed=0).batches()
    p_rand, p1, p8, p50 = (_padding(lengths, b) for b in (random_batches, one, eight, fifty))
    assert p_rand > p1 > p8 > p50  # modality purity alone already helps; sorting more, more
    assert p50 < 0.25 * p_rand


def test_epochs_reshuffle_deterministically():
    lengths, has_image = _mixed()
    a = ModalityLengthGroupedBatchSampler(lengths, has_image, 8, group=2, seed=5)
    b = ModalityLengthGroupedBatchSampler(lengths, has_image, 8, group=2, seed=5)
    first = a.batches()
    assert first == b.batches()
    a.set_epoch(1)
    assert a.batches() != first
    b.set_epoch(1)
    assert a.batches() == b.batches()
    assert ModalityLengthGroupedBatchSampler(lengths, has_image, 8, group=2, seed=6).batches() != first


def test_replicas_get_equal_counts_and_together_every_batch():
    lengths, has_image = _mixed(n=101)
    ranks = [ModalityLengthGroupedBatchSampler(lengths, has_image, 4, group=3, num_replicas=3, rank=r, seed=1)
             for r in range(3)]
    per_rank = [list(s) for s in ranks]
    assert len({len(p) for p in per_rank}) == 1 and all(len(p) == len(s) for p, s in zip(per_rank, ranks))
    seen = [i for p in per_rank for b in p for i in b]
    assert set(seen) == set(range(len(lengths)))
    assert len(seen) - len(lengths) < 3 * 4  # padded by repeating fewer than one batch per rank
    assert all(len({has_image[i] for i in b}) == 1 for p in per_rank for b in p)


def test_drop_last_leaves_out_the_short_batches():
    lengths, has_image = [5] * 10 + [7] * 7, [True] * 10 + [False] * 7
    s = ModalityLengthGroupedBatchSampler(lengths, has_image, 4, drop_last=True)
    batches = list(s)
    assert all(len(b) == 4 for b in batches) and len(batches) == len(s) == 2 + 1


@pytest.mark.parametrize("kwargs,message", [
    ({"lengths": [1, 2], "has_image": [True], "batch_size": 2}, "2 lengths but 1 modality flags"),
    ({"lengths": [], "has_image": [], "batch_size": 2}, "at least one sample"),
    ({"lengths": [1], "has_image": [True], "batch_size": 0}, "batch_size must be a positive integer"),
    ({"lengths": [1], "has_image": [True], "batch_size": 2, "group": True}, "group must be a positive integer"),
    ({"lengths": [1], "has_image": [True], "batch_size": 2, "num_replicas": 2, "rank": 2}, "rank 2 is not one"),
])
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModalityLengthGroupedBatchSampler(**kwargs)


# ---------------------------------------------------------------------- lengths of a LLaVA dataset
@pytest.fixture(scope="module")
def mixed_dataset(tmp_path_factory):
    from hires_vlm.tiny import build_tiny

    root = tmp_path_factory.mktemp("mixed")
    rng = random.Random(0)
    recs = []
    for i in range(12):
        if i % 3 == 2:
            recs.append({"id": f"t{i}", "conversations": [{"from": "human", "value": "Say something " * (1 + i)},
                                                         {"from": "gpt", "value": "ok " * (i + 1)}]})
            continue
        w, h = rng.choice([(224, 224), (300, 200), (200, 300), (336, 168)])
        Image.new("RGB", (w, h), (i * 20, 30, 60)).save(root / f"{i}.png")
        recs.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "blue " * (i % 4 + 1)}]})
    with open(root / "train.json", "w") as f:
        json.dump(recs, f)
    model, proc = build_tiny("llava_hd", **SMALL_TINY)
    return LlavaDataset(str(root / "train.json"), str(root), proc), model.eval()


def test_dataset_lengths_are_the_lm_lengths_after_image_expansion(mixed_dataset):
    ds, model = mixed_dataset
    ml = ds.modality_lengths()
    assert ml is ds.modality_lengths()  # measured once
    collate = LlavaCollator(ds.processor.tokenizer.pad_token_id)
    for pos in range(len(ds)):
        batch = collate([ds[pos]])
        with torch.no_grad():
            merged = model.merge_inputs(batch["input_ids"], batch["attention_mask"], batch.get("pixel_values"),
                                        batch.get("image_sizes"), batch["labels"])
        assert ml.lengths[pos] == int(merged.attention_mask.sum()), pos
        assert ml.has_image[pos] == ("pixel_values" in batch)
    assert ml.has_image.count(False) == 4


def test_an_unreadable_image_header_keeps_the_record_and_its_modality(mixed_dataset, tmp_path):
    ds, _ = mixed_dataset
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    rec = {"id": "b", "image": "broken.png", "conversations": [{"from": "human", "value": "<image>\nHi"},
                                                             {"from": "gpt", "value": "yes"}]}
    with open(tmp_path / "one.json", "w") as f:
        json.dump([rec], f)
    one = LlavaDataset(str(tmp_path / "one.json"), str(tmp_path), ds.processor)
    ml = one.modality_lengths()
    assert ml.has_image == [True]
    assert ml.lengths == [one.encoder.encode(rec["conversations"], [0]).length]  # its text; the image as 0 tokens
    assert os.path.isfile(broken)
