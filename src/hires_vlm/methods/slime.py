"""SliME (*Beyond LLaVA-HD*): a global view kept whole through a mixture of adapters, local tiles
compressed by a query former and filtered by a text-guided router.

Per image (S = tile size, g = tokens per side of a view, q² = ``local_queries``):

* **views** — a global view (official: squashed to S×S; paper: padded to square, resized) and the
  tiles of an adaptive grid (official: LLaVA-UHD rule, 2–7 tiles; paper: every m×n up to 6×6),
  the image resized keeping its aspect and centre-padded black, tiles row-major;
* **global branch** — the g² tokens of the global view through
  :class:`~hires_vlm.connectors.gate.GatedMixture`: per-token noisy gate over the MLP projector
  and a g²-query resampler whose output goes through the same MLP;
* **local branch** — each tile's g² tokens compressed to q² by a resampler in the tower's feature
  space, then the shared MLP; the tiles re-assembled into one raster over the whole grid
  ((rows·q)×(cols·q)); then :func:`~hires_vlm.connectors.router.route` keeps the tokens most
  similar to the text, in raster order;
* **layout** — ``[g² global tokens] [separator] [kept local tokens]``; the separator is the LM
  input embedding of a token (official: ``','``), a learned vector (our choice for the paper
  preset: the paper does not say how the two parts are joined), or nothing.

Run-time fields (changed per training stage with ``method_runtime``): ``branches`` (``global`` /
``local`` only — the official ``use_global_only`` / ``use_local_only``; the views a branch does
not use are not even cut or encoded), ``gate_mode`` (official ``mm_learnable_gated``), ``gamma``
and the router's temperature, noise and text scope.

Parameter names (prefixes for a stage's ``trainable``): ``connector.projector`` (shared MLP),
``connector.mixture.resampler`` (global query-former expert), ``connector.mixture.gate``
(``w_gate``, ``w_noise``), ``connector.local_compressor`` (local resampler),
``connector.separator`` (learned separator only). The router has no parameters.

Observables in ``MethodOutput.aux``: ``gate_weights`` (one ``[g² x 2]`` per image: share of the
MLP and of the resampler expert), ``router_keep`` (kept positions in the local raster, one index
tensor per image), ``router_probs`` (the selection scores), ``local_grid`` ((rows·q, cols·q) per
image), ``local_tokens`` (local tokens before routing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from ..connectors import GatedMixture, Resampler, RouterSettings, build_projector, route, tiles_to_map
from ..connectors.resampler import square_side
from ..imaging import ImagingSpec
from .base import Dims, MethodConfig, MethodOutput, TextContext, VisualMethod
from .registry import register_method, register_preset


#: The global-view token count at which the official GatedBlock mixes its experts (24×24).
OFFICIAL_GATED_TOKENS = 576


def sliced_imaging_spec(tile_size: int, mean, std, *, grid_rule: str, max_tiles: int, max_cols: int, max_rows: int,
                        global_view: str, tiles: bool = True) -> ImagingSpec:
    """Views of SliME-style slicing (also used by ``monkey``): global view + fit-and-pad tiles, row-major."""
    if not tiles:
        return ImagingSpec(tile_size=tile_size, global_view=global_view, mean=mean, std=std)
    return ImagingSpec(tile_size=tile_size, grid_rule=grid_rule, max_tiles=max_tiles, max_cols=max_cols,
                       max_rows=max_rows, canvas="fit", global_view=global_view, local_tiles=True, mean=mean,
                       std=std)


def default_heads(vision_dim: int, heads: int | None) -> int:
    """Resampler heads: as configured, else the official ``dim // 128`` (at least one)."""
    return heads if heads is not None else max(1, vision_dim // 128)


@dataclass
class SlimeConfig(MethodConfig):
    """SliME's fields. Defaults are the official code's behaviour; ``slime-paper`` changes the marked ones."""

    name: ClassVar[str] = "slime"
    runtime_fields: ClassVar[tuple[str, ...]] = (
        "branches", "gate_mode", "gamma", "router_temperature", "router_noise_std", "router_text",
    )

    # ---- views
    grid_rule: Literal["uhd", "slime_paper"] = "uhd"  # official: LLaVA-UHD 2–7 tiles; paper: m×n ≤ 6×6
    max_tiles: int = 6  # uhd: ⌈W·H/S²⌉ clamped to [2, max_tiles], so 2..max_tiles+1 tiles
    max_cols: int = 6  # slime_paper grid bounds
    max_rows: int = 6
    global_view: Literal["squash", "pad"] = "squash"  # official: squash; paper: pad and resize
    # ---- global mixture of adapters
    gate_noise: Literal["official", "paper", "none"] = "official"  # official: N(0,1)·(softplus(xW_g)+0.01)
    gate_mode: Literal["mix", "mlp", "resampler"] = "mix"  # run-time: official mm_learnable_gated
    # official: the GatedBlock mixes only a global view of exactly 576 tokens (CLIP-L/336's 24×24) and
    # returns the MLP alone for any other count; never: the mixture whatever the tower (the paper)
    gate_bypass: Literal["official", "never"] = "official"
    resampler_heads: int | None = None  # None: vision width // 128 (official); tiny configs use 4
    # ---- local compression
    local_queries: int = 144  # N_q per tile, a square number (12×12 at S = 336)
    # ---- text-guided router
    gamma: float = 0.95  # cumulative mass kept; 1.0 keeps every local token
    router_aggregate: Literal["sum", "mean"] = "sum"  # over text tokens: official sum, paper mean
    router_temperature: float = 1.0
    router_noise_std: float = 0.1  # training only
    router_pre_softmax: float | None = None  # official before Nov 2024: 0.5 (extra softmax before the noise)
    router_cutoff: Literal["official", "reach", "within"] = "official"
    # run-time. all: every text token, the answer too in training (official get_pure_text_embedding, its
    # label masking commented out — a leak its author acknowledged); prompt: the prompt only (our fix)
    router_text: Literal["all", "prompt"] = "all"
    # ---- layout
    separator: Literal["token", "learned", "none"] = "token"
    separator_token_id: int | None = None  # official: id of ',' (Llama-3: 11); filled from the tokenizer
    branches: Literal["both", "global", "local"] = "both"  # run-time: official use_global_only / use_local_only

    def validate(self) -> None:
        super().validate()
        square_side(self.local_queries, f"{self.name}.local_queries")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"{self.name}.gamma must be in (0, 1], got {self.gamma}")
        if self.max_tiles < 2 or self.max_cols < 1 or self.max_rows < 1:
            raise ValueError(f"{self.name}: max_tiles must be ≥ 2 and max_cols, max_rows ≥ 1")
        if self.resampler_heads is not None and self.resampler_heads < 1:
            raise ValueError(f"{self.name}.resampler_heads must be ≥ 1 or null, got {self.resampler_heads}")
        if self.separator_token_id is not None and self.separator_token_id < 0:
            raise ValueError(f"{self.name}.separator_token_id must be a token id ≥ 0, got {self.separator_token_id}")
        RouterSettings(self.gamma, self.router_aggregate, self.router_temperature, self.router_noise_std,
                       self.router_pre_softmax, self.router_cutoff)

    def bind_tokenizer(self, tokenizer) -> "SlimeConfig":
        """Fill ``separator_token_id`` with the tokenizer's ',' (``tokenizer(',')['input_ids'][-1]``, as official)."""
        if self.separator == "token" and self.separator_token_id is None:
            ids = tokenizer(",", add_special_tokens=False)["input_ids"]
            return self.replace(separator_token_id=int(ids[-1]))
        return self

    @property
    def router_settings(self) -> RouterSettings:
        return RouterSettings(self.gamma, self.router_aggregate, self.router_temperature, self.router_noise_std,
                              self.router_pre_softmax, self.router_cutoff)

    def imaging_spec(self, tile_size, mean, std) -> ImagingSpec:
        return sliced_imaging_spec(
            tile_size, mean, std, grid_rule=self.grid_rule, max_tiles=self.max_tiles, max_cols=self.max_cols,
            max_rows=self.max_rows, global_view=self.global_view if self.branches != "local" else "none",
            tiles=self.branches != "global")

    def max_visual_tokens(self, record, grid) -> int:
        """Upper bound before routing: g² + 1 + tiles·N_q (only what the active branches give)."""
        n = 0
        if self.branches != "local":
            n += grid * grid * len(record.index("global"))
        if self.branches != "global":
            n += self.local_queries * len(record.index("tile"))
        if self.branches == "both" and self.separator != "none":
            n += 1
        return n


