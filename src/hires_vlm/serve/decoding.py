"""Per-request decoding inside one batched ``generate`` call: sampling, stop strings, streaming.

A batch mixes requests with different sampling parameters, token budgets and stop strings; none
of that is per row in transformers' ``generate``, so the call runs greedy (``do_sample=False``)
with two hooks that make every row its own:

* :class:`RowSampler` (a ``LogitsProcessor``) — for each sampling row, temperature and top-p on
  its logits, then one draw from that request's own ``torch.Generator`` (seeded by its ``seed``,
  else at random); the row's logits become ``0`` at the drawn token and ``-inf`` elsewhere, so the
  greedy step picks it. Greedy rows are left alone. One request's draws therefore do not depend
  on its batch mates, and a ``seed`` reproduces an answer.
* :class:`RowStopper` (a ``StoppingCriteria``) — after every step, hands each row its new token
  (:class:`RowDecoder`) and reports the rows that are done: end-of-turn token, a stop string,
  its own ``max_tokens``, or cancelled (client gone, timeout). A done row's answer is delivered at
  once, not when the longest row of the batch ends.

:class:`RowDecoder` turns a row's token ids into text: decoded as the processor decodes (special
tokens skipped, leading and trailing whitespace stripped), cut before the first stop string, and,
when streaming, released in deltas that hold back what may still change — trailing whitespace, an
incomplete UTF-8 character, a suffix that may be the start of a stop string — so the streamed
deltas add up to exactly the text a non-streamed request gets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import LogitsProcessor, StoppingCriteria

from .schema import Sampling

REPLACEMENT = "\ufffd"  # what a partial UTF-8 character decodes to


class RowDecoder:
    """One request's generated tokens → its text and the deltas to stream."""

    def __init__(self, decode: Callable[[list[int]], str], *, eos_ids: Sequence[int], stops: Sequence[str] = (),
                 max_tokens: int, stream: bool = False, already_emitted: int = 0):
        self._decode = decode
        self.eos_ids = frozenset(int(t) for t in eos_ids)
        self.stops = tuple(stops)
        self.max_tokens = int(max_tokens)
        self.stream = stream
        self.ids: list[int] = []  # text tokens (an end-of-turn token is counted, not kept)
        self.n_tokens = 0  # completion tokens, the end-of-turn token included
        self.text = ""  # the answer so far (final once finished)
        self.emitted = int(already_emitted)  # characters already streamed (a retried row does not resend them)
        self.finish_reason: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def _current(self) -> str:
        text = self._decode(self.ids).lstrip()
        for s in self.stops:
            k = text.find(s)
            if k >= 0:
                text = text[:k]
                self.finish_reason = "stop"
        return text

    def push(self, token: int) -> str:
        """Add the row's next token; returns the text to stream now ('' if none)."""
        if self.finished:
            return ""
        self.n_tokens += 1
        if int(token) in self.eos_ids:
            self.finish_reason = "stop"
        else:
            self.ids.append(int(token))
            if self.stream or self.stops:
                self.text = self._current()
        if not self.finished and self.n_tokens >= self.max_tokens:
            self.finish_reason = "length"
        if self.finished:
            return self._final_delta()
        return self._delta(self._safe(self.text)) if self.stream else ""

    def close(self, reason: str) -> str:
        """Finish now (``reason``: length, cancelled, timeout); returns what is left to stream."""
        if self.finished:
            return ""
        self.finish_reason = reason
        return self._final_delta()

    def _final_delta(self) -> str:
        self.text = (self._current() if not (self.stream or self.stops) or self.finish_reason != "stop"
                     else self.text).rstrip()
        return self._delta(self.text) if self.stream else ""

    def _delta(self, safe: str) -> str:
        out = safe[self.emitted:]
        self.emitted = max(self.emitted, len(safe))
        return out

    def _safe(self, text: str) -> str:
        """The prefix of ``text`` no later token can change."""
        while True:
            safe = text.rstrip().rstrip(REPLACEMENT)
            hold = 0
            for s in self.stops:  # a suffix that may become a stop string
                for k in range(min(len(s) - 1, len(safe)), hold, -1):
                    if safe.endswith(s[:k]):
                        hold = k
                        break
            safe = safe[:len(safe) - hold]
            if safe == text:
                return safe
            text = safe  # what is left may end in whitespace or a stop prefix again


class RowSampler(LogitsProcessor):
    """Temperature, top-p and a seeded draw per row (see the module); greedy rows untouched."""

    def __init__(self, sampling: Sequence[Sampling], done: Callable[[int], bool]):
        self.rows = [i for i, s in enumerate(sampling) if not s.greedy]
        self.temperature = torch.tensor([sampling[i].temperature for i in self.rows], dtype=torch.float32)
        self.top_p = torch.tensor([sampling[i].top_p for i in self.rows], dtype=torch.float32)
        self.generators = {}
        for i in self.rows:
            g = torch.Generator()  # on the CPU: one uniform per step and row, then moved
            if sampling[i].seed is None:
                g.seed()
            else:
                g.manual_seed(sampling[i].seed % (1 << 64))
            self.generators[i] = g
        self.done = done

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        live = [k for k, i in enumerate(self.rows) if not self.done(i)]
        if not live:
            return scores
        rows = [self.rows[k] for k in live]
        dev = scores.device
        idx = torch.tensor(rows, device=dev)
        logits = scores[idx].float() / self.temperature[live].to(dev)[:, None]
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # top-p: keep the smallest prefix of the sorted tokens whose mass reaches top_p (at least one)
        drop = (probs.cumsum(-1) - probs) >= self.top_p[live].to(dev)[:, None]
        probs = probs.masked_fill(drop, 0.0)
        cdf = probs.cumsum(-1)
        u = torch.stack([torch.rand((), generator=self.generators[i]) for i in rows]).to(dev) * cdf[:, -1]
        pick = torch.searchsorted(cdf, u[:, None], right=True).clamp(max=cdf.shape[-1] - 1)
        tokens = order.gather(1, pick).squeeze(1)
        out = torch.full_like(scores[idx], float("-inf"))
        out.scatter_(1, tokens[:, None], 0.0)
        scores[idx] = out
        return scores


class RowStopper(StoppingCriteria):
    """After each step: every live row gets its token; returns which rows are done (see the module).

    ``interrupt(i)`` gives a reason to stop row ``i`` now (``cancelled``, ``timeout``) or ``None``;
    ``deliver(i, delta)`` is called with each row's new text and once more (``delta`` possibly '')
    when the row finishes, after which ``decoders[i].finished`` is true.
    """

    def __init__(self, decoders: Sequence[RowDecoder], deliver: Callable[[int, str], None],
                 interrupt: Callable[[int], str | None]):
        self.decoders = decoders
        self.deliver = deliver
        self.interrupt = interrupt

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        tokens = input_ids[:, -1].tolist()
        for i, dec in enumerate(self.decoders):
            if dec.finished:
                continue
            reason = self.interrupt(i)
            delta = dec.close(reason) if reason else dec.push(tokens[i])
            if delta or dec.finished:
                self.deliver(i, delta)
        return torch.tensor([d.finished for d in self.decoders], dtype=torch.bool, device=input_ids.device)
