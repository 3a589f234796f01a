"""What every importer shares: the vision tower's source, the tokenizer, the LM's config and
rules, and the assembly of a checked state dict into a saved hires-vlm model directory.

A format module turns a source directory into an :class:`ImportSpec` (the tensors, a
:class:`~.keymap.KeyMap` for the connector and the LM, the method config, the LM and tower
configs, the tokenizer); :func:`assemble` builds our config, computes the shapes of our state
dict (on the meta device), maps and checks every tensor (:func:`~.keymap.remap`) and loads the
model; :func:`write_model_dir` saves it atomically with its processor.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field

import torch
from transformers import AutoConfig, AutoTokenizer, CLIPVisionConfig, GenerationConfig, PreTrainedConfig

from .. import fsio
from ..build import DTYPES, infer_template, load_vision_tower, vision_config_of
from ..imaging import CLIP_MEAN, CLIP_STD
from ..methods import MethodConfig
from ..model import HiResVLM, HiResVLMConfig, HiResVLMProcessor
from ..text import IMAGE_PLACEHOLDER, add_image_token, ensure_pad_token, get_template
from ..tiny import stop_token_ids
from .checkpoint import Checkpoint, CheckpointMismatch, read_json
from .keymap import KeyMap, RemapResult, arange_check, close_to, remap

logger = logging.getLogger(__name__)

#: Source-name prefix of the tower tensors taken from ``--vision`` (shown in error messages).
VISION_DIR_PREFIX = "--vision:"
TOWER_TARGET = "vision_tower.model."
REPORT_FILE = "import_report.json"

#: Towers that original-LLaVA-style checkpoints name in ``mm_vision_tower``, so that a checkpoint
#: holding the tower's weights needs no ``--vision`` for its config (values of the public configs).
KNOWN_TOWERS = {
    "openai/clip-vit-large-patch14-336": dict(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336,
        patch_size=14, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5),
    "openai/clip-vit-large-patch14": dict(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=224,
        patch_size=14, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5),
}

#: LLaVA-family ``model_type`` / ``architectures`` → the transformers LM they extend.
LLAVA_LM_TYPES = {"llava": "llama", "llava_llama": "llama", "llava_mistral": "mistral", "llava_mixtral": "mixtral",
                  "llava_qwen": "qwen2", "llama": "llama", "mistral": "mistral", "mixtral": "mixtral",
                  "qwen2": "qwen2"}
LLAVA_LM_ARCHS = {"LlavaLlamaForCausalLM": "llama", "LlavaMistralForCausalLM": "mistral",
                  "LlavaMixtralForCausalLM": "mixtral", "LlavaQwenForCausalLM": "qwen2",
                  "LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2"}
#: Keys of LLaVA-family configs that describe the multimodal part or the training run, not the LM.
LLAVA_ONLY_KEYS = {
    "image_aspect_ratio", "image_grid_pinpoints", "image_crop_resolution", "image_split_resolution",
    "tokenizer_model_max_length", "tokenizer_padding_side", "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter",
    "tune_mm_vision_resampler", "freeze_mm_vision_resampler", "unfreeze_mm_vision_tower", "use_mm_proj",
    "seperator", "use_local_only", "use_global_only", "architectures", "model_type", "_name_or_path",
    "transformers_version", "auto_map",
}


@dataclass
class VisionSource:
    """The tower: its config, normalisation, and its weights when they come from ``--vision``."""

    config: PreTrainedConfig
    mean: list[float]
    std: list[float]
    from_dir: str | None  # --vision directory whose weights are used, or None (in the checkpoint)


@dataclass
class ImportSpec:
    fmt: str
    src: str
    ckpt: Checkpoint
    keymap: KeyMap  # connector and LM rules (tower rules are added by ``assemble``)
    tower_prefixes: list[str]  # source prefixes of the tower's tensors
    method: MethodConfig
    text_config: PreTrainedConfig
    vision: VisionSource
    tokenizer: object
    vision_feature_layer: int = -2
    template: str | None = None
    max_length: int | None = None
    generation_config: GenerationConfig | None = None
    allow_missing: tuple[str, ...] = ()  # our prefixes that may stay freshly initialised
    notes: list[str] = field(default_factory=list)


@dataclass
class ImportResult:
    model: HiResVLM
    processor: HiResVLMProcessor
    remap: RemapResult
    notes: list[str]
    fmt: str
    src: str

    def report(self) -> dict:
        return {"format": self.fmt, "source": os.path.abspath(self.src), "notes": self.notes,
                "verified_not_loaded": self.remap.verified, "freshly_initialised": self.remap.fresh,
                "method": self.model.config.method, "parameters": self.remap.sources}


# ---------------------------------------------------------------------- vision tower
def _normalisation(path: str | None) -> tuple[list[float], list[float]] | None:
    if path and os.path.isfile(path):
        info = read_json(path)
        if "image_mean" in info and "image_std" in info:
            return list(info["image_mean"]), list(info["image_std"])
    return None


def vision_from_dir(vision_dir: str, use_weights: bool, ckpt: Checkpoint | None) -> VisionSource:
    """The tower of a local transformers checkpoint (full CLIP/SigLIP or the vision model alone).

    With ``use_weights`` its tensors are added to ``ckpt`` under :data:`VISION_DIR_PREFIX`.
    """
    if use_weights:
        model, vcfg, mean, std = load_vision_tower(vision_dir)
        assert ckpt is not None
        ckpt.add_tensors(model.state_dict(), origin=vision_dir, rename=lambda k: VISION_DIR_PREFIX + k)
        return VisionSource(vcfg, mean, std, vision_dir)
    if not os.path.isfile(os.path.join(vision_dir, "config.json")):
        raise FileNotFoundError(f"--vision directory {vision_dir!r} has no config.json")
    vcfg = vision_config_of(AutoConfig.from_pretrained(vision_dir))
    mean, std = _normalisation(os.path.join(vision_dir, "preprocessor_config.json")) or (list(CLIP_MEAN), list(CLIP_STD))
    return VisionSource(vcfg, mean, std, None)


def resolve_vision(tower_name: str | None, has_tower: bool, vision_dir: str | None, ckpt: Checkpoint,
                   notes: list[str]) -> VisionSource:
    """Where the tower comes from: the checkpoint's own tensors (config from ``--vision`` or a known
    public config), else ``--vision``'s weights; refuses when neither is there."""
    if has_tower:
        if vision_dir:
            notes.append(f"vision tower weights taken from the checkpoint; {vision_dir} gives only its config "
                         "and normalisation")
            return vision_from_dir(vision_dir, use_weights=False, ckpt=None)
        if tower_name in KNOWN_TOWERS:
            notes.append(f"vision tower weights from the checkpoint, config of {tower_name} (CLIP mean/std)")
            return VisionSource(CLIPVisionConfig(**KNOWN_TOWERS[tower_name]), list(CLIP_MEAN), list(CLIP_STD), None)
        raise ValueError(f"the checkpoint holds the vision tower's weights but its config is unknown "
                         f"(mm_vision_tower: {tower_name!r}); give a local copy of that tower with --vision DIR")
    if not vision_dir:
        raise ValueError(
            f"the checkpoint holds no vision tower weights (mm_vision_tower: {tower_name!r} names a hub repository "
            "that is loaded separately); give a local copy of that tower with --vision DIR"
        )
    notes.append(f"vision tower weights from --vision {vision_dir} (the checkpoint holds none)")
    return vision_from_dir(vision_dir, use_weights=True, ckpt=ckpt)


