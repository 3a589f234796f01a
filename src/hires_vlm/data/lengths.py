"""The LM length of every record of a :class:`~hires_vlm.data.llava_json.LlavaDataset`, no image decoded.

Length grouping and the packing statistics need, per record, how many tokens the language model
will see: the text's tokens (the dataset's own encoder, template and truncation) with each
``<image>`` counted at its image's upper bound of visual tokens — what the method gives that image
size (``max_visual_tokens``: exact for llava / llava_hd / monkey / inf_llava, an upper bound under
SliME's router). Image sizes come from the file headers (Pillow opens a file lazily), with the
EXIF orientation applied as the processor applies it. A record whose header or text cannot be read
gets its text length and keeps its modality; loading it later skips it, as it would anyway.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from PIL import Image

from ..imaging import ops
from ..text import ConversationError

logger = logging.getLogger(__name__)


@dataclass
class ModalityLengths:
    """Per dataset position: LM tokens after image expansion and whether the sample has an image."""

    lengths: list[int]
    has_image: list[bool]


def image_size(path: str) -> tuple[int, int]:
    """(width, height) the processor will see for the image file at ``path`` (header only)."""
    with Image.open(path) as img:
        return ops.upright_size(img)


def record_length(dataset, index: int) -> tuple[int, bool]:
    """(LM tokens, has an image) of record ``index`` of the file (see the module docstring)."""
    from .llava_json import SampleError, record_images, resolve_image_path

    rec = dataset.records[index]
    rels = record_images(rec)
    processor = dataset.processor
    spec = processor.image_processor.spec
    counts = []
    try:
        for rel in rels:
            record = spec.record_for(image_size(resolve_image_path(dataset.image_folder, rel)))
            counts.append(processor.method_config.max_visual_tokens(record, processor.grid))
    except (OSError, ValueError, SampleError):
        counts = [0] * len(rels)
    try:
        return dataset.encoder.encode(rec["conversations"], counts).length, bool(rels)
    except ConversationError:
        words = sum(len(str(t.get("value", "")).split()) for t in rec["conversations"] if isinstance(t, dict))
        return words + sum(counts), bool(rels)


def dataset_lengths(dataset, progress: bool = False) -> ModalityLengths:
    """Lengths and modalities of every sample of ``dataset``, in its order (its ``index``)."""
    from tqdm.auto import tqdm

    lengths, has_image = [], []
    for i in tqdm(dataset.index, desc="measuring sample lengths", unit="rec",
                  disable=not progress or len(dataset.index) < 10_000):
        n, img = record_length(dataset, i)
        lengths.append(int(n))
        has_image.append(img)
    return ModalityLengths(lengths, has_image)
