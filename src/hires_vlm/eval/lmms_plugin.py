"""lmms-eval model wrapper: ``--model hires_vlm --model_args pretrained=DIR`` runs any lmms-eval task.

Registration: lmms-eval (0.7+) builds its model registry from built-in manifests plus the Python
entry-point group ``lmms_eval.models``; this package declares
``hires_vlm = "hires_vlm.eval.lmms_plugin:manifest"`` there (``pyproject.toml``), and
:func:`manifest` returns the ``ModelManifest`` naming :class:`HiResVLMLmms`. Nothing else is needed:
once hires-vlm is installed, ``python -m lmms_eval --model hires_vlm …`` finds it.

:class:`HiResVLMLmms` is a *simple* model (``is_simple = True``): requests carry
``(context, gen_kwargs | target, doc_to_visual, doc_id, task, split)``, and the context becomes one
user turn of the checkpoint's own chat template with one ``<image>`` per visual in front.

* ``generate_until``: batched (``batch_size``) over requests with equal generation arguments,
  longest context first; greedy unless the task sets ``temperature > 0``; the answer is cut at the
  first ``until`` string.
* ``loglikelihood`` (:meth:`HiResVLMLmms.loglikelihood_pairs`): the continuation is scored as the
  start of the assistant's answer, with one forward pass per batch: the sum of the
  log-probabilities of its tokens, and whether greedy decoding would produce exactly those tokens.
  Its leading whitespace (lmms-eval's target delimiter) is dropped, since the template already
  separates turn and answer (the template's ``answer_prefix``, e.g. Vicuna's space, is context,
  not scored).

  lmms-eval's ``multiple_choice`` scoring (0.7.x, ``ConfigurableTask.process_results``) picks the
  choice with the *lowest* value, because its own wrappers return LLaVA's loss (issue
  EvolvingLMMs-Lab/lmms-eval#370), while its ``perplexity`` and ``acc_mutual_info`` expect a
  log-probability. ``model_args`` ``loglikelihood``: ``auto`` (default) returns what the installed
  lmms-eval's multiple-choice scoring needs to pick the most likely choice — the negative
  log-probability when it takes ``argmin`` (0.7.0–0.7.3), the log-probability when it takes
  ``argmax`` — and says which in the log; ``nll`` / ``logprob`` force one (``logprob`` for the
  ``perplexity`` metric under an ``argmin`` lmms-eval).
* ``generate_until_multi_round``: the task's ``doc_to_text(doc, previous_output=…, round_idx=…,
  previous_round_info=…)`` protocol, one request at a time; each round is a fresh one-turn prompt.

Data parallel: the evaluator injects rank and world size; under ``accelerate launch`` each process
puts the model on ``cuda:$LOCAL_RANK``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

try:
    from lmms_eval.api.instance import Instance
    from lmms_eval.api.model import lmms
except ImportError as err:  # pragma: no cover - exercised only without lmms-eval
    raise ImportError(
        "hires_vlm.eval.lmms_plugin needs lmms-eval (pip install --no-deps lmms-eval==0.7.3 and its runtime "
        f"dependencies; see the hires-vlm README): {err}"
    ) from err

from .runner import EncodedRequest, encode_request, generate_texts, load_model

logger = logging.getLogger(__name__)

MODEL_NAME = "hires_vlm"
DEFAULT_MAX_NEW_TOKENS = 128
LOGLIKELIHOOD_MODES = ("auto", "logprob", "nll")


def lmms_eval_picks_minimum() -> bool:
    """Whether the installed lmms-eval's multiple_choice scoring picks the choice with the lowest value
    (``np.argmin(lls)`` in ``ConfigurableTask.process_results``, as 0.7.0–0.7.3 do). When the source
    cannot be read, assume it does: that is every release so far."""
    import inspect

    try:
        from lmms_eval.api.task import ConfigurableTask

        source = inspect.getsource(ConfigurableTask.process_results).replace(" ", "")
    except (ImportError, OSError, TypeError):
        return True
    if "np.argmin(lls)" in source:
        return True
    return "np.argmax(lls)" not in source


def manifest():
    """The lmms-eval ``ModelManifest`` of this wrapper (the ``lmms_eval.models`` entry point)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=f"{__name__}.HiResVLMLmms", aliases=("hires-vlm",))


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, str) and value.startswith("auto"):
        return 1  # no automatic batch-size search: one is always safe
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def _evaluator_safe(pairs: list[tuple[float, bool]]) -> list:
    """``pairs`` in a form that survives the installed evaluator's response unwrapping.

    lmms-eval 0.7.3's evaluator passes every response through ``unwrap_generation_output``, which
    turns anything but text into ``str(output)``: a ``(logprob, is_greedy)`` tuple becomes a string
    and every multiple_choice task then fails with "too many values to unpack". A
    ``GenerationResult`` is unwrapped to its payload unchanged, so the pairs are wrapped in one, but
    only where the installed version needs it.
    """
    try:
        from lmms_eval.api.instance import GenerationResult, unwrap_generation_output
    except ImportError:  # pragma: no cover - versions before the unwrapping
        return pairs
    if unwrap_generation_output((0.0, True))[0] == (0.0, True):
        return pairs
    return [GenerationResult(text=pair) for pair in pairs]  # type: ignore[arg-type]


