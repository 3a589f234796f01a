"""LLaVA conversation data: JSON or JSONL records, images read lazily, a collator.

Record format (LLaVA's ``docs/Finetune_Custom_Data.md``)::

    {"id": "...", "image": "relative/path.png" (or a list, or absent for text-only),
     "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}]}

Image paths are relative to an image folder; a path that resolves outside it is refused
(``fsio.resolve_inside``, the rule of every loader). Bad records never stop a job, and none is
replaced by a copy of another:

* **screened** when the dataset is made (:func:`screen_record`, no image decoded): records that are
  not objects, malformed conversations, text that is not valid Unicode, ``<image>`` outside user
  turns, placeholder counts that differ from the images, image paths that are not strings, leave
  the folder or name no file. They are left out of the index, counted by reason with examples —
  the same every time, so a resumed run counts them alike.
* **at load** (an image that does not decode, a sample too long once its images are cut): the
  dataset returns a :class:`SkippedSample` and the collator drops it, so that batch is one sample
  shorter. Only a batch whose every sample failed is given the next usable record instead (said in
  the log); the trainer counts these records (``skipped_records``) and keeps the count in its
  checkpoints.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from .. import fsio
from ..imaging import ImageLoadError, load_image
from ..text import IGNORE_INDEX, ConversationEncoder, ConversationError, get_template
from ..text.conversation import PlaceholderMismatchError, count_placeholders, parse_turns

logger = logging.getLogger(__name__)


class SampleError(ValueError):
    """A sample that cannot be used, with the reason as ``kind``."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def read_records(path: str | os.PathLike) -> list:
    """A JSON list or JSONL file of records (``fsio.read_records_file``); bad JSONL lines are skipped
    with a warning that counts them."""
    bad: dict[str, int] = {}
    records = fsio.read_records_file(path, bad)
    if bad:
        logger.warning("%s: %d line(s) skipped: %s", os.fspath(path), sum(bad.values()), bad)
    return records


def resolve_image_path(image_folder: str, rel: str) -> str:
    """Join ``rel`` to ``image_folder`` by the package's one path rule (:func:`fsio.resolve_inside`)."""
    if not isinstance(rel, str) or not rel.strip():
        raise SampleError("bad_record", f"image path must be a non-empty string, got {rel!r}")
    try:
        return fsio.resolve_inside(image_folder, rel)
    except fsio.PathOutsideError as err:
        raise SampleError("path_escape", f"{err} (the image folder)") from err


def record_images(rec: dict) -> list[str]:
    """The image paths of a record (``image``: absent, a string or a list of strings)."""
    rel = rec.get("image")
    if rel is None:
        return []
    rels = [rel] if isinstance(rel, str) else rel
    if not isinstance(rels, list) or not all(isinstance(r, str) for r in rels):
        raise SampleError("bad_record", f"'image' must be a path string or a list of them, got {rel!r:.80}")
    return rels


def screen_record(rec, image_folder: str) -> None:
    """Check one record without decoding an image; :class:`SampleError` says why it is unusable."""
    if not isinstance(rec, dict):
        raise SampleError("bad_record", f"the record is a JSON {type(rec).__name__}, not an object")
    if "conversations" not in rec:
        raise SampleError("bad_record", "the record has no 'conversations'")
    try:
        parse_turns(rec.get("conversations"))
    except PlaceholderMismatchError as exc:
        raise SampleError("placeholder_mismatch", str(exc)) from exc
    except ConversationError as exc:
        raise SampleError("bad_conversation", str(exc)) from exc
    rels = record_images(rec)
    n = count_placeholders(rec["conversations"])
    if n != len(rels):
        raise SampleError("placeholder_mismatch", f"{n} <image> placeholder(s) but {len(rels)} image(s)")
    for r in rels:
        if not os.path.isfile(resolve_image_path(image_folder, r)):
            raise SampleError("missing_image", f"image file not found: {r!r} in {image_folder!r}")


def _record_name(rec, index: int) -> str:
    rid = rec.get("id") if isinstance(rec, dict) else None
    return f"record {index}" + (f" (id {str(rid)[:60]!r})" if rid is not None else "")


