"""The model side of the server: a checked request → model inputs (per request), and rows → one batched decode.

:meth:`Engine.prepare` runs in the preprocessing threads, one request at a time, so that a broken
image or a prompt too long fails that request alone before any batching: it decodes the images
(:mod:`.images`), cuts them with the model's processor and encodes the conversation turn by turn
with the model's template — the ids ``processor.apply_chat_template`` gives (a test holds them
equal) — and checks the context: the prompt, with every image at its *upper bound* of visual
tokens, plus ``max_tokens`` must fit ``config.max_length`` (SliME's router may then use fewer).

:meth:`Engine.run` runs in the model's one worker thread: it left-pads the rows, lets the model
replace the image placeholders by visual tokens for the whole batch (``HiResVLM.merge_inputs``,
which gives the method's observables) and decodes with the LM's ``generate`` — the two steps of
``HiResVLM.generate``, taken apart so that the observables are known before the first token — with
the per-row hooks of :mod:`.decoding`. Each row reports to its job (``on_delta``, ``on_finish``);
see :class:`~hires_vlm.serve.batcher.Job` for that side.

The observables (``"hires_vlm"`` in every answer): per image its size, grid (columns, rows), views,
visual tokens (and their upper bound); SliME adds the local tokens before routing, the local
raster ``[rows·q, cols·q]``, the kept positions in it and the mean share of the resampler expert in
the global view's gate.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass

import torch
from transformers import LogitsProcessorList, StoppingCriteriaList

from ..imaging import CutRecord
from ..model import load_model
from ..text import ConversationError, SequenceTooLongError
from ..tiny import stop_token_ids
from .decoding import RowDecoder, RowSampler, RowStopper
from .errors import bad_request
from .images import fetch_image
from .schema import ChatRequest, ImageRef, Sampling
from .settings import ServeSettings


@dataclass
class Prepared:
    """One request, ready to be batched: token ids with one placeholder per image, its images' views."""

    request: ChatRequest
    input_ids: list[int]
    pixel_values: torch.Tensor | None  # [v x c x S x S], all views of the request's images
    image_sizes: list[tuple[int, int]]  # (width, height) per image, in placeholder order
    records: list[CutRecord]
    upper_bounds: list[int]  # visual tokens per image at most
    max_tokens: int  # the request's, or the default, within the context

    @property
    def text_tokens(self) -> int:
        return len(self.input_ids) - len(self.image_sizes)


