"""The demo's suites: the budget every model gets, the entries (method + recipe + evaluation), the rows."""

from __future__ import annotations

from dataclasses import dataclass, field

FAMILY_ORDER = ("fine_detail", "counting", "quadrant", "tile_border", "global_layout", "existence")
FAMILY_SHORT = {"fine_detail": "fine detail", "counting": "counting", "quadrant": "position+detail",
                "tile_border": "tile border", "global_layout": "global layout", "existence": "existence (F1)"}

TINY_GRIDS = [[1, 1], [1, 2], [2, 1], [2, 2], [1, 3], [3, 1], [2, 3], [3, 2], [3, 3]]
# The tiny tower is widened for the demo: a 1-px texture must be found with phase-invariant
# detectors learned from scratch, which a 64-wide tower learns too slowly (measured: 256 learns it
# in ~150 steps, 64 not in 800). Every method gets the same tower and LM.
TINY_SIZES = {"vision_hidden": 256}


@dataclass
class Budget:
    """What every method gets: data size, optimizer steps, batch size, learning rates, regime.

    ``regime`` ``foundation`` (default): the shipped pretrained tower and LM, the tower frozen,
    the published stages — ``align_fraction`` of the steps aligning the connector on captions
    (``plain`` template, at ``align_lr``), the rest instruction tuning connector + LM (at ``lr``).
    ``scratch``: random weights, every module trains in every stage (the earlier demo).
    """

    train_per_family: int
    test_per_family: int
    steps: int
    batch_size: int = 8
    lr: float = 5.0e-4
    # LLaVA-1.5's stage-1 rate (1e-3 at a global batch of 256) scaled linearly to batch 8. At 1e-3 the
    # tiny projector collapsed in stage 1 (visual tokens 30x the norm of text embeddings, between-image
    # variation ~2 % of it) and global layout stayed at chance for every method (hires-synth-3, seed 0).
    align_lr: float = 3.0e-5
    align_fraction: float = 0.3
    regime: str = "foundation"
    eval_batch_size: int = 32
    max_new_tokens: int = 4


BUDGETS = {
    "default": Budget(train_per_family=500, test_per_family=100, steps=600),
    "quick": Budget(train_per_family=120, test_per_family=40, steps=180),
}
REGIMES = ("foundation", "scratch")


@dataclass
class Entry:
    """One row of a suite: a method config, a recipe, and how to evaluate it."""

    name: str
    method: dict
    recipe: str = "single"  # single | alternating (official split) | paper (SliME's 3 stages)
    eval_runtime: dict = field(default_factory=dict)  # run-time method fields set for evaluation only
    note: str = ""
    train_as: str | None = None  # reuse the trained model of another entry (eval-time ablations)
    eval_reduction: dict = field(default_factory=dict)  # training-free token reduction at evaluation (FastV, VisionZip)


ALL_MODULES = ("vision_tower", "connector", "language_model")
RECIPES = ("single", "alternating", "paper")


