"""LLaVA conversation data: JSON or JSONL records, images read lazily, a collator.

Record format (LLaVA's ``docs/Finetune_Custom_Data.md``)::

    {"id": "...", "image": "relative/path.png" (or a list, or absent for text-only),
     "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}]}

Image paths are relative to an image folder; a path that resolves outside it is refused. A bad
sample (missing/corrupt image, placeholder mismatch, too long, malformed) is skipped: it is
counted by reason, logged once, and another sample is served in its place, so a long job never
dies on one file.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from .. import fsio
from ..imaging import ImageLoadError, load_image
from ..text import IGNORE_INDEX, ConversationEncoder, ConversationError, get_template

logger = logging.getLogger(__name__)


class SampleError(ValueError):
    """A sample that cannot be used, with the reason as ``kind``."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def read_records(path: str | os.PathLike) -> list[dict]:
    """A JSON list or JSONL file of records. Bad JSONL lines are skipped with a warning."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file not found: {path!r}")
    with open(path, encoding="utf-8") as f:
        head = f.read(1)
        while head and head.isspace():
            head = f.read(1)
        f.seek(0)
        if head == "[":
            data = json.load(f)
            if not isinstance(data, list):
                raise ValueError(f"{path!r} must hold a JSON list of records")
            return data
        records, bad = [], 0
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                bad += 1
                if bad <= 3:
                    logger.warning("skipping malformed JSONL line %d of %s", n, path)
        if bad:
            logger.warning("%d malformed line(s) skipped in %s", bad, path)
        return records


def resolve_image_path(image_folder: str, rel: str) -> str:
    """Join ``rel`` to ``image_folder`` by the package's one path rule (:func:`fsio.resolve_inside`)."""
    if not isinstance(rel, str) or not rel.strip():
        raise SampleError("bad_record", f"image path must be a non-empty string, got {rel!r}")
    try:
        return fsio.resolve_inside(image_folder, rel)
    except fsio.PathOutsideError as err:
        raise SampleError("path_escape", f"{err} (the image folder)") from err


@dataclass
class Sample:
    input_ids: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor | None
    image_sizes: torch.Tensor | None


class LlavaDataset(Dataset):
    """Lazily loaded LLaVA conversation data for one processor and template."""

    def __init__(self, records: list[dict] | str, image_folder: str, processor, template: str | None = None,
                 max_length: int | None = None, max_retries: int = 10):
        self.records = read_records(records) if isinstance(records, (str, os.PathLike)) else list(records)
        if not self.records:
            raise ValueError("the dataset is empty")
        self.image_folder = os.fspath(image_folder)
        self.processor = processor
        tmpl = get_template(template or processor.template.name)
        self.encoder = ConversationEncoder(processor.tokenizer, tmpl, processor.config.image_token_id,
                                           max_length if max_length is not None else processor.config.max_length)
        self.max_retries = max_retries
        self.skipped: Counter[str] = Counter()
        self.truncated_turns = 0

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> Sample:
        """Encode one record or raise :class:`SampleError` saying why not."""
        rec = self.records[index]
        if not isinstance(rec, dict) or "conversations" not in rec:
            raise SampleError("bad_record", f"record {index} has no 'conversations'")
        rel = rec.get("image")
        rels = [] if rel is None else ([rel] if isinstance(rel, str) else list(rel))
        images = []
        for r in rels:
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
            raise SampleError(kind, f"record {index} ({rec.get('id', '?')}): {exc}") from exc
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

    def __getitem__(self, index: int) -> dict:
        n = len(self.records)
        for attempt in range(self.max_retries + 1):
            i = (index + attempt) % n
            try:
                s = self.load(i)
                return {"input_ids": s.input_ids, "labels": s.labels, "pixel_values": s.pixel_values,
                        "image_sizes": s.image_sizes}
            except SampleError as exc:
                self.skipped[exc.kind] += 1
                if self.skipped[exc.kind] <= 5:
                    logger.warning("skipping sample %d (%s): %s", i, exc.kind, exc)
        raise RuntimeError(
            f"{self.max_retries + 1} samples in a row from index {index} could not be used "
            f"(skips so far: {dict(self.skipped)}); check the data file and the image folder"
        )

    def scan(self, progress: bool = True) -> Counter:
        """Try every sample once; return the count of usable samples and of each skip reason."""
        from tqdm.auto import tqdm

        result: Counter[str] = Counter()
        for i in tqdm(range(len(self.records)), desc="checking samples", disable=not progress):
            try:
                self.load(i)
                result["ok"] += 1
            except SampleError as exc:
                result[exc.kind] += 1
        return result


class LlavaCollator:
    """Right-pads ids (pad token) and labels (−100); concatenates the views of all images."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = int(pad_token_id)

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
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