class Engine:
    """A loaded model and processor, and the two operations of the server on them."""

    def __init__(self, model, processor, settings: ServeSettings):
        self.model = model
        self.processor = processor
        self.settings = settings
        self.model_name = settings.model_name
        self.method = model.connector.cfg.name
        self.tokenizer = processor.tokenizer
        # One lock for the tokenizer: the preprocessing threads encode while the worker decodes, and a
        # Rust tokenizer object must not be borrowed by two threads at once.
        self.tokenizer_lock = threading.Lock()
        lm = model.language_model
        self.context = int(model.config.max_length or lm.config.max_position_embeddings)
        gen = lm.generation_config
        eos = gen.eos_token_id
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        self.eos_ids = sorted(set(eos) | set(stop_token_ids(self.tokenizer, processor.template.name)))
        self.default_sampling = (Sampling(float(gen.temperature or 1.0), float(gen.top_p or 1.0)) if gen.do_sample
                                 else Sampling(0.0, 1.0))
        self._generation_config = copy.deepcopy(gen)
        for key in ("temperature", "top_p", "top_k", "min_new_tokens", "stop_strings", "max_length"):
            setattr(self._generation_config, key, None)
        self._generation_config.update(do_sample=False, num_beams=1, num_return_sequences=1, eos_token_id=self.eos_ids,
                                       pad_token_id=self.tokenizer.pad_token_id, return_dict_in_generate=False)

    @classmethod
    def load(cls, settings: ServeSettings) -> Engine:
        model, processor = load_model(settings.model_dir, settings.device, settings.dtype)
        return cls(model, processor, settings)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def describe(self) -> dict:
        """What ``GET /v1/models`` says about the model beyond its id."""
        spec = self.processor.imaging_spec
        return {"method": self.method, "template": self.processor.template.name, "context_length": self.context,
                "tile_size": spec.tile_size, "patch_size": self.processor.patch_size,
                "default_sampling": {"temperature": self.default_sampling.temperature,
                                     "top_p": self.default_sampling.top_p}}

    # ------------------------------------------------------------------ per request (preprocessing threads)
    def prepare(self, req: ChatRequest) -> Prepared:
        s = self.settings
        images, left = [], s.max_request_pixels
        for ref in req.images:
            images.append(fetch_image(ref, max_bytes=s.max_image_bytes, max_pixels=s.max_image_pixels,
                                      local_root=s.allow_local_images, pixels_left=left))
            left -= images[-1].size[0] * images[-1].size[1]
        batch = self.processor.image_processor(images) if images else None
        records = self.model.records_for(batch["image_sizes"]) if batch is not None else []
        upper = [self.processor.max_visual_tokens(r.image_size) for r in records]
        turns = [{"role": m.role, "content": "".join(self.processor.image_token if isinstance(p, ImageRef) else p
                                                     for p in m.parts)} for m in req.messages]
        try:
            with self.tokenizer_lock:
                ids = self.processor.encoder.encode(turns, upper, for_generation=True).input_ids
        except SequenceTooLongError as err:
            raise bad_request(f"the prompt does not fit this model's context of {self.context} tokens: {err}",
                              "messages", "context_length_exceeded") from None
        except ConversationError as err:
            raise bad_request(f"the conversation cannot be encoded: {err}", "messages",
                              "invalid_conversation") from None
        prompt = len(ids) - len(records) + sum(upper)
        room = self.context - prompt
        bound = f" (images counted at their upper bound of {sum(upper)} visual tokens)" if records else ""
        if room < 1:
            raise bad_request(f"the prompt needs {prompt} tokens{bound}, which leaves no room in this model's context "
                              f"of {self.context} tokens", "messages", "context_length_exceeded")
        max_tokens = req.max_tokens if req.max_tokens is not None else min(s.default_max_tokens, room)
        if max_tokens > room:
            raise bad_request(f"max_tokens is {max_tokens}, but this model's context is {self.context} tokens and the "
                              f"prompt needs {prompt}{bound}: at most {room} can be generated", "max_tokens",
                              "context_length_exceeded")
        return Prepared(req, list(ids), batch["pixel_values"] if batch is not None else None,
                        [tuple(r.image_size) for r in records], records, upper, int(max_tokens))

    def decode(self, ids: list[int]) -> str:
        with self.tokenizer_lock:
            return self.tokenizer.decode(ids, skip_special_tokens=True)

    # ------------------------------------------------------------------ per batch (the worker thread)
    def run(self, jobs) -> None:
        """Decode ``jobs`` (each with ``.prepared``, ``.streamed``, ``interrupt_reason()``, ``on_delta(text)``,
        ``on_finish(result)``) in one batch. Raises if the batch fails; rows already finished have had their
        ``on_finish``."""
        rows: list[Prepared] = [j.prepared for j in jobs]
        with torch.inference_mode():
            merged = self.model.merge_inputs(*self.collate(rows), None, padding_side="left")
            prompt_tokens = merged.attention_mask.sum(1).tolist()
            observed = self._observables(rows, merged)
            decoders = [RowDecoder(self.decode, eos_ids=self.eos_ids, stops=r.request.stop, max_tokens=r.max_tokens,
                                   stream=r.request.stream, already_emitted=len(j.streamed))
                        for r, j in zip(rows, jobs)]

            def deliver(i: int, delta: str) -> None:
                if delta:
                    jobs[i].on_delta(delta)
                dec = decoders[i]
                if dec.finished:
                    visual = sum(im["visual_tokens"] for im in observed[i]["images"])
                    jobs[i].on_finish({
                        "text": dec.text, "finish_reason": dec.finish_reason,
                        "usage": {"prompt_tokens": prompt_tokens[i], "completion_tokens": dec.n_tokens,
                                  "total_tokens": prompt_tokens[i] + dec.n_tokens, "visual_tokens": visual},
                        "hires_vlm": {**observed[i], "batch_size": len(rows)},
                    })

            stopper = RowStopper(decoders, deliver, lambda i: jobs[i].interrupt_reason())
            sampler = RowSampler([r.request.sampling for r in rows], lambda i: decoders[i].finished)
            config = copy.deepcopy(self._generation_config)
            config.max_new_tokens = max(r.max_tokens for r in rows)
            self.model.generate_merged(  # the LM's generate, with FastV when the model's token_reduction sets it
                merged, generation_config=config,
                logits_processor=LogitsProcessorList([sampler]), stopping_criteria=StoppingCriteriaList([stopper]))
        for i, dec in enumerate(decoders):  # generate ended before a row's own limit (it cannot, but never hang)
            if not dec.finished:
                deliver(i, dec.close("length"))

    def collate(self, rows: list[Prepared]) -> tuple:
        """``(input_ids, attention_mask, pixel_values, image_sizes)`` of ``rows``, left-padded, on the device."""
        dev = self.device
        pad = self.tokenizer.pad_token_id
        width = max(len(r.input_ids) for r in rows)
        ids = torch.tensor([[pad] * (width - len(r.input_ids)) + r.input_ids for r in rows], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(r.input_ids)) + [1] * len(r.input_ids) for r in rows], dtype=torch.long)
        views = [r.pixel_values for r in rows if r.pixel_values is not None]
        pixel_values = torch.cat(views).to(dev, self.model.vision_tower.dtype) if views else None
        sizes = [s for r in rows for s in r.image_sizes]
        image_sizes = torch.tensor(sizes, dtype=torch.long, device=dev) if sizes else None
        return ids.to(dev), mask.to(dev), pixel_values, image_sizes

    def _observables(self, rows: list[Prepared], merged) -> list[dict]:
        aux = merged.visual_aux or {}
        visual = merged.visual_tokens.tolist()
        out, k = [], 0
        for r in rows:
            images = []
            for rec, upper in zip(r.records, r.upper_bounds):
                views: dict[str, int] = {}
                for v in rec.views:
                    views[v] = views.get(v, 0) + 1
                im = {"size": list(rec.image_size), "grid": list(rec.grid), "canvas_size": list(rec.canvas_size),
                      "content_box": list(rec.content_box), "num_views": rec.num_views, "views": views,
                      "visual_tokens": int(visual[k]), "visual_tokens_upper_bound": int(upper)}
                if "router_keep" in aux:
                    im["local_tokens"] = int(aux["local_tokens"][k])
                    im["local_grid"] = [int(x) for x in aux["local_grid"][k]]
                    im["kept_local_tokens"] = aux["router_keep"][k].tolist()
                if "gate_weights" in aux:
                    im["gate_resampler_share"] = round(float(aux["gate_weights"][k][:, 1].float().mean()), 4)
                images.append(im)
                k += 1
            out.append({"method": self.method, "images": images})
        return out

