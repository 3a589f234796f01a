"""Build the tiny foundation: a contrastively pretrained vision tower and a text-pretrained LM.

Data: items of every benchmark family drawn from the generator's own ``foundation`` stream
(``[seed, tag, split code 2, family, index]``), a stream the benchmark's ``train`` (0) and
``test`` (1) splits never draw from, so no test image (nor any image of the same seed and index)
is seen; on top, every foundation image is drawn at a size of the benchmark's range but only
``S``-px crops and the low-resolution view of it are used.

1. **Vision tower** (``CLIPVisionModel``, tile ``S`` = 112 px): CLIP's contrastive objective
   between ``S``-px views — full-resolution crops and the whole image at low resolution — and
   their procedural captions (:mod:`hires_vlm.data.synthetic.captions`) read by a small text
   tower (``CLIPTextModel``, discarded afterwards). Captions repeat (a caption names content, not
   an instance), so the targets of the symmetric cross-entropy are all views with the same
   caption (a multi-positive InfoNCE); the text tower encodes each distinct caption once.
2. **Language model** (``LlamaForCausalLM``): causal LM on the text side of the same items —
   each family's questions with their answers and "Describe the image." with the captions — in
   the chat template, loss on the answers (the questions are the context): the vocabulary, the
   template and the answer formats, no image.

Deterministic for a seed (fixed draws, ``torch.manual_seed``, one thread order).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .. import fsio
from ..data.synthetic.drawing import VERSION as BENCHMARK_VERSION
from .store import FORMAT, LM_FILE, MANIFEST, TOKENIZER_DIR, VISION_FILE, hashed_files


@dataclass
class FoundationRecipe:
    """Everything that makes a foundation (recorded in its manifest)."""

    seed: int = 0
    items_per_family: int = 400
    crops_per_item: int = 3
    tile_size: int = 112
    patch_size: int = 14
    vision_hidden: int = 256
    vision_layers: int = 3
    text_hidden: int = 128
    text_layers: int = 2
    vocab_size: int = 1024
    vision_steps: int = 1200
    vision_batch: int = 128
    vision_lr: float = 1.0e-3
    lm_steps: int = 600
    lm_batch: int = 32
    lm_lr: float = 2.0e-3
    families: list[str] = field(default_factory=list)  # empty: every family


# --------------------------------------------------------------------------------------- the data
def draw_items(recipe: FoundationRecipe, progress: bool = False):
    """Every foundation item (``Sample``), family by family, balanced answers."""
    from tqdm.auto import tqdm

    from ..data.synthetic import DEFAULT_SIZE_RANGE, FAMILIES
    from ..data.synthetic.drawing import _TAG_SCHEDULE
    from ..data.synthetic.families import _draw_item, _family_code, _min_long, _Opts

    names = recipe.families or list(FAMILIES)
    items = []
    bar = tqdm(total=len(names) * recipe.items_per_family, desc="drawing", disable=not progress, leave=False)
    for name in names:
        fam = FAMILIES[name]
        rng = np.random.default_rng([recipe.seed, _TAG_SCHEDULE, 2, _family_code(name)])
        for index, (qtype, answer) in enumerate(fam.schedule(recipe.items_per_family, rng)):
            items.append(_draw_item(fam, recipe.seed, "foundation", index, 0, qtype, answer, DEFAULT_SIZE_RANGE,
                                    _min_long(None, recipe.tile_size), _Opts(tile_size=recipe.tile_size)))
            bar.update(1)
    bar.close()
    return items


def caption_pool(items, recipe: FoundationRecipe) -> tuple[np.ndarray, list[str]]:
    """``[N x S x S x 3]`` uint8 views and their captions."""
    from ..data.synthetic.captions import caption_views

    views, captions = [], []
    for k, sample in enumerate(items):
        rng = np.random.default_rng([recipe.seed, 7, k])
        for img, cap in caption_views(sample, rng, recipe.tile_size, recipe.crops_per_item):
            views.append(img)
            captions.append(cap)
    return np.stack(views), captions


def text_conversations(items) -> list[list[dict]]:
    """The LM's pretraining conversations: question → answer, and describe → caption."""
    from ..data.synthetic.captions import image_caption

    out = []
    for s in items:
        out.append([{"from": "human", "value": s.question}, {"from": "gpt", "value": s.answer}])
        out.append([{"from": "human", "value": "Describe the image."}, {"from": "gpt", "value": image_caption(s)}])
    return out


def build_tokenizer(items, captions: list[str], recipe: FoundationRecipe):
    from ..data.synthetic import question_vocabulary
    from ..text import add_image_token, build_bpe_tokenizer

    corpus = sorted(set(captions)) + [" ".join(question_vocabulary())] + sorted({s.question for s in items})
    tok = build_bpe_tokenizer(corpus, vocab_size=recipe.vocab_size, template="chatml")
    add_image_token(tok)
    return tok


# --------------------------------------------------------------------------------------- training
def _lr_at(step: int, total: int, base: float, warmup: float = 0.05) -> float:
    w = max(1, int(round(warmup * total)))
    if step < w:
        return base * (step + 1) / w
    return base * 0.5 * (1.0 + math.cos(math.pi * (step - w) / max(1, total - w)))