@register_method
class SlimeMethod(VisualMethod):
    config_class = SlimeConfig
    uses_text = True

    def __init__(self, cfg: SlimeConfig, dims: Dims):
        super().__init__(cfg, dims)
        dv, dl = dims.vision_dim, dims.text_dim
        heads = default_heads(dv, cfg.resampler_heads)
        self.projector = build_projector(cfg.projector, dv, dl)
        self.mixture = GatedMixture(dv, dims.grid * dims.grid, heads, cfg.gate_noise)
        self.local_compressor = Resampler(cfg.local_queries, dv, heads)
        if cfg.separator == "learned":
            self.separator = nn.Parameter(torch.randn(dl) / math.sqrt(dl))

    # ------------------------------------------------------------------ parts
    def separator_embedding(self, text: TextContext | None, like: torch.Tensor) -> torch.Tensor | None:
        cfg = self.cfg
        if cfg.separator == "none":
            return None
        if cfg.separator == "learned":
            return self.separator.to(like.dtype).reshape(1, -1)
        if cfg.separator_token_id is None:
            raise ValueError("slime.separator_token_id is not set: give the id of ',' in the LM's tokenizer "
                             "(Llama-3: 11, Vicuna/Llama-2: 1919), or use separator 'learned' or 'none'")
        if text is None or text.embed_tokens is None:
            raise ValueError("slime's 'token' separator needs the LM's input embedding (TextContext.embed_tokens)")
        emb = text.embed_tokens
        size = getattr(emb, "num_embeddings", None)
        if size is not None and cfg.separator_token_id >= size:
            raise ValueError(f"slime.separator_token_id={cfg.separator_token_id} is outside the LM's vocabulary "
                             f"of {size} tokens; set it to the id of ',' in this tokenizer")
        weight = getattr(emb, "weight", None)
        device = weight.device if weight is not None else like.device
        ids = torch.tensor([cfg.separator_token_id], dtype=torch.long, device=device)
        return emb(ids).to(like.dtype).reshape(1, -1)

    def compress_tiles(self, tiles: torch.Tensor) -> torch.Tensor:
        """``[n x g² x dv]`` tile features → ``[n x q² x dl]``: resampler in the tower's space, then the MLP."""
        return self.projector(self.local_compressor(tiles))

    # ------------------------------------------------------------------ forward
    def forward(self, features, records, text=None) -> MethodOutput:
        cfg: SlimeConfig = self.cfg
        per_image = self.split(features, records)
        n = len(records)
        if n == 0:
            return MethodOutput([], {})
        aux: dict = {}
        global_tokens: list[torch.Tensor | None] = [None] * n
        local_maps: list[torch.Tensor | None] = [None] * n

        if cfg.branches != "local":
            gi = [rec.index("global") for rec in records]
            if any(len(i) != 1 for i in gi):
                raise ValueError("slime needs exactly one global view per image; cut the images with this "
                                 "method's imaging spec")
            feats = torch.stack([p[i[0]] for p, i in zip(per_image, gi)])
            mode = cfg.gate_mode
            if cfg.gate_bypass == "official" and feats.shape[1] != OFFICIAL_GATED_TOKENS:
                mode = "mlp"  # GatedBlock.forward: `if x.shape[1] != 576: return self.projection(x)`
            toks, weights = self.mixture(feats, self.projector, mode)
            global_tokens = list(toks.unbind(0))
            aux["gate_weights"] = [w.detach() for w in weights.unbind(0)]

        if cfg.branches != "global":
            ti = [rec.index("tile") for rec in records]
            tiles = [p[i] for p, i in zip(per_image, ti)]
            all_tiles = torch.cat(tiles, 0)
            compressed = self.compress_tiles(all_tiles) if all_tiles.shape[0] else None
            q = square_side(cfg.local_queries, "local_queries")
            start = 0
            grids = []
            for k, rec in enumerate(records):
                cols, rows = rec.grid
                m = len(ti[k])
                if m == 0:
                    local_maps[k] = features.new_zeros(0, self.dims.text_dim)
                    grids.append((0, 0))
                    continue
                fmap = tiles_to_map(compressed[start:start + m], cols, rows)  # [rows·q x cols·q x dl]
                start += m
                local_maps[k] = fmap.reshape(-1, fmap.shape[-1])
                grids.append((rows * q, cols * q))
            aux["local_grid"] = grids
            aux["local_tokens"] = [t.shape[0] for t in local_maps]
            keep, probs = [], []
            settings = cfg.router_settings
            embeddings = text.embeddings if text is not None else None
            if embeddings is not None and len(embeddings) != n:
                raise ValueError(f"{len(embeddings)} router texts for {n} images; give one text per image")
            for k in range(n):
                loc = local_maps[k]
                txt = embeddings[k] if embeddings is not None else None
                res = route(loc, txt, settings, training=self.training)
                local_maps[k] = loc[res.indices]
                keep.append(res.indices)
                probs.append(res.probs)
            aux["router_keep"] = keep
            aux["router_probs"] = probs

        if cfg.branches == "global":
            return MethodOutput(global_tokens, aux)
        if cfg.branches == "local":
            return MethodOutput(local_maps, aux)
        sep = self.separator_embedding(text, global_tokens[0])
        out = []
        for g, loc in zip(global_tokens, local_maps):
            out.append(torch.cat([g] + ([sep] if sep is not None else []) + [loc.to(g.dtype)], 0))
        return MethodOutput(out, aux)


def slime_paper_config() -> SlimeConfig:
    """SliME as the paper describes it (every field the paper fixes; the rest as official)."""
    return SlimeConfig(grid_rule="slime_paper", global_view="pad", gate_noise="paper", gate_bypass="never",
                       router_aggregate="mean", router_cutoff="reach", router_text="prompt", separator="learned")


# ``slime`` is the official code exactly: the router reads every text token (in training the answer
# too) and the mixture runs only on 576-token global views. Recipes that want our fix set
# ``router_text: prompt`` (the demo and the tiny configs do; so does the paper preset, whose text says
# the router compares the image with the instruction). At inference there is no answer, so the two
# agree and released checkpoints behave the same.
register_preset("slime", lambda: SlimeConfig())
register_preset("slime-paper", slime_paper_config)
# The official code until Nov 2024 (when the released checkpoints were trained, presumably): an extra
# softmax(T = 0.5) before the router noise, which makes γ = 0.95 keep about 95 % of the tokens.
register_preset("slime-release", lambda: SlimeConfig(router_pre_softmax=0.5))