@dataclass
class SkippedSample:
    """What ``LlavaDataset[i]`` returns for a record that failed to load; the collator drops it."""

    index: int  # position of the record in the data file
    kind: str
    message: str


@dataclass
class Sample:
    input_ids: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor | None
    image_sizes: torch.Tensor | None


class LlavaDataset(Dataset):
    """Lazily loaded LLaVA conversation data for one processor and template."""

    def __init__(self, records: list[dict] | str, image_folder: str, processor, template: str | None = None,
                 max_length: int | None = None, max_retries: int = 10, progress: bool = False):
        self.source = os.fspath(records) if isinstance(records, (str, os.PathLike)) else "records"
        self.records = read_records(records) if isinstance(records, (str, os.PathLike)) else list(records)
        if not self.records:
            raise ValueError(f"the dataset {self.source!r} is empty")
        self.image_folder = os.fspath(image_folder)
        self.processor = processor
        tmpl = get_template(template or processor.template.name)
        self.encoder = ConversationEncoder(processor.tokenizer, tmpl, processor.config.image_token_id,
                                           max_length if max_length is not None else processor.config.max_length)
        self.max_retries = max_retries
        self.skipped: Counter[str] = Counter()  # records that failed to load, by reason (this process)
        self.truncated_turns = 0
        self.screened: Counter[str] = Counter()  # records left out when the dataset was made, by reason
        self.screen_examples: list[dict] = []
        self.index: list[int] = []
        from tqdm.auto import tqdm

        for i in tqdm(range(len(self.records)), desc="screening records", unit="rec",
                      disable=not progress or len(self.records) < 10_000):
            try:
                screen_record(self.records[i], self.image_folder)
                self.index.append(i)
            except SampleError as exc:
                self.screened[exc.kind] += 1
                if len(self.screen_examples) < 20:
                    self.screen_examples.append({"record": i, "reason": exc.kind, "message": str(exc)})
        if self.screened:
            logger.warning("%s: %d of %d records left out: %s", self.source, sum(self.screened.values()),
                           len(self.records), dict(self.screened))
        if not self.index:
            raise ValueError(f"no usable record in {self.source!r} ({dict(self.screened)}); first: "
                             f"{self.screen_examples[0]['message'] if self.screen_examples else '-'}")

    def __len__(self) -> int:
        return len(self.index)

    def load(self, index: int) -> Sample:
        """Encode record ``index`` (of the file) or raise :class:`SampleError` saying why not."""
        rec = self.records[index]
        screen_record(rec, self.image_folder)
        images = []
        for r in record_images(rec):
            path = resolve_image_path(self.image_folder, r)
            try:
                images.append(load_image(path))
            except ImageLoadError as exc:
                kind = "missing_image" if "not found" in str(exc) else "bad_image"
                raise SampleError(kind, str(exc)) from exc
        ip = self.processor.image_processor
        batch = ip(images) if images else None
        counts = [self.processor.method_config.max_visual_tokens(r, self.processor.grid) for r in batch.records] \
            if batch is not None else []
        try:
            enc = self.encoder.encode(rec["conversations"], counts)
        except ConversationError as exc:
            kind = {"PlaceholderMismatchError": "placeholder_mismatch",
                    "SequenceTooLongError": "too_long"}.get(type(exc).__name__, "bad_conversation")
            raise SampleError(kind, f"{_record_name(rec, index)}: {exc}") from exc
        if enc.dropped_turns:
            self.truncated_turns += enc.dropped_turns
        pixel_values = image_sizes = None
        if batch is not None:
            kept = batch.records[: enc.num_images]
            nviews = sum(r.num_views for r in kept)
            pixel_values = batch.pixel_values[:nviews]
            image_sizes = torch.tensor([r.image_size for r in kept], dtype=torch.long).reshape(-1, 2)
        return Sample(torch.tensor(enc.input_ids, dtype=torch.long), torch.tensor(enc.labels, dtype=torch.long),
                      pixel_values, image_sizes)

    def __getitem__(self, pos: int) -> dict | SkippedSample:
        i = self.index[pos]
        try:
            s = self.load(i)
        except SampleError as exc:
            self.skipped[exc.kind] += 1
            if self.skipped[exc.kind] <= 5:
                logger.warning("skipping %s (%s): %s", _record_name(self.records[i], i), exc.kind, exc)
            return SkippedSample(i, exc.kind, str(exc))
        return {"input_ids": s.input_ids, "labels": s.labels, "pixel_values": s.pixel_values,
                "image_sizes": s.image_sizes}

    def first_usable(self, after_pos: int) -> dict:
        """The first record after position ``after_pos`` (cyclically) that loads: the stand-in for a
        batch whose every sample failed. Raises after ``max_retries`` more failures in a row."""
        for k in range(1, self.max_retries + 2):
            item = self[(after_pos + k) % len(self.index)]
            if not isinstance(item, SkippedSample):
                logger.warning("a whole batch failed to load; the record after it stands in for it")
                return item
        raise RuntimeError(f"{self.max_retries + 1} records in a row after position {after_pos} failed to load "
                           f"(skips so far: {dict(self.skipped)}); check {self.source!r} and {self.image_folder!r}")

    def modality_lengths(self, progress: bool = False):
        """Per sample: LM tokens after image expansion and whether it has an image, from the image files'
        headers and the text (``data.lengths``; computed once, no image decoded)."""
        if getattr(self, "_modality_lengths", None) is None:
            from .lengths import dataset_lengths

            self._modality_lengths = dataset_lengths(self, progress)
        return self._modality_lengths

    def scan(self, progress: bool = True) -> Counter:
        """Try every sample once; return the count of usable samples and of each skip reason."""
        from tqdm.auto import tqdm

        result: Counter[str] = Counter(self.screened)
        for i in tqdm(self.index, desc="checking samples", disable=not progress):
            try:
                self.load(i)
                result["ok"] += 1
            except SampleError as exc:
                result[exc.kind] += 1
        return result