def check_vision_width(mm_hidden_size, vision: VisionSource) -> None:
    if mm_hidden_size is not None and int(mm_hidden_size) != int(vision.config.hidden_size):
        raise CheckpointMismatch(
            f"the checkpoint's projector takes {mm_hidden_size}-d features (mm_hidden_size) but the vision tower "
            f"is {vision.config.hidden_size}-d; give the tower the checkpoint was trained with (--vision)"
        )


def tower_rules(km: KeyMap, prefixes: list[str], target_keys) -> None:
    """Source tower prefixes → ``vision_tower.model.``: ``vision_model.`` dropped when our tower's own
    state dict has none (transformers v5's ``CLIPVisionModel``), ``position_ids`` buffers checked."""
    ours_wrapped = any(k.startswith(TOWER_TARGET + "vision_model.") for k in target_keys)
    for p in prefixes:
        km.verify("^" + re.escape(p) + r".*embeddings\.position_ids$", "position ids buffer", arange_check)
        if not ours_wrapped:
            km.prefix(p + "vision_model.", TOWER_TARGET)
        km.prefix(p, TOWER_TARGET)


# ---------------------------------------------------------------------- language model
def lm_config_from_llava(cfg: dict) -> PreTrainedConfig:
    """The causal LM's config inside a LLaVA-family config (LlavaLlamaForCausalLM → LlamaConfig, …)."""
    archs = cfg.get("architectures") or []
    lm_type = next((LLAVA_LM_ARCHS[a] for a in archs if a in LLAVA_LM_ARCHS), None)
    lm_type = lm_type or LLAVA_LM_TYPES.get(cfg.get("model_type", ""))
    if lm_type is None:
        raise CheckpointMismatch(
            f"cannot tell which language model this is (model_type {cfg.get('model_type')!r}, architectures {archs}); "
            f"supported: {sorted(set(LLAVA_LM_ARCHS))}"
        )
    rest = {k: v for k, v in cfg.items() if k not in LLAVA_ONLY_KEYS and not k.startswith("mm_")}
    return AutoConfig.for_model(lm_type, **rest)


