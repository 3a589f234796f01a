"""``--format llava``: original LLaVA-1.5 (pad) and LLaVA-NeXT (anyres, spatial_unpad) checkpoints.

Reference: the same source tensors run through transformers' ``CLIPVisionModel`` and
``LlamaForCausalLM`` and a hand-written projector and token layout (haotian-liu/LLaVA's
``llava_arch.py``: base view, tiles as one raster, un-padding with ``int()``, newline per row).
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import LlamaForCausalLM

from hires_vlm.cli import main
from hires_vlm.importers import CheckpointMismatch, convert
from hires_vlm.model import HiResVLM, HiResVLMProcessor

from importer_parts import (clip_features, llava_config, mlp2x, plain_tokenizer, prefixed, rand, save_vision_dir,
                       tiny_clip, tiny_llama, write_checkpoint)
from official_rules import official_select_best_resolution

TILE, PATCH, DV = 56, 14, 32
PINPOINTS_WH = [[56, 112], [112, 56], [112, 112]]  # original LLaVA: (width, height)
TOWER_PREFIX = "model.vision_tower.vision_tower.vision_model."  # transformers 4.x CLIPVisionModel keys


class NotATensor:
    """A pickled object of a class: what ``torch.load(weights_only=True)`` must refuse."""


def _source(next_layout: bool, with_tower: bool, seed: int = 0):
    tok = plain_tokenizer()
    lm = tiny_llama(len(tok))
    tower = tiny_clip(TILE, PATCH, DV)
    g = torch.Generator().manual_seed(seed)
    dl = lm.config.hidden_size
    state = dict(lm.state_dict())
    proj = {"model.mm_projector.0.weight": rand(dl, DV, gen=g), "model.mm_projector.0.bias": rand(dl, gen=g),
            "model.mm_projector.2.weight": rand(dl, dl, gen=g), "model.mm_projector.2.bias": rand(dl, gen=g)}
    state.update(proj)
    if next_layout:
        state["model.image_newline"] = rand(dl, gen=g)
        mm = dict(image_aspect_ratio="anyres", image_grid_pinpoints=PINPOINTS_WH, mm_patch_merge_type="spatial_unpad")
    else:
        mm = dict(image_aspect_ratio="pad", mm_patch_merge_type="flat")
    if with_tower:
        state.update(prefixed(tower.state_dict(), TOWER_PREFIX))
        state[TOWER_PREFIX + "embeddings.position_ids"] = torch.arange((TILE // PATCH) ** 2 + 1)[None]
        state["model.layers.0.self_attn.rotary_emb.inv_freq"] = 1.0 / 10000 ** (torch.arange(0, 16, 2).double() / 16)
    cfg = llava_config(lm, mm_vision_tower="openai/clip-vit-large-patch14-336", mm_hidden_size=DV,
                       mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2, mm_vision_select_feature="patch",
                       tokenizer_model_max_length=512, **mm)
    return tok, lm, tower, state, cfg


@pytest.fixture(scope="module")
def llava15(tmp_path_factory):
    root = tmp_path_factory.mktemp("llava15")
    tok, lm, tower, state, cfg = _source(next_layout=False, with_tower=False)
    src = write_checkpoint(root / "src", state, cfg, tok, kind="bin")  # the legacy weights_only path
    vision = save_vision_dir(tower, root / "clip")
    return dict(src=src, vision=vision, lm=lm, tower=tower, state=state, root=root)


@pytest.fixture(scope="module")
def llava_next(tmp_path_factory):
    root = tmp_path_factory.mktemp("llava_next")
    tok, lm, tower, state, cfg = _source(next_layout=True, with_tower=True, seed=1)
    src = write_checkpoint(root / "src", state, cfg, tok, kind="sharded")
    # --vision gives only the config here: different weights, so using them by mistake would show.
    vision = save_vision_dir(tiny_clip(TILE, PATCH, DV, seed=5), root / "clip")
    return dict(src=src, vision=vision, lm=lm, tower=tower, state=state, root=root)


def _reference_lm(fx) -> LlamaForCausalLM:
    ref = LlamaForCausalLM(fx["lm"].config).eval()
    ref.load_state_dict({k: v for k, v in fx["state"].items() if k.startswith(("model.embed", "model.layers",
                                                                                 "model.norm", "lm_head"))
                         and "inv_freq" not in k}, strict=True)
    return ref


def _reference_logits(ref_lm, ids: torch.Tensor, image_id: int, visual: torch.Tensor) -> torch.Tensor:
    """LLaVA's merge: text embeddings with the <image> position replaced by the visual tokens."""
    ids = ids[0]
    pos = int((ids == image_id).nonzero())
    emb = ref_lm.get_input_embeddings()
    seq = torch.cat([emb(ids[:pos]), visual, emb(ids[pos + 1:])], 0)[None]
    with torch.no_grad():
        return ref_lm(inputs_embeds=seq).logits


