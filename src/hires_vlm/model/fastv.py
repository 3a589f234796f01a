"""FastV (Chen et al. 2024, arXiv 2403.06764; official code pkunlp-icler/FastV): visual tokens the
prompt does not look at are dropped from the LM after layer K.

While a :class:`FastV` context is open, hooks on the LM's decoder layers do what the official
"inplace" branch of ``LlamaModel.forward`` does, written anew and extended to batches, padding,
several images and the KV cache:

* layers ``< K`` run on the whole merged sequence;
* **selection** — at the input of layer K−1's attention, the attention row of one query token
  (the last prompt token) is computed from that layer's ``q_proj`` / ``k_proj`` and rotary
  embedding, softmaxed over the keys that query may see, and averaged over heads (official: the
  last row of layer K−1's attention map, averaged over heads); each image keeps its
  ``ceil(keep·n)`` visual tokens with the most attention. Computing the one row here means the
  model keeps running with SDPA: no eager attention map is ever materialised;
* layers ``≥ K`` get the kept tokens only, in their order, with their **original** positions
  (the official code passes the kept indices as ``position_ids``); their KV cache holds only the
  kept tokens, while layers ``< K`` keep every token in theirs;
* decoding (``generate``) continues on that cache: the new token's positions and mask are the
  full sequence's for layers ``< K`` and the pruned one's for layers ``≥ K``.

The query token: in ``generate`` the last token of the (left-padded) prompt; in a forward with
labels, the token that predicts the first label (the end of the prompt), so the selection never
looks at the answer; without labels, the last real token. Rows of a batch keep different numbers
of tokens: the pruned rows are re-padded on the side the merge padded (left for generation).

Supported: Llama-family decoders (Llama, Mistral, Qwen2/3: ``model.layers[i].self_attn`` with
``q_proj``, ``k_proj``, optional ``q_norm`` / ``k_norm``, ``apply_rotary_pos_emb`` in the model's
module), ``attn_implementation`` ``sdpa`` or ``eager``, a dynamic KV cache. Anything else is refused
with the reason.

Shapes: ``image_index [b x L]`` (the image each merged position belongs to, −1 for text and
padding), ``attention_mask [b x L]``, ``query [b]`` → pruned layout ``index [b x L']`` (merged
position of each pruned slot) and ``valid [b x L']``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from .. import compat
from .reduction import kept_count

SUPPORTED_ATTENTION = ("sdpa", "eager")


def decoder_layers(lm) -> torch.nn.ModuleList:
    """The decoder layers of a transformers causal LM (``lm.model.layers`` for the Llama family)."""
    decoder = lm.get_decoder() if hasattr(lm, "get_decoder") else getattr(lm, "model", None)
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ValueError(f"FastV needs a decoder with a `layers` ModuleList (Llama family); "
                         f"{type(lm).__name__} has none")
    return layers


def query_positions(attention_mask: torch.Tensor, labels: torch.Tensor | None, ignore_index: int) -> torch.Tensor:
    """``[b]``: the last prompt token of each row — the position before the first label, else the last real token."""
    length = attention_mask.shape[1]
    pos = torch.arange(length, device=attention_mask.device).expand_as(attention_mask)
    last = torch.where(attention_mask.bool(), pos, -1).max(1).values.clamp(min=0)
    if labels is None:
        return last
    labelled = labels != ignore_index
    first = torch.where(labelled, pos, length).min(1).values
    return torch.where(labelled.any(1), (first - 1).clamp(min=0), last)


def _pruned_layout(keep: torch.Tensor, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``keep [b x L]`` → ``(index [b x L'], valid [b x L'])``: each row's kept positions in order,
    padded on ``side`` (pad slots point at position 0 and are not valid)."""
    counts = keep.sum(1)
    width = int(counts.max()) if counts.numel() else 0
    rank = keep.long().cumsum(1) - 1
    if side == "left":
        rank = rank + (width - counts)[:, None]
    rows, cols = torch.nonzero(keep, as_tuple=True)
    index = torch.zeros(keep.shape[0], width, dtype=torch.long, device=keep.device)
    valid = torch.zeros(keep.shape[0], width, dtype=torch.bool, device=keep.device)
    index[rows, rank[rows, cols]] = cols
    valid[rows, rank[rows, cols]] = True
    return index, valid