class HiResVLMLmms(lmms):
    """A hires-vlm checkpoint as an lmms-eval model.

    ``model_args``: ``pretrained`` (model directory, required), ``device`` (default ``cuda`` if
    available, per process ``cuda:$LOCAL_RANK``), ``dtype`` (``float32`` / ``bfloat16`` /
    ``float16``, default as saved), ``max_new_tokens`` (used when the task does not set one,
    default 128), ``loglikelihood`` (``auto``, ``logprob`` or ``nll``, see the module docstring).
    ``batch_size`` comes from lmms-eval's ``--batch_size``.
    """

    is_simple = True

    def __init__(self, pretrained: str, device: str | None = None, batch_size: int | str = 1,
                 max_new_tokens: int | str = DEFAULT_MAX_NEW_TOKENS, dtype: str | None = None,
                 loglikelihood: str = "auto", max_batch_size: int | None = None, **kwargs: Any) -> None:
        super().__init__()
        if kwargs:
            raise ValueError(f"hires_vlm: unknown model_args {sorted(kwargs)}; known: pretrained, device, dtype, "
                             "max_new_tokens, loglikelihood, batch_size")
        if loglikelihood not in LOGLIKELIHOOD_MODES:
            raise ValueError(f"hires_vlm: loglikelihood={loglikelihood!r} is not supported; choose one of "
                             f"{', '.join(LOGLIKELIHOOD_MODES)}")
        if loglikelihood == "auto":
            loglikelihood = "nll" if lmms_eval_picks_minimum() else "logprob"
            logger.info("hires_vlm: loglikelihood=%s (the installed lmms-eval's multiple_choice picks the %s value)",
                        loglikelihood, "lowest" if loglikelihood == "nll" else "highest")
        self.loglikelihood_mode = loglikelihood
        import torch

        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device is None or (device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1):
            device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
        self._model, self.processor = load_model(pretrained, device, dtype)
        # Data parallel under torchrun / accelerate launch: lmms-eval shards the requests by these
        # (its build_all_requests(rank, world_size)), and gathers the results on rank 0.
        self._rank = int(os.environ.get("RANK", "0"))
        self._world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self._batch_size = max(1, _as_int(batch_size, "batch_size"))
        self.max_new_tokens = _as_int(max_new_tokens, "max_new_tokens")
        self.pretrained = pretrained

    # -- what the evaluator reads ------------------------------------------------------------------
    @property
    def model(self):
        return self._model

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def device(self):
        return self._model.device

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def chat_template(self) -> str | None:
        return getattr(self.processor.tokenizer, "chat_template", None)

    # -- inputs --------------------------------------------------------------------------------------
    def _visuals(self, doc_to_visual, task: str, split: str, doc_id: int) -> list:
        """The request's images as RGB PIL images (files are opened; other media are refused)."""
        from PIL import Image

        from ..imaging import load_image, to_rgb

        if doc_to_visual is None:
            return []
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        if visuals is None:
            return []
        if not isinstance(visuals, (list, tuple)):
            visuals = [visuals]
        images = []
        for v in visuals:
            if v is None:
                continue
            if isinstance(v, Image.Image):
                images.append(to_rgb(v))
            elif isinstance(v, (str, os.PathLike)) and os.path.isfile(v):
                images.append(load_image(v))
            else:
                raise ValueError(f"hires_vlm takes images only; task {task!r} doc {doc_id} gave {type(v).__name__} "
                                 f"{str(v)[:80]!r}")
        return images

    def _encode(self, context: str, images: Sequence) -> EncodedRequest:
        return encode_request(self.processor, context, images)

    @staticmethod
    def _generation_kwargs(gen_kwargs: dict | None, default_max_new_tokens: int) -> tuple[list[str], dict[str, Any]]:
        """``(until strings, kwargs for HiResVLM.generate)`` from an lmms-eval ``generation_kwargs`` dict."""
        gk = dict(gen_kwargs or {})
        until = gk.pop("until", None) or []
        if isinstance(until, str):
            until = [until]
        if not isinstance(until, list):
            raise ValueError(f"gen_kwargs['until'] must be a string or a list, got {type(until).__name__}")
        kwargs: dict[str, Any] = {"max_new_tokens": int(gk.get("max_new_tokens") or default_max_new_tokens)}
        temperature = float(gk.get("temperature") or 0.0)
        if temperature > 0 or gk.get("do_sample"):
            kwargs.update(do_sample=True, temperature=temperature or 1.0)
            if gk.get("top_p") is not None:
                kwargs["top_p"] = float(gk["top_p"])
        else:
            kwargs["do_sample"] = False
        if int(gk.get("num_beams") or 1) > 1:
            kwargs["num_beams"] = int(gk["num_beams"])
        return [u for u in until if u], kwargs

    @staticmethod
    def _cut(text: str, until: Sequence[str]) -> str:
        for stop in until:
            pos = text.find(stop)
            if pos >= 0:
                text = text[:pos]
        return text

    # -- requests ------------------------------------------------------------------------------------
    def generate_until(self, requests: list[Instance]) -> list[str]:
        from tqdm.auto import tqdm

        logger.info("hires_vlm rank %d of %d: %d generate_until requests", self.rank, self.world_size, len(requests))
        results: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc="hires_vlm generate")
        for indices in groups.values():
            indices.sort(key=lambda i: (-len(requests[i].args[0]), i))  # longest first: memory errors surface early
            until, kwargs = self._generation_kwargs(requests[indices[0]].args[1], self.max_new_tokens)
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                encoded = []
                for i in chunk:
                    context, _, doc_to_visual, doc_id, task, split = requests[i].args
                    encoded.append(self._encode(context, self._visuals(doc_to_visual, task, split, doc_id)))
                texts = generate_texts(self._model, self.processor, encoded, **kwargs)
                for i, text in zip(chunk, texts):
                    results[i] = self._cut(text, until)
                    self.cache_hook.add_partial("generate_until", (requests[i].args[0], requests[i].args[1]),
                                                results[i])
                bar.update(len(chunk))
        bar.close()
        return results  # type: ignore[return-value]

    def _continuation_ids(self, continuation: str) -> tuple[list[int], list[int]]:
        """``(extra context ids, scored ids)``: the template's answer prefix, then the continuation."""
        tok = self.processor.tokenizer
        prefix = self.processor.template.answer_prefix
        full = tok(prefix + continuation.lstrip(), add_special_tokens=False)["input_ids"]
        head = tok(prefix, add_special_tokens=False)["input_ids"] if prefix else []
        if head and full[:len(head)] == head:
            return list(head), list(full[len(head):])
        return [], list(full)

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        logger.info("hires_vlm rank %d of %d: %d loglikelihood requests", self.rank, self.world_size, len(requests))
        pairs = self.loglikelihood_pairs(requests)
        if (self.loglikelihood_mode == "logprob" and lmms_eval_picks_minimum()
                and not getattr(self, "_warned_argmin", False)):
            self._warned_argmin = True
            logger.warning("hires_vlm returns log-probabilities (loglikelihood=logprob), but this lmms-eval's "
                           "multiple_choice acc picks the lowest value: drop loglikelihood=logprob for such tasks")
        if self.loglikelihood_mode == "nll":
            pairs = [(-value, greedy) for value, greedy in pairs]
        for req, pair in zip(requests, pairs):
            self.cache_hook.add_partial("loglikelihood", (req.args[0], req.args[1]), pair)
        return _evaluator_safe(pairs)

    def loglikelihood_pairs(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """``(sum of the continuation's token log-probabilities, is greedy)`` per request."""
        import torch
        from tqdm.auto import tqdm

        from ..text import IGNORE_INDEX

        results: list[tuple[float, bool]] = []
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc="hires_vlm loglikelihood")
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start:start + self.batch_size]
            rows, labels, encoded = [], [], []
            for req in chunk:
                context, target, doc_to_visual, doc_id, task, split = req.args
                continuation = target if isinstance(target, str) else target(self.task_dict[task][split][doc_id])
                if isinstance(continuation, (list, tuple)):
                    continuation = continuation[0]
                enc = self._encode(context, self._visuals(doc_to_visual, task, split, doc_id))
                extra, scored = self._continuation_ids(str(continuation))
                ctx = enc.input_ids + extra
                rows.append(ctx + scored)
                labels.append([IGNORE_INDEX] * len(ctx) + scored)
                encoded.append(enc)
            width = max(len(r) for r in rows)
            pad = self.processor.tokenizer.pad_token_id
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            lab = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for b, (r, lb) in enumerate(zip(rows, labels)):  # right padding: the merge keeps it
                ids[b, :len(r)] = torch.tensor(r)
                lab[b, :len(lb)] = torch.tensor(lb)
                mask[b, :len(r)] = 1
            inputs = {"input_ids": ids, "attention_mask": mask, "labels": lab}
            pixels = [e.pixel_values for e in encoded if e.pixel_values is not None]
            if pixels:
                inputs["pixel_values"] = torch.cat(pixels, 0).to(self._model.dtype)
                inputs["image_sizes"] = torch.tensor([s for e in encoded for s in e.image_sizes], dtype=torch.long)
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            with torch.inference_mode():
                out = self._model(**inputs)
            # Position t predicts token t+1; the merged labels line up with the merged sequence.
            logprobs = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)
            targets = out.labels[:, 1:]
            scored = targets != IGNORE_INDEX
            picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            greedy = logprobs.argmax(-1) == targets
            for b in range(len(chunk)):
                sel = scored[b]
                results.append((float(picked[b][sel].sum()), bool(greedy[b][sel].all())))
            bar.update(len(chunk))
        bar.close()
        return results

    def generate_until_multi_round(self, requests: list[Instance]) -> list[Any]:
        """Rounds of one-turn prompts until the task's ``doc_to_text`` signals the end."""
        results = []
        for req in requests:
            context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = req.args
            doc = self.task_dict[task][split][doc_id]
            until, kwargs = self._generation_kwargs(gen_kwargs, self.max_new_tokens)
            images = self._visuals(doc_to_visual, task, split, doc_id)
            round_outputs: list[str] = []
            info = None
            round_idx = 0
            while True:
                if round_idx:
                    visuals, context, terminal, round_outputs, info = doc_to_text(
                        doc, previous_output=round_outputs, round_idx=round_idx, previous_round_info=info
                    )
                    round_outputs = list(round_outputs)
                    if terminal:
                        break
                    images = self._visuals(lambda _doc, v=visuals: v, task, split, doc_id)
                text = generate_texts(self._model, self.processor, [self._encode(context, images)], **kwargs)[0]
                round_outputs.append(self._cut(text, until))
                round_idx += 1
            results.append(round_outputs)
            self.cache_hook.add_partial("generate_until_multi_round", (req.args[0], gen_kwargs), round_outputs)
        return results


try:  # lmms-eval's legacy registry too (harmless where the entry point already serves)
    from lmms_eval.api.registry import register_model

    register_model(MODEL_NAME)(HiResVLMLmms)
except (ImportError, AssertionError):  # pragma: no cover
    pass