def rope_check(text_config: PreTrainedConfig):
    """Check stored ``rotary_emb.inv_freq`` buffers (transformers < 4.35 saved them) against the default rope."""
    params = getattr(text_config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    theta = float(params.get("rope_theta", getattr(text_config, "rope_theta", 10000.0)))
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads

    def check(t: torch.Tensor) -> str | None:
        if rope_type != "default":
            return None  # scaled ropes compute their own frequencies; the stored buffer is not used either way
        expected = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        return close_to(expected, atol=1e-3 * float(expected.max()), what=f"the rope frequencies (θ={theta:g})")(t)

    return check


def lm_rules(km: KeyMap, text_config: PreTrainedConfig, body: str = "model.", head: str = "lm_head.") -> None:
    """An LLaVA-family LM: ``model.*`` → our LM's ``model.*``, ``lm_head.*`` → ``lm_head.*``."""
    km.verify(r"\.rotary_emb\.inv_freq$", "rotary frequencies", rope_check(text_config))
    km.prefix(head, "language_model.lm_head.")
    km.prefix(body, "language_model.model.")


def load_tokenizer(*dirs: str | None):
    """The tokenizer of the first directory that has one."""
    tried = []
    for d in dirs:
        if not d:
            continue
        tried.append(d)
        names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
        if any(os.path.isfile(os.path.join(d, n)) for n in names):
            from transformers.utils import logging as hf_logging

            # An LLaVA-family config.json next to the tokenizer has a model_type transformers does not know.
            level = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()
            try:
                return AutoTokenizer.from_pretrained(d)
            finally:
                hf_logging.set_verbosity(level)
    raise FileNotFoundError(f"no tokenizer in {tried}; give the LM's directory with --lm-dir")


def generation_config_from(src: str | None) -> GenerationConfig | None:
    if src and os.path.isfile(os.path.join(src, "generation_config.json")):
        return GenerationConfig.from_pretrained(src)
    return None


# ---------------------------------------------------------------------- assembly
def _embedding_names(model: HiResVLM) -> tuple[str, str | None]:
    """Our state-dict names of the LM's input and output embedding weights."""
    lm = model.language_model
    modules = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
    emb_name = modules[id(lm.get_input_embeddings())] + ".weight"
    head = lm.get_output_embeddings()
    return emb_name, (modules[id(head)] + ".weight" if head is not None else None)


def _meta_model(config: HiResVLMConfig) -> HiResVLM:
    with torch.device("meta"):
        return HiResVLM(config)


def _pad_rows(rows: int):
    """New vocabulary rows (added ``<image>``/``<pad>``): the mean of the trained rows."""

    def pad(t: torch.Tensor) -> torch.Tensor:
        if t.shape[0] >= rows:
            return t
        mean = t.float().mean(0, keepdim=True).to(t.dtype)
        return torch.cat([t, mean.expand(rows - t.shape[0], -1)], 0)

    return pad


def _final_keymap(spec: ImportSpec, target_keys) -> KeyMap:
    km = KeyMap()
    tower_rules(km, spec.tower_prefixes + [VISION_DIR_PREFIX], target_keys)
    km.rules += spec.keymap.rules
    return km


def assemble(spec: ImportSpec, dtype: str | torch.dtype | None = None) -> ImportResult:
    """Map and check every tensor of ``spec.ckpt`` onto a ``HiResVLM`` and load it; refuses on any mismatch."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not supported; choose one of {sorted(DTYPES)}")
        dtype = DTYPES[dtype]
    tok = spec.tokenizer
    had_image = IMAGE_PLACEHOLDER in tok.get_vocab()
    ensure_pad_token(tok)
    image_id = add_image_token(tok)
    template = spec.template or infer_template(tok)
    get_template(template)
    text_config = spec.text_config
    max_length = spec.max_length or int(getattr(text_config, "max_position_embeddings", 4096) or 4096)

    def make_config(vocab: int) -> HiResVLMConfig:
        text_config.vocab_size = vocab
        return HiResVLMConfig(
            vision_config=spec.vision.config.to_dict(), text_config=text_config.to_dict(),
            method=spec.method.to_dict(), image_token_id=image_id, vision_feature_layer=spec.vision_feature_layer,
            image_mean=spec.vision.mean, image_std=spec.vision.std, max_length=max_length, template=template,
        )

    # The vocabulary: the checkpoint's rows, grown if the tokenizer (with <image>/<pad>) has more.
    meta = _meta_model(make_config(int(text_config.vocab_size)))
    emb_name, head_name = _embedding_names(meta)
    km = _final_keymap(spec, meta.state_dict().keys())
    src_emb = [k for k in spec.ckpt.keys() if getattr(km.action(k), "target", None) == emb_name]
    if len(src_emb) != 1:
        raise CheckpointMismatch(f"{spec.src}: expected one input-embedding tensor for {emb_name}, found {src_emb}")
    src_rows = spec.ckpt.shape(src_emb[0])[0]
    vocab = max(src_rows, len(tok))
    config = make_config(vocab)
    meta = _meta_model(config)
    target_shapes = {k: v.shape for k, v in meta.state_dict().items()}
    tied = bool(getattr(config.text_config, "tie_word_embeddings", False))
    optional = {head_name} if tied and head_name else set()
    transforms = {emb_name: _pad_rows(vocab)}
    if head_name and head_name != emb_name:
        transforms[head_name] = _pad_rows(vocab)
    if dtype is None:
        dtype = spec.ckpt.tensor(src_emb[0]).dtype
    what = f"{spec.src} ({spec.fmt} format)"
    result = remap(spec.ckpt, km, target_shapes, what=what, transforms=transforms, optional=optional,
                   allow_missing=spec.allow_missing, dtype=dtype)
    notes = list(spec.notes)
    if vocab > src_rows:
        notes.append(f"vocabulary grown from {src_rows} to {vocab} rows for the tokens the tokenizer gained "
                     "(<image>, <pad>); their rows are the mean of the trained rows")
    if result.fresh:
        notes.append(f"{len(result.fresh)} connector parameter(s) not in the checkpoint were freshly initialised: "
                     + ", ".join(sorted({n.rsplit('.', 1)[0] for n in result.fresh}))[:400])

    model, info = super(HiResVLM, HiResVLM).from_pretrained(
        None, config=config, state_dict=result.state_dict, dtype=dtype, output_loading_info=True)
    leftover = set(info["missing_keys"]) - set(result.fresh) - optional
    if leftover or info["unexpected_keys"] or info["mismatched_keys"]:
        raise CheckpointMismatch(f"{what}: loading left missing {sorted(leftover)[:20]}, unexpected "
                                 f"{sorted(info['unexpected_keys'])[:20]}, mismatched {sorted(info['mismatched_keys'])[:20]}")
    model.vision_tower.requires_grad_(False)
    model.eval()

    gen = spec.generation_config or GenerationConfig(
        eos_token_id=stop_token_ids(tok, template), bos_token_id=tok.bos_token_id)
    gen.pad_token_id = tok.pad_token_id
    if not had_image:
        # <image> is a placeholder the model never predicts in the official code (there it is the sentinel −200).
        gen.suppress_tokens = sorted(set(gen.suppress_tokens or []) | {image_id})
    model.language_model.generation_config = gen
    processor = HiResVLMProcessor(tok, model.config)
    for n in notes:
        logger.info("import %s: %s", spec.fmt, n)
    return ImportResult(model, processor, result, notes, spec.fmt, spec.src)


def write_model_dir(result: ImportResult, out: str, overwrite: bool = False) -> str:
    """Save model + processor + ``import_report.json`` into ``out`` atomically (see :func:`fsio.staged_dir`)."""
    with fsio.staged_dir(out, overwrite=overwrite) as tmp:
        result.model.save_pretrained(tmp)
        result.processor.save_pretrained(tmp)
        fsio.atomic_write_json(tmp / REPORT_FILE, result.report())
    return os.path.abspath(out)