def _split(total: int, parts: int) -> list[int]:
    base = [total // parts + (1 if k < total % parts else 0) for k in range(parts)]
    return [max(1, n) for n in base]


def stages_for(entry: Entry, budget: Budget, captions: str | None = None) -> list[dict]:
    """The stages of an entry's recipe, with the budget's steps split between them.

    ``captions``: the stage-1 alignment data (the benchmark's ``captions.json``) in the
    foundation regime."""
    if entry.recipe not in RECIPES:
        raise ValueError(f"recipe {entry.recipe!r} is not supported; choose one of {RECIPES}")
    if budget.regime == "scratch":
        return _scratch_stages(entry, budget)
    if budget.regime != "foundation":
        raise ValueError(f"regime {budget.regime!r} is not supported; choose one of {REGIMES}")
    n_align = max(1, round(budget.align_fraction * budget.steps))
    n_sft = max(1, budget.steps - n_align)
    a, lr = budget.align_lr, budget.lr

    def align(name: str, trainable: dict, steps: int, runtime: dict | None = None) -> dict:
        st = {"name": name, "template": "plain", "trainable": trainable, "training": {"max_steps": steps}}
        if captions:
            st["data"] = {"train": captions}
        if runtime:
            st["method_runtime"] = runtime
        return st

    sft = {"name": "sft", "template": "chatml", "trainable": {"connector": lr, "language_model": lr},
           "training": {"max_steps": n_sft}}
    if entry.recipe == "single":  # LLaVA, INF-LLaVA (projector + enhancement, then with the LM); SliME e2e
        return [align("align", {"connector": a}, n_align), sft]
    sft["method_runtime"] = {"branches": "both", "gate_mode": "mix", "gamma": entry.method.get("gamma", 0.95)}
    if entry.recipe == "alternating":  # the official scripts: MLP expert, resampler expert, local, then SFT
        n = _split(n_align, 3)
        return [
            align("stage1a_mlp", {"connector.projector": a}, n[0], {"branches": "global", "gate_mode": "mlp",
                                                                    "gamma": 1.0}),
            align("stage1b_resampler", {"connector.mixture.resampler": a}, n[1],
                  {"branches": "global", "gate_mode": "resampler", "gamma": 1.0}),
            align("stage2_local", {"connector.local_compressor": a}, n[2],
                  {"branches": "local", "gate_mode": "mix", "gamma": 1.0}),
            sft,
        ]
    n = _split(n_align, 2)  # the paper (§2.2): global projector + mixture, then the local compressor
    return [
        align("stage1_global", {"connector.projector": a, "connector.mixture": a}, n[0],
              {"branches": "global", "gate_mode": "mix", "gamma": 1.0}),
        align("stage2_local", {"connector.local_compressor": a}, n[1],
              {"branches": "local", "gate_mode": "mix", "gamma": 1.0}),
        sft,
    ]


def _scratch_stages(entry: Entry, budget: Budget) -> list[dict]:
    """From random weights: every module trains in every stage (no stage can freeze what knows nothing)."""
    lr = budget.lr
    everything = {m: lr for m in ALL_MODULES}
    if entry.recipe == "single":
        return [{"name": "train", "trainable": everything, "training": {"max_steps": budget.steps}}]
    n1 = max(1, round(0.3 * budget.steps))
    n2 = max(1, round(0.3 * budget.steps))
    n3 = max(1, budget.steps - n1 - n2)
    base = {"vision_tower": lr, "language_model": lr}
    return [
        {"name": "stage1_global", "trainable": {**base, "connector.projector": lr, "connector.mixture": lr},
         "method_runtime": {"branches": "global", "gate_mode": "mix"}, "training": {"max_steps": n1}},
        {"name": "stage2_local", "trainable": {**base, "connector.local_compressor": lr},
         "method_runtime": {"branches": "local", "gamma": 1.0}, "training": {"max_steps": n2}},
        {"name": "stage3_all", "trainable": everything,
         "method_runtime": {"branches": "both", "gamma": 0.95}, "training": {"max_steps": n3}},
    ]


def _slime(**kw) -> dict:
    # The official code with two changes the tiny setting needs: the router reads the prompt only (the
    # official code also feeds it the answer in training, a leak), and the gated mixture runs on the
    # 8×8 global view (the official GatedBlock mixes only 576-token views and would skip it).
    return {"preset": "slime", "local_queries": 16, "router_text": "prompt", "gate_bypass": "never", **kw}


def _inf(**kw) -> dict:
    # The official fixed 3x3 grid is for 1008 px inputs (3·S); the benchmark's images are at most
    # 2·S, so the tiny demo keeps the rule and scales the grid to 2x2 (no upsampling, 9 views).
    return {"preset": "inf_llava", "fixed_grid": [2, 2], **kw}


SUITES: dict[str, list[Entry]] = {
    "main": [
        Entry("llava", {"preset": "llava"}, note="one 112 px view"),
        Entry("llava_hd", {"preset": "llava_hd", "grid_candidates": TINY_GRIDS}, note="anyres up to 3x3 tiles"),
        Entry("monkey", {"preset": "monkey", "queries": 16}, note="all views compressed to 16 queries"),
        Entry("slime", _slime(), recipe="alternating", note="alternating stages, γ = 0.95"),
        Entry("inf_llava", _inf(), note="2x2 contiguous + 2x2 strided tiles + low-res view, 64 tokens"),
    ],
    "slime-ablations": [
        Entry("alternating", _slime(), recipe="alternating", note="SliME's 3-stage recipe"),
        Entry("end-to-end", _slime(), note="connector aligned as one, then SFT (scratch: one stage)"),
        Entry("paper stages", _slime(), recipe="paper", note="SliME §2.2: global, local, then SFT"),
        Entry("alternating, global only", _slime(), train_as="alternating", eval_runtime={"branches": "global"}),
        Entry("alternating, local only", _slime(), train_as="alternating",
              eval_runtime={"branches": "local", "gamma": 1.0}),
        Entry("end-to-end, global only", _slime(), train_as="end-to-end", eval_runtime={"branches": "global"}),
        Entry("end-to-end, local only", _slime(), train_as="end-to-end",
              eval_runtime={"branches": "local", "gamma": 1.0}),
        Entry("N_q = 4", _slime(local_queries=4), recipe="alternating"),
        Entry("N_q = 36", _slime(local_queries=36), recipe="alternating"),
        Entry("γ = 1.0", _slime(), train_as="alternating", eval_runtime={"gamma": 1.0}),
        Entry("γ = 0.75", _slime(), train_as="alternating", eval_runtime={"gamma": 0.75}),
        Entry("γ = 0.5", _slime(), train_as="alternating", eval_runtime={"gamma": 0.5}),
    ],
    # The strategies a user would pick instead (issue 19), on the same backbone and budget. The tiny
    # LM has 2 layers, so FastV prunes after layer 1 (the paper's K = 2 of 32 would leave nothing to prune).
    "strategies": [
        Entry("llava_hd", {"preset": "llava_hd", "grid_candidates": TINY_GRIDS}, note="anyres up to 3x3 tiles"),
        Entry("onevision", {"preset": "onevision-anyres-max-9"}, note="anyres_max_9: up to 6x6 grids, shrunk to 9 tiles"),
        Entry("internvl", {"preset": "internvl-dynamic"}, note="1-12 tiles + thumbnail, pixel shuffle (4x fewer)"),
        Entry("slime", _slime(), recipe="alternating", note="alternating stages, γ = 0.95"),
        Entry("llava_hd + FastV 50 %", {"preset": "llava_hd", "grid_candidates": TINY_GRIDS}, train_as="llava_hd",
              eval_reduction={"fastv_keep": 0.5, "fastv_layer": 1}, note="half the visual tokens dropped after LM layer 1"),
        Entry("llava_hd + VisionZip 25 %", {"preset": "llava_hd", "grid_candidates": TINY_GRIDS}, train_as="llava_hd",
              eval_reduction={"visionzip_keep": 0.25}, note="a quarter of each view's tokens, by the tower's CLS attention"),
        Entry("slime γ = 0.5", _slime(), train_as="slime", eval_runtime={"gamma": 0.5}, note="SliME's own text-guided drop"),
    ],
    "inf-llava-ablations": [
        Entry("official (both directions)", _inf()),
        Entry("enhance global only", _inf(directions="global_query")),
        Entry("enhance local only", _inf(directions="local_query")),
        Entry("crops fused by addition", _inf(enhancement="none", fusion="add")),
        Entry("fusion linear-concat", _inf(fusion="linear_concat")),
        Entry("fusion conv 3x3", _inf(fusion="conv3x3")),
        Entry("fusion multiply", _inf(fusion="multiply")),
        Entry("fusion weighted add", _inf(fusion="weighted_add")),
        Entry("fusion max", _inf(fusion="max")),
        Entry("local cropping only", _inf(cropping="local")),
        Entry("global cropping only", _inf(cropping="global")),
    ],
}


def _slug(name: str) -> str:
    keep = "".join(c if c.isalnum() else "_" for c in name.lower())
    return "_".join(p for p in keep.split("_") if p) or "model"


@dataclass
class Row:
    name: str
    method: str
    note: str
    visual_tokens: float
    visual_tokens_max: float
    accuracy: dict  # family → %
    overall: float
    existence_f1: float | None
    train_seconds: float
    images_per_second: float
    model_dir: str
    extra: dict = field(default_factory=dict)