def _set_lr(opt, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


class _Contrastive(torch.nn.Module):
    def __init__(self, vision, text, dim: int):
        super().__init__()
        self.vision, self.text = vision, text
        self.v_proj = torch.nn.Linear(vision.config.hidden_size, dim, bias=False)
        self.t_proj = torch.nn.Linear(text.config.hidden_size, dim, bias=False)
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, pixels, ids, mask, targets):
        v = F.normalize(self.v_proj(self.vision(pixel_values=pixels).pooler_output), dim=-1)
        h = self.text(input_ids=ids, attention_mask=mask).last_hidden_state
        t = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # mean over the caption's tokens
        t = F.normalize(self.t_proj(t), dim=-1)
        logits = self.logit_scale.clamp(max=math.log(100)).exp() * v @ t.T  # [views, distinct captions]
        # views → captions: one right caption each; captions → views: every view with that caption.
        loss_v = F.cross_entropy(logits, targets)
        onehot = F.one_hot(targets, logits.shape[1]).T.float()
        loss_t = -(onehot / onehot.sum(1, keepdim=True) * logits.T.log_softmax(-1)).sum(1).mean()
        acc = (logits.argmax(1) == targets).float().mean()
        return 0.5 * (loss_v + loss_t), acc


def _normalise(views: np.ndarray) -> torch.Tensor:
    from ..imaging import CLIP_MEAN, CLIP_STD

    x = torch.from_numpy(views).float().div_(255.0).permute(0, 3, 1, 2)
    return (x - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]


