"""Does an exported model compute what its source computes? One image and prompt through both.

:func:`compare` runs our pipeline (our processor, our model) and transformers' (the exported
processor's chat template and image processor, the exported model) on the same image and prompt,
and reports three things:

* whether the token ids agree once transformers' run of ``<image>`` tokens is collapsed to our one
  placeholder (the text side of the two pipelines), and if not, where they part;
* max |Δ| of the views' pixel values (the image side), and max |Δ| of the logits of the two full
  pipelines, over every position of the sequence (on transformers' ids when the ids differ);
* max |Δ| of the logits when transformers' model is fed *our* pixel values and our expanded ids —
  the weights and the architecture alone, whatever the preprocessing.

The export runs it once as a self-test on :func:`probe_image`; the tests run it over many sizes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

PROBE_PROMPT = "Describe the image."
#: max |Δlogits| accepted by the self-test, relative to max(1, max |logit|), by the dtype the models
#: compute in. On identical pixels the two models run the same operations (measured: 0.0); through
#: both pipelines only the float rounding of the normalisation differs (≤ 5e-7 per pixel, ≤ 2e-6 on
#: the logits of the tiny models). A wrong mapping (tile order, grid, layer) is off by O(1).
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8, torch.bfloat16: 5e-2, torch.float16: 1e-2}


def probe_image(tile_size: int, size: tuple[int, int] | None = None, seed: int = 0) -> Image.Image:
    """A deterministic RGB test image: gradients, a few blocks and noise (the hardest case for
    resampling to agree on). Default size: landscape, a multi-tile grid whose map needs un-padding."""
    w, h = size or (2 * tile_size + tile_size // 3 + 5, tile_size + tile_size // 2 + 3)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([255 * x / max(w - 1, 1), 255 * y / max(h - 1, 1), 127 + 64 * np.sin(x / 7.0 + y / 11.0)], -1)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        img[y0:y0 + max(h // 5, 1), x0:x0 + max(w // 6, 1)] = rng.integers(0, 256, 3)
    img = img + rng.normal(0, 24, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


@dataclass
class Comparison:
    image_size: tuple[int, int]  # (width, height)
    sequence_length: int  # tokens after image expansion, ours
    visual_tokens: int
    input_ids_match: bool
    max_abs_dpixels: float | None  # None when the two processors cut a different number of views
    max_abs_dlogits: float | None  # full pipelines; None when the sequences differ
    max_abs_dlogits_same_pixels: float  # transformers' model on our pixel values and ids
    max_abs_logit: float
    text_difference: dict | None = None  # where our ids and transformers' part, as tokens

    def to_dict(self) -> dict:
        return asdict(self)


def hf_chat_inputs(hf_processor, image: Image.Image, prompt: str) -> dict:
    """transformers' inputs for a one-image, one-turn prompt, through its chat template (the serving path).

    Our processor writes the prompt as ``<image>\\n`` + text; the message here renders the same text."""
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "\n" + prompt}]}]
    return dict(hf_processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                                 return_tensors="pt"))


def collapse_image_runs(ids: list[int], image_token_id: int) -> list[int]:
    """Each run of consecutive image tokens → one placeholder (transformers expands in the processor, we in the model)."""
    return [t for i, t in enumerate(ids) if not (t == image_token_id and i and ids[i - 1] == image_token_id)]


def _same_pixel_inputs(ours: dict, visual_tokens: int, image_token_id: int, architecture: str, image_size) -> dict:
    ids = ours["input_ids"][0].tolist()
    k = ids.index(image_token_id)
    expanded = ids[:k] + [image_token_id] * visual_tokens + ids[k + 1:]
    out = {"input_ids": torch.tensor([expanded]), "attention_mask": torch.ones(1, len(expanded), dtype=torch.long)}
    pixels = ours["pixel_values"]
    if architecture.startswith("LlavaNext"):
        w, h = image_size
        out.update(pixel_values=pixels[None], image_sizes=torch.tensor([[h, w]]))
    else:
        out["pixel_values"] = pixels
    return out


def _first_difference(tokenizer, ours: list[int], theirs: list[int], context: int = 4) -> dict | None:
    """Where two id lists first part, as tokens (``None`` if equal)."""
    if ours == theirs:
        return None
    k = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    lo = max(k - 1, 0)
    return {"position": k, "ours": tokenizer.convert_ids_to_tokens(ours[lo:k + context]),
            "transformers": tokenizer.convert_ids_to_tokens(theirs[lo:k + context])}


@torch.no_grad()
def compare(model, processor, hf_model, hf_processor, image: Image.Image, prompt: str = PROBE_PROMPT) -> Comparison:
    """Our pipeline against transformers' on one image and prompt (see the module docstring).

    When the two tokenisations differ, the full-pipeline logits are those of our model run on
    transformers' ids (collapsed to one placeholder) against transformers' run, so that the
    image side is still compared end to end; ``text_difference`` shows where the ids part."""
    image_id = int(model.config.image_token_id)
    device = model.device
    ours = processor([prompt], [image])
    mine = model(**{k: v.to(device) for k, v in ours.items()})
    logits = mine.logits.float().cpu()
    n_visual = int(mine.visual_tokens[0])

    theirs = hf_chat_inputs(hf_processor, image, prompt)
    hf_ids = theirs["input_ids"][0].tolist()
    collapsed = collapse_image_runs(hf_ids, image_id)
    our_ids = ours["input_ids"][0].tolist()
    difference = _first_difference(processor.tokenizer, our_ids, collapsed)
    hf_pixels = theirs["pixel_values"]
    hf_pixels = hf_pixels[0] if hf_pixels.dim() == 5 else hf_pixels
    dpix = None
    if hf_pixels.shape == ours["pixel_values"].shape:
        dpix = float((hf_pixels.float() - ours["pixel_values"].float()).abs().max())
    hf_device = hf_model.device
    hf_logits = hf_model(**{k: v.to(hf_device) for k, v in theirs.items()}).logits.float().cpu()
    reference = logits
    if difference is not None:
        ids = torch.tensor([collapsed], device=device)
        again = {**ours, "input_ids": ids, "attention_mask": torch.ones_like(ids)}
        reference = model(**{k: v.to(device) for k, v in again.items()}).logits.float().cpu()
    dlogits = float((hf_logits - reference).abs().max()) if hf_logits.shape == reference.shape else None
    same = _same_pixel_inputs(ours, n_visual, image_id, type(hf_model).__name__, image.size)
    hf_same = hf_model(**{k: v.to(hf_device) for k, v in same.items()}).logits.float().cpu()
    if hf_same.shape != logits.shape:
        raise AssertionError(f"transformers' model gave logits {tuple(hf_same.shape)} for ours {tuple(logits.shape)}")
    return Comparison(
        image_size=tuple(image.size), sequence_length=int(logits.shape[1]), visual_tokens=n_visual,
        input_ids_match=difference is None, max_abs_dpixels=dpix, max_abs_dlogits=dlogits,
        max_abs_dlogits_same_pixels=float((hf_same - logits).abs().max()), max_abs_logit=float(logits.abs().max()),
        text_difference=difference,
    )


def tolerance(dtype: torch.dtype, max_abs_logit: float = 1.0) -> float:
    """The self-test's bound on max |Δlogits| for models computing in ``dtype`` (see :data:`TOLERANCE`)."""
    return TOLERANCE.get(dtype, 1e-4) * max(1.0, float(max_abs_logit))
