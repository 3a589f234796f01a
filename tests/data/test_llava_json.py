"""LLaVA JSON data: lazy loading, bad samples skipped and counted, paths kept inside the folder."""

import json

import pytest
import torch
from PIL import Image

from hires_vlm.data.llava_json import LlavaCollator, LlavaDataset, read_records, resolve_image_path, SampleError
from hires_vlm.tiny import build_tiny


@pytest.fixture(scope="module")
def proc():
    return build_tiny("llava_hd")[1]


def _conv(q="What colour?", a="red", image=True):
    return [{"from": "human", "value": ("<image>\n" if image else "") + q}, {"from": "gpt", "value": a}]


def _write(tmp_path, records, jsonl=False):
    path = tmp_path / ("d.jsonl" if jsonl else "d.json")
    if jsonl:
        path.write_text("\n".join(json.dumps(r) for r in records) + "\n{broken\n")
    else:
        path.write_text(json.dumps(records))
    return str(path)


def test_bad_samples_are_skipped_and_counted(tmp_path, proc):
    Image.new("RGB", (200, 100), "red").save(tmp_path / "ok.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    recs = [
        {"id": "ok", "image": "ok.png", "conversations": _conv()},
        {"id": "missing", "image": "nope.png", "conversations": _conv()},
        {"id": "corrupt", "image": "corrupt.png", "conversations": _conv()},
        {"id": "escape", "image": "../../etc/passwd", "conversations": _conv()},
        {"id": "mismatch", "image": "ok.png", "conversations": _conv(image=False)},
        {"id": "noconv", "image": "ok.png"},
        {"id": "text", "conversations": _conv(image=False)},
    ]
    ds = LlavaDataset(_write(tmp_path, recs), str(tmp_path), proc)
    counts = ds.scan(progress=False)
    assert counts == {"ok": 2, "missing_image": 1, "bad_image": 1, "path_escape": 1, "placeholder_mismatch": 1,
                      "bad_record": 1}
    # Screened out up front (no image decoded): the epoch holds the ok records and the corrupt one.
    assert ds.screened == {"missing_image": 1, "path_escape": 1, "placeholder_mismatch": 1, "bad_record": 1}
    assert len(ds) == 3
    # __getitem__ never raises: a record that fails to load comes back as a SkippedSample, which the
    # collator drops (the batch is one shorter; nothing is served twice).
    from hires_vlm.data.llava_json import SkippedSample

    items = [ds[i] for i in range(len(ds))]
    assert [type(x).__name__ for x in items].count("SkippedSample") == 1 and ds.skipped["bad_image"] == 1
    assert next(x for x in items if isinstance(x, SkippedSample)).kind == "bad_image"
    batch = LlavaCollator(proc.tokenizer.pad_token_id, ds)(items)
    assert batch["input_ids"].shape[0] == 2 and [k for _, k in batch["skipped_records"]] == ["bad_image"]
    assert batch["image_sizes"].shape[1] == 2 and batch["pixel_values"].shape[1:] == (3, 112, 112)


def test_text_only_sample_has_no_images(tmp_path, proc):
    ds = LlavaDataset(_write(tmp_path, [{"id": "t", "conversations": _conv(image=False)}]), str(tmp_path), proc)
    item = ds[0]
    assert item["pixel_values"] is None and (item["labels"] != -100).any()


def test_jsonl_with_a_broken_line(tmp_path):
    recs = read_records(_write(tmp_path, [{"id": "a", "conversations": _conv()}] * 3, jsonl=True))
    assert len(recs) == 3


def test_paths_escaping_the_image_folder_are_refused(tmp_path):
    (tmp_path / "imgs").mkdir()
    assert resolve_image_path(str(tmp_path / "imgs"), "a/b.png").endswith("imgs/a/b.png")
    for bad in ["../x.png", "/etc/passwd", "a/../../x.png"]:
        with pytest.raises(SampleError, match="outside"):
            resolve_image_path(str(tmp_path / "imgs"), bad)


def test_too_long_samples_are_skipped(tmp_path, proc):
    Image.new("RGB", (336, 336), "red").save(tmp_path / "big.png")
    recs = [{"id": "big", "image": "big.png", "conversations": _conv()}]
    ds = LlavaDataset(_write(tmp_path, recs), str(tmp_path), proc, max_length=50)
    assert ds.scan(progress=False) == {"too_long": 1}
    assert ds[0].kind == "too_long"  # a SkippedSample, never an exception
    with pytest.raises(RuntimeError, match="failed to load"):  # a batch of nothing but failures, nothing usable
        LlavaCollator(proc.tokenizer.pad_token_id, ds)([ds[0]])


def test_collator_pads_right_and_concatenates_views():
    rows = [{"input_ids": torch.tensor([1, 2, 3]), "labels": torch.tensor([-100, 2, 3]),
             "pixel_values": torch.zeros(2, 3, 4, 4), "image_sizes": torch.tensor([[4, 4]])},
            {"input_ids": torch.tensor([5]), "labels": torch.tensor([5]), "pixel_values": None, "image_sizes": None}]
    b = LlavaCollator(0)(rows)
    assert b["input_ids"].tolist() == [[1, 2, 3], [5, 0, 0]]
    assert b["labels"].tolist() == [[-100, 2, 3], [5, -100, -100]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["pixel_values"].shape == (2, 3, 4, 4) and b["image_sizes"].tolist() == [[4, 4]]