def _format_mask(allowed: torch.Tensor, impl: str, dtype: torch.dtype, all_valid: bool):
    """A ``[b x 1 x q x kv]`` boolean "may attend" mask in the form ``impl`` expects (None where SDPA's
    own causal path is exact). A query that may see nothing sees everything instead (it is padding;
    this keeps its softmax finite, as transformers does)."""
    if impl == "sdpa" and all_valid:
        return None
    allowed = allowed | ~allowed.any(-1, keepdim=True)
    if impl == "eager":
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed,
                                                                                        torch.finfo(dtype).min)
    return allowed


@dataclass
class FastVResult:
    index: torch.Tensor  # [b x L'] merged position of each pruned slot
    valid: torch.Tensor  # [b x L'] bool: a real (not padding) slot
    kept: list  # per image: the kept merged positions of its visual tokens (row, positions)
    scores: list  # per image: the layer K−1 attention of its visual tokens (float32)

    def prune(self, values: torch.Tensor, fill) -> torch.Tensor:
        """``values [b x L …]`` laid out as the pruned sequence, ``fill`` on the pad slots."""
        out = values.gather(1, self.index.view(*self.index.shape, *([1] * (values.ndim - 2))).expand(
            *self.index.shape, *values.shape[2:]))
        mask = self.valid.view(*self.valid.shape, *([1] * (values.ndim - 2)))
        return out.masked_fill(~mask, fill)

    def aux(self) -> dict:
        return {"fastv_kept": [k for _, k in self.kept], "fastv_scores": self.scores,
                "fastv_visual_tokens": torch.tensor([k.numel() for _, k in self.kept], dtype=torch.long),
                "fastv_positions": self.index.masked_fill(~self.valid, -1)}