def train_vision(views: np.ndarray, captions: list[str], tokenizer, recipe: FoundationRecipe, progress: bool):
    from tqdm.auto import tqdm
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionModel

    from ..tiny import tiny_vision_config

    torch.manual_seed(recipe.seed)
    vcfg = tiny_vision_config(recipe.tile_size, recipe.patch_size, recipe.vision_hidden, recipe.vision_layers)
    vision = CLIPVisionModel(vcfg)
    distinct = sorted(set(captions))
    cap_index = {c: i for i, c in enumerate(distinct)}
    enc = tokenizer(distinct, add_special_tokens=False, padding=True, return_tensors="pt")
    tcfg = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=max(16, enc["input_ids"].shape[1]),
                          projection_dim=128, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                          bos_token_id=tokenizer.bos_token_id)
    model = _Contrastive(vision, CLIPTextModel(tcfg), 128)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.vision_lr, weight_decay=0.05)
    labels = np.array([cap_index[c] for c in captions])
    rng = np.random.default_rng([recipe.seed, 11])
    history = []
    bar = tqdm(range(recipe.vision_steps), desc="vision tower (contrastive)", disable=not progress)
    for step in bar:
        idx = rng.choice(len(views), size=min(recipe.vision_batch, len(views)), replace=False)
        batch_caps, targets = np.unique(labels[idx], return_inverse=True)
        ids, mask = enc["input_ids"][batch_caps], enc["attention_mask"][batch_caps].float()
        _set_lr(opt, _lr_at(step, recipe.vision_steps, recipe.vision_lr))
        loss, acc = model(_normalise(views[idx]), ids, mask, torch.from_numpy(targets))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        history.append({"step": step, "loss": loss.item(), "acc": acc.item()})
        bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", acc=f"{history[-1]['acc']:.2f}")
    tail = history[-max(1, len(history) // 10):]
    metrics = {"final_loss": float(np.mean([h["loss"] for h in tail])),
               "final_batch_retrieval_accuracy": float(np.mean([h["acc"] for h in tail])),
               "distinct_captions": len(distinct), "views": len(views)}
    return vision, vcfg, metrics


def train_lm(conversations: list[list[dict]], tokenizer, recipe: FoundationRecipe, progress: bool):
    from tqdm.auto import tqdm
    from transformers import LlamaForCausalLM

    from ..text import ConversationEncoder, get_template
    from ..tiny import tiny_text_config

    encoder = ConversationEncoder(tokenizer, get_template("chatml"), tokenizer.convert_tokens_to_ids("<image>"))
    encoded = [encoder.encode(c, []) for c in conversations]
    torch.manual_seed(recipe.seed + 1)
    cfg = tiny_text_config(len(tokenizer), recipe.text_hidden, recipe.text_layers, tokenizer.pad_token_id,
                           tokenizer.bos_token_id, tokenizer.eos_token_id)
    lm = LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(lm.parameters(), lr=recipe.lm_lr, weight_decay=0.0)
    rng = np.random.default_rng([recipe.seed, 13])
    losses = []
    bar = tqdm(range(recipe.lm_steps), desc="language model", disable=not progress)
    for step in bar:
        idx = rng.choice(len(encoded), size=min(recipe.lm_batch, len(encoded)), replace=False)
        longest = max(len(encoded[i].input_ids) for i in idx)
        ids = torch.full((len(idx), longest), tokenizer.pad_token_id)
        labels = torch.full((len(idx), longest), -100)
        mask = torch.zeros((len(idx), longest), dtype=torch.long)
        for r, i in enumerate(idx):
            e = encoded[i]
            ids[r, :len(e.input_ids)] = torch.tensor(e.input_ids)
            labels[r, :len(e.labels)] = torch.tensor(e.labels)
            mask[r, :len(e.input_ids)] = 1
        _set_lr(opt, _lr_at(step, recipe.lm_steps, recipe.lm_lr))
        loss = lm(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    tail = losses[-max(1, len(losses) // 10):]
    return lm, cfg, {"final_loss": float(np.mean(tail)), "conversations": len(conversations)}


# ----------------------------------------------------------------------------------------- writing
def _model_card(manifest: dict) -> str:
    r, m = manifest["recipe"], manifest["metrics"]
    return f"""# {manifest['name']}

The tiny foundation of hires-vlm's main job: a vision tower and a language model pretrained on the
visual world of the embedded synthetic benchmark, on which the demo trains every method's connector
with the tower frozen — the regime of both papers (a frozen CLIP, a pretrained LLM), at toy size.

| part | architecture | trained on | objective | steps × batch |
|---|---|---|---|---|
| vision tower | CLIP ViT, {r['tile_size']} px tiles, {r['patch_size']} px patches, width {r['vision_hidden']}, {r['vision_layers']} layers | {m['vision']['views']} views ({r['crops_per_item']} full-resolution {r['tile_size']} px crops + the low-resolution view of each of {r['items_per_family']} items per family) with {m['vision']['distinct_captions']} distinct procedural captions | CLIP contrastive (multi-positive InfoNCE) against a 2-layer text tower, discarded | {r['vision_steps']} × {r['vision_batch']} |
| language model | Llama, width {r['text_hidden']}, {r['text_layers']} layers, vocabulary {manifest['sizes']['vocab_size']} (byte-level BPE) | {m['language_model']['conversations']} text conversations (each family's questions with answers; "Describe the image." with captions), no image | causal LM on the answers, chat template | {r['lm_steps']} × {r['lm_batch']} |

Data: the `foundation` stream of the benchmark generator `{manifest.get('benchmark', '(version not recorded)')}` (split code 2, seed {r['seed']}), which the
benchmark's `train` and `test` splits never draw from. Final contrastive loss
{m['vision']['final_loss']:.3f} (in-batch retrieval accuracy {100 * m['vision']['final_batch_retrieval_accuracy']:.1f} %);
final LM loss {m['language_model']['final_loss']:.3f}.

Rebuild (deterministic for a seed): `hires-vlm foundation build --out DIR --seed {r['seed']}`;
check: `hires-vlm foundation verify [DIR]`. Weights are float16 safetensors; hashes in `foundation.json`.
Not a general-purpose model: it has seen nothing but this benchmark's drawings and phrases.
"""


def build_foundation(out_dir: str, recipe: FoundationRecipe | None = None, *, overwrite: bool = False,
                     progress: bool = True, name: str = "hires-vlm-tiny-foundation") -> str:
    """Pretrain both parts and write the foundation into ``out_dir`` (atomically)."""
    import transformers
    from safetensors.torch import save_file

    recipe = recipe or FoundationRecipe()
    fsio.refuse_occupied(out_dir, overwrite)
    start = time.time()
    items = draw_items(recipe, progress)
    views, captions = caption_pool(items, recipe)
    tokenizer = build_tokenizer(items, captions, recipe)
    vision, vcfg, v_metrics = train_vision(views, captions, tokenizer, recipe, progress)
    lm, tcfg, t_metrics = train_lm(text_conversations(items), tokenizer, recipe, progress)
    with fsio.staged_dir(out_dir, overwrite=overwrite) as tmp:
        save_file({k: v.detach().to(torch.float16).contiguous() for k, v in vision.state_dict().items()},
                  os.path.join(tmp, VISION_FILE), metadata={"format": "pt"})
        save_file({k: v.detach().to(torch.float16).contiguous() for k, v in lm.state_dict().items()},
                  os.path.join(tmp, LM_FILE), metadata={"format": "pt"})
        tokenizer.save_pretrained(os.path.join(tmp, TOKENIZER_DIR))
        manifest = {
            "format": FORMAT, "name": name, "recipe": asdict(recipe), "benchmark": BENCHMARK_VERSION,
            "sizes": {"tile_size": recipe.tile_size, "patch_size": recipe.patch_size,
                      "vision_hidden": recipe.vision_hidden, "vision_layers": recipe.vision_layers,
                      "text_hidden": recipe.text_hidden, "text_layers": recipe.text_layers,
                      "vocab_size": len(tokenizer)},
            "vision_config": vcfg.to_diff_dict(), "text_config": tcfg.to_diff_dict(),
            "metrics": {"vision": v_metrics, "language_model": t_metrics, "seconds": round(time.time() - start, 1)},
            "built_with": {"torch": torch.__version__, "transformers": transformers.__version__},
        }
        with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
            f.write(_model_card(manifest))
        manifest["files"] = hashed_files(tmp)
        with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.write("\n")
    return out_dir