def _projector(state, x):
    return mlp2x(x, state["model.mm_projector.0.weight"], state["model.mm_projector.0.bias"],
                 state["model.mm_projector.2.weight"], state["model.mm_projector.2.bias"])


def test_llava15_bin_matches_reference(llava15, tmp_path):
    out = tmp_path / "out"
    assert main(["import", "--format", "llava", "--src", llava15["src"], "--vision", llava15["vision"],
                 "--out", str(out)]) == 0
    model = HiResVLM.from_pretrained(out).eval()
    proc = HiResVLMProcessor.from_pretrained(out)
    state, vocab = llava15["state"], llava15["lm"].config.vocab_size
    assert model.config.method["name"] == "llava" and model.config.method["global_view"] == "pad"
    assert model.config.max_length == 512 and model.config.image_mean == [0.5] * 3
    assert len(proc.tokenizer) == vocab + 2  # <pad> and <image> added, rows grown to match
    assert model.language_model.get_input_embeddings().weight.shape[0] == vocab + 2
    assert all(not p.requires_grad for p in model.vision_tower.parameters())

    inputs = proc(["What is in the image?"], [Image.new("RGB", (100, 70), (200, 30, 30))])
    feats = clip_features(llava15["tower"], inputs["pixel_values"], -2)
    visual = _projector(state, feats[0])
    with torch.no_grad():
        ours = model(**inputs).logits
    ref_lm = _reference_lm(llava15)
    ref = _reference_logits(ref_lm, inputs["input_ids"], model.config.image_token_id, visual)
    torch.testing.assert_close(ours[..., :vocab], ref, rtol=1e-4, atol=1e-4)
    # The LM alone: the same logits as transformers' LlamaForCausalLM on the source tensors.
    ids = torch.tensor([[1, 40, 41, 42, 43, 7]])
    with torch.no_grad():
        torch.testing.assert_close(model.language_model(input_ids=ids).logits[..., :vocab], ref_lm(input_ids=ids).logits)
    assert model.generate(**inputs, max_new_tokens=2).shape == (1, 2)


def _next_layout(state, feats, image_size, newline):
    """haotian-liu/LLaVA ``spatial_unpad``: base, then tiles as one raster, unpadded (int()), newline per row."""
    g = TILE // PATCH
    cw, ch = official_select_best_resolution(image_size, PINPOINTS_WH)
    cols, rows = cw // TILE, ch // TILE
    proj = _projector(state, feats)
    base, tiles = proj[0], proj[1:]
    x = tiles.view(rows, cols, g, g, -1).permute(4, 0, 2, 1, 3).flatten(1, 2).flatten(2, 3)  # C x H x W
    w, h = image_size
    cur_h, cur_w = x.shape[1:]
    if w / h > cur_w / cur_h:
        new_h = int(h * (cur_w / w))
        pad = (cur_h - new_h) // 2
        x = x[:, pad:cur_h - pad, :]
    else:
        new_w = int(w * (cur_h / h))
        pad = (cur_w - new_w) // 2
        x = x[:, :, pad:cur_w - pad]
    x = torch.cat([x, newline[:, None, None].expand(*x.shape[:-1], 1)], -1)
    return torch.cat([base, x.flatten(1, 2).transpose(0, 1)], 0), (cols, rows)


def test_llava_next_sharded_with_tower_matches_reference(llava_next):
    # The checkpoint holds the tower: its config comes from --vision (weights from the checkpoint).
    res = convert("llava", llava_next["src"], vision=llava_next["vision"])
    model, proc, state = res.model, res.processor, llava_next["state"]
    cfg = model.config.method
    assert cfg["name"] == "llava_hd" and cfg["unpad"] and cfg["newline"]
    assert [tuple(c) for c in cfg["grid_candidates"]] == [(1, 2), (2, 1), (2, 2)]
    assert sorted(res.remap.verified) == ["model.layers.0.self_attn.rotary_emb.inv_freq",
                                          TOWER_PREFIX + "embeddings.position_ids"]
    size = (100, 70)
    inputs = proc(["Describe it."], [Image.new("RGB", size, (20, 160, 90))])
    feats = clip_features(llava_next["tower"], inputs["pixel_values"], -2)
    visual, grid = _next_layout(state, feats, size, state["model.image_newline"])
    assert tuple(proc.imaging_spec.record_for(size).grid) == grid == (2, 2)
    with torch.no_grad():
        out = model(**inputs)
    assert int(out.visual_tokens[0]) == visual.shape[0] == 16 + 6 * 9
    ref = _reference_logits(_reference_lm(llava_next), inputs["input_ids"], model.config.image_token_id, visual)
    torch.testing.assert_close(out.logits[..., :llava_next["lm"].config.vocab_size], ref, rtol=1e-4, atol=1e-4)