class FastV:
    """Context manager: while open, the LM's layers ≥ ``layer`` see only the visual tokens FastV keeps
    (see the module docstring). ``result`` is set by the first (prefill) forward inside it."""

    def __init__(self, lm, keep: float, layer: int, image_index: torch.Tensor, attention_mask: torch.Tensor,
                 query: torch.Tensor, padding_side: str = "right"):
        self.lm = lm
        self.layers = decoder_layers(lm)
        n = len(self.layers)
        if not 1 <= layer < n:
            raise ValueError(f"fastv_layer={layer} needs a language model with more than {layer} layers (pruned "
                             f"tokens are dropped from layer {layer} on); this one has {n}: choose 1 … {n - 1}")
        self.impl = getattr(lm.config, "_attn_implementation", None) or "eager"
        if self.impl not in SUPPORTED_ATTENTION:
            raise ValueError(f"FastV runs with attn_implementation {' or '.join(SUPPORTED_ATTENTION)}, not "
                             f"{self.impl!r}: load the model with attn_implementation='sdpa'")
        attn = self.layers[layer - 1].self_attn
        missing = [a for a in ("q_proj", "k_proj", "head_dim", "scaling") if not hasattr(attn, a)]
        self.rotary = getattr(sys.modules.get(type(attn).__module__), "apply_rotary_pos_emb", None)
        if missing or self.rotary is None:
            raise ValueError(f"FastV computes layer {layer - 1}'s attention from q_proj/k_proj and the rotary "
                             f"embedding of a Llama-family attention; {type(attn).__name__} lacks "
                             f"{missing or ['apply_rotary_pos_emb']}")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.keep, self.layer, self.side = float(keep), int(layer), padding_side
        self.image_index, self.mask2d, self.query = image_index, attention_mask.bool(), query
        self.result: FastVResult | None = None
        self._calls = 0
        self._step_mask: torch.Tensor | None = None
        self._pruned: dict | None = None
        self._handles: list = []

    # ------------------------------------------------------------------ hooks
    def __enter__(self) -> "FastV":
        self._handles = [
            self.lm.register_forward_pre_hook(self._on_lm_call, with_kwargs=True),
            self.layers[self.layer - 1].self_attn.register_forward_pre_hook(self._on_selection_layer,
                                                                            with_kwargs=True),
        ]
        for i in range(self.layer, len(self.layers)):
            self._handles.append(self.layers[i].register_forward_pre_hook(self._pruned_layer(i), with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @property
    def prefill(self) -> bool:
        return self._calls <= 1

    def _on_lm_call(self, module, args, kwargs):
        self._calls += 1
        self._step_mask = kwargs.get("attention_mask")
        embeds = kwargs.get("inputs_embeds")
        if self._calls == 1 and embeds is not None and embeds.shape[0] != self.mask2d.shape[0]:
            self._expand(embeds.shape[0])

    def _expand(self, rows: int) -> None:
        """Beam search / several samples per prompt: generate repeats every row ``r`` times before the
        prefill (``repeat_interleave``); so does the plan, each copy's images numbered apart."""
        b = self.mask2d.shape[0]
        if rows % b:
            raise ValueError(f"FastV was set up for {b} rows but the LM got {rows}")
        r = rows // b
        idx = self.image_index.repeat_interleave(r, 0)
        copy = torch.arange(rows, device=idx.device)[:, None] % r
        self.image_index = torch.where(idx >= 0, idx * r + copy, -1)
        self.mask2d = self.mask2d.repeat_interleave(r, 0)
        self.query = self.query.repeat_interleave(r, 0)

    def _on_selection_layer(self, module, args, kwargs):
        if not self.prefill:
            return None
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        if hidden.shape[1] != self.mask2d.shape[1]:
            raise ValueError(f"FastV was set up for a sequence of {self.mask2d.shape[1]} tokens but the LM got "
                             f"{hidden.shape[1]}")
        pos_emb = kwargs.get("position_embeddings")
        if pos_emb is None:
            raise ValueError("FastV needs the decoder to pass position_embeddings (cos, sin) to its attention")
        with torch.no_grad():
            scores = self._last_row_attention(module, hidden, pos_emb)
        self._select(scores)
        return None

    def _last_row_attention(self, attn, hidden: torch.Tensor, pos_emb) -> torch.Tensor:
        """``[b x L]`` float32: the query token's attention in this layer, softmaxed, averaged over heads."""
        b, length, _ = hidden.shape
        hd = int(attn.head_dim)
        rows = torch.arange(b, device=hidden.device)
        q = attn.q_proj(hidden[rows, self.query]).view(b, 1, -1, hd)
        k = attn.k_proj(hidden).view(b, length, -1, hd)
        if hasattr(attn, "q_norm"):
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # [b x H x 1 x hd], [b x Hkv x L x hd]
        cos, sin = (t.expand(b, *t.shape[1:]) for t in pos_emb)
        q = self.rotary(q, q, cos[rows, self.query][:, None], sin[rows, self.query][:, None])[0]
        k = self.rotary(k, k, cos, sin)[1]
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        logits = (q.float() @ k.float().transpose(-1, -2))[:, :, 0] * float(attn.scaling)  # [b x H x L]
        pos = torch.arange(length, device=hidden.device)
        visible = self.mask2d & (pos[None] <= self.query[:, None])
        logits = logits.masked_fill(~visible[:, None], float("-inf"))
        return torch.softmax(logits, dim=-1).mean(1)

    def _select(self, scores: torch.Tensor) -> None:
        keep = self.mask2d & (self.image_index < 0)
        kept, image_scores = [], []
        for m in torch.unique(self.image_index[self.image_index >= 0]).tolist():
            rows, cols = torch.nonzero(self.image_index == m, as_tuple=True)
            row = int(rows[0])
            s = scores[row, cols]
            top = cols[torch.topk(s, kept_count(cols.numel(), self.keep)).indices].sort().values
            keep[row, top] = True
            kept.append((row, top))
            image_scores.append(s)
        index, valid = _pruned_layout(keep, self.side)
        self.result = FastVResult(index, valid, kept, image_scores)

    def _pruned_layer(self, i: int):
        def hook(module, args, kwargs):
            if self.result is None:
                raise RuntimeError("FastV: a pruned layer ran before the selection layer")
            hidden = args[0] if args else kwargs["hidden_states"]
            if self.prefill:
                if i == self.layer:  # layer K: drop the pruned tokens
                    hidden = self.result.prune(hidden, 0)
                kwargs.update(self._prefill_kwargs(kwargs, hidden.dtype))
            else:
                kwargs["attention_mask"] = self._decode_mask(kwargs, i, hidden)
            if args:
                args = (hidden, *args[1:])
            else:
                kwargs["hidden_states"] = hidden
            return args, kwargs
        return hook

    def _prefill_kwargs(self, kwargs: dict, dtype: torch.dtype) -> dict:
        if self._pruned is None:
            res = self.result
            b, width = res.index.shape
            out: dict = {}
            pos_emb = kwargs.get("position_embeddings")
            if pos_emb is None:
                raise ValueError("FastV needs the decoder to pass position_embeddings (cos, sin) to every layer")
            out["position_embeddings"] = tuple(
                t.expand(b, *t.shape[1:]).gather(1, res.index[..., None].expand(b, width, t.shape[-1]))
                for t in pos_emb)
            pos_ids = kwargs.get("position_ids")
            if pos_ids is not None:
                out["position_ids"] = pos_ids.expand(b, -1).gather(1, res.index)
            causal = torch.ones(width, width, dtype=torch.bool, device=res.index.device).tril()
            allowed = (causal[None] & res.valid[:, None, :])[:, None]
            out["attention_mask"] = _format_mask(allowed, self.impl, dtype, bool(res.valid.all()))
            self._pruned = out
        return self._pruned

    def _decode_mask(self, kwargs: dict, i: int, hidden: torch.Tensor):
        cache = next((kwargs[n] for n in compat.CACHE_NAMES if kwargs.get(n) is not None), None)
        if cache is None:
            raise ValueError("FastV: a decoding step needs the KV cache of the prefill (use generate())")
        if getattr(cache, "is_compileable", False):
            raise ValueError("FastV drops tokens from the KV cache of layers ≥ K, which needs a dynamic cache; "
                             f"got {type(cache).__name__}: do not set cache_implementation")
        res = self.result
        width = res.index.shape[1]
        past = int(cache.get_seq_length(i))
        q = hidden.shape[1]
        step = self._step_mask
        full = self.mask2d.shape[1]
        if step is None:
            new = torch.ones(hidden.shape[0], past - width + q, dtype=torch.bool, device=hidden.device)
        else:
            new = step.bool()[:, full:]
            if new.shape[1] != past - width + q:
                raise ValueError(f"FastV: the attention mask covers {step.shape[1] - full} new token(s) but the "
                                 f"cache holds {past - width} and {q} arrive")
        valid_kv = torch.cat([res.valid, new], 1)  # [b x kv]
        kv = valid_kv.shape[1]
        cols = torch.arange(kv, device=hidden.device)
        causal = cols[None] <= (past + torch.arange(q, device=hidden.device))[:, None]  # [q x kv]
        allowed = (causal[None] & valid_kv[:, None, :])[:, None]
        return _format_mask(allowed, self.impl, hidden.dtype, bool(valid_kv.all()) and q == 1)