class LlavaCollator:
    """Right-pads ids (pad token) and labels (−100); concatenates the views of all images.

    ``packing``: the batch also says ``packing=True``, so the model packs the samples into one row
    after image expansion (``model/packing.py``): the language model sees no padding. The text ids stay
    padded here — before the expansion they are only looked up in the embedding table.

    :class:`SkippedSample` items are dropped and listed under ``skipped_records`` ((record, reason)
    pairs; the trainer removes the key before the forward pass). A batch of nothing but skipped
    samples gets ``dataset.first_usable`` instead, when the collator knows the dataset.
    """

    def __init__(self, pad_token_id: int, dataset: "LlavaDataset | None" = None, packing: bool = False):
        self.pad_token_id = int(pad_token_id)
        self.dataset = dataset
        self.packing = bool(packing)

    def __call__(self, batch: list) -> dict:
        skipped = [b for b in batch if isinstance(b, SkippedSample)]
        batch = [b for b in batch if not isinstance(b, SkippedSample)]
        if not batch:
            if self.dataset is None:
                raise RuntimeError(f"every sample of the batch failed to load: {[s.message for s in skipped]}")
            after = max(self.dataset.index.index(s.index) for s in skipped)
            batch = [self.dataset.first_usable(after)]
        out = self._pad(batch)
        if self.packing:
            out["packing"] = True
        if skipped:
            out["skipped_records"] = [(s.index, s.kind) for s in skipped]
        return out

    def _pad(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(b["input_ids"]) for b in batch)
        n = len(batch)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, b in enumerate(batch):
            k = len(b["input_ids"])
            input_ids[i, :k] = b["input_ids"]
            labels[i, :k] = b["labels"]
            mask[i, :k] = 1
        out = {"input_ids": input_ids, "labels": labels, "attention_mask": mask}
        pix = [b["pixel_values"] for b in batch if b.get("pixel_values") is not None]
        if pix:
            out["pixel_values"] = torch.cat(pix, 0)
            out["image_sizes"] = torch.cat([b["image_sizes"] for b in batch if b.get("image_sizes") is not None], 0)
        return out