def test_llava_next_tower_config_from_known_name(llava_next):
    """No --vision: the checkpoint's tower with the public config its mm_vision_tower names (CLIP-L/14-336) —
    which does not fit this tiny tower, and the import says so before loading anything."""
    with pytest.raises(CheckpointMismatch, match=r"takes 32-d features \(mm_hidden_size\) but the vision tower is 1024-d"):
        convert("llava", llava_next["src"])


def test_llava_refuses_without_vision_tower(llava15):
    with pytest.raises(ValueError, match=r"holds no vision tower weights(.|\n)*--vision DIR"):
        convert("llava", llava15["src"])


def _write_variant(root, name, state, cfg, tok=None):
    return write_checkpoint(root / name, state, cfg, tok or plain_tokenizer())


def test_llava_refuses_mismatched_checkpoints(llava15, tmp_path):
    import json
    import os

    cfg = json.load(open(os.path.join(llava15["src"], "config.json")))
    base = dict(llava15["state"])

    missing = {k: v for k, v in base.items() if k != "model.mm_projector.2.bias"}
    with pytest.raises(CheckpointMismatch, match=r"1 parameter\(s\) of ours that the checkpoint does not give:\n"
                                                 r"    connector\.projector\.2\.bias \[64\]"):
        convert("llava", _write_variant(tmp_path, "missing", missing, cfg), vision=llava15["vision"])

    extra = {**base, "model.mm_projector.4.weight": torch.zeros(64, 64), "model.something_else": torch.zeros(3)}
    with pytest.raises(CheckpointMismatch) as err:
        convert("llava", _write_variant(tmp_path, "extra", extra, cfg), vision=llava15["vision"])
    msg = str(err.value)
    assert "2 source tensor(s) that no module of ours takes" in msg
    assert "model.mm_projector.4.weight [64, 64] → connector.projector.4.weight" in msg
    assert "model.something_else [3]" in msg

    wrong = {**base, "model.mm_projector.0.weight": torch.zeros(64, 16)}
    with pytest.raises(CheckpointMismatch, match=r"model\.mm_projector\.0\.weight \[64, 16\] → "
                                                 r"connector\.projector\.0\.weight expects \[64, 32\]"):
        convert("llava", _write_variant(tmp_path, "wrong", wrong, cfg), vision=llava15["vision"])

    with pytest.raises(CheckpointMismatch, match="mm_hidden_size"):
        convert("llava", _write_variant(tmp_path, "width", base, {**cfg, "mm_hidden_size": 48}),
                vision=llava15["vision"])


def test_llava_refuses_other_formats_and_bad_files(llava15, llava_next, tmp_path):
    with pytest.raises(CheckpointMismatch, match="looks like a llava checkpoint, not slime; use --format llava"):
        convert("slime", llava15["src"], vision=llava15["vision"])
    with pytest.raises(CheckpointMismatch, match="not llava_hf"):
        convert("llava_hf", llava_next["src"])
    # A .bin holding more than tensors is refused by torch.load(weights_only=True); nothing is written.
    import json
    import os

    bad = tmp_path / "bad"
    os.makedirs(bad)
    torch.save({"model.mm_projector.0.weight": torch.zeros(2), "code": NotATensor()}, bad / "pytorch_model.bin")
    (bad / "config.json").write_text(json.dumps(json.load(open(os.path.join(llava15["src"], "config.json")))))
    out = tmp_path / "never"
    assert main(["import", "--format", "llava", "--src", str(bad), "--vision", llava15["vision"],
                 "--out", str(out)]) == 2
    assert not out.exists()
    with pytest.raises(CheckpointMismatch, match="weights-only"):
        convert("llava", str(bad), vision=llava15["vision"])
    # A plain causal LM is no LLaVA checkpoint.
    plain = tmp_path / "plain"
    llava15["lm"].save_pretrained(plain)
    with pytest.raises(CheckpointMismatch, match="does not look like a llava checkpoint"):
        convert("llava", str(plain), vision=llava15["vision"])
