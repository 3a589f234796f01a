"""``--format slime``: SliME's ``LlavaLlamaForCausalLM`` with the gated mixture and the local compressor.

Reference: the official computation written with plain torch ops on the *source* tensors —
``F.multi_head_attention_forward`` with the checkpoint's ``in_proj``/``out_proj`` for both
resamplers (queries + the stored sin-cos table, keys + the table resized bicubically), the gate
``softmax(x · w_gate)`` renormalised as ``noisy_top_k_gating`` (k = 2 of 2), the spatial raster of
the compressed tiles, the cosine router (masked sum, [softmax(·/0.5)], softmax, cumsum ≤ γ plus
one, ascending) and the ``seperator`` embedding — then ``LlamaForCausalLM`` on the merged sequence.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import LlamaForCausalLM

from hires_vlm.cli import main
from hires_vlm.importers import CheckpointMismatch, convert
from hires_vlm.model import HiResVLM

from importer_parts import (clip_features, llava_config, mlp2x, plain_tokenizer, rand, save_vision_dir, tiny_clip,
                            tiny_llama, write_checkpoint)

TILE, PATCH, DV = 48, 2, 256  # 24x24 tokens per view (the official GatedBlock's 576), 256 // 128 = 2 heads
LOCAL_Q = 16  # mm_resampler_dim: a 4x4 query grid per tile
TOPP = 0.6


def official_sincos(dim: int, grid: int) -> torch.Tensor:
    """SliME's get_2d_sincos_pos_embed, in float32 numpy as the official code (meshgrid width first)."""
    gh = np.arange(grid, dtype=np.float32)
    gw = np.arange(grid, dtype=np.float32)
    g = np.stack(np.meshgrid(gw, gh), axis=0).reshape([2, 1, grid, grid])

    def one(d, pos):
        omega = np.arange(d // 2, dtype=np.float32) / (d / 2.0)
        omega = 1.0 / 10000 ** omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return torch.from_numpy(np.concatenate([one(dim // 2, g[0]), one(dim // 2, g[1])], axis=1)).float()


def resampler_tensors(prefix: str, queries: int, gen) -> dict:
    grid = math.isqrt(queries)
    # pos_embed as the official Resampler stores it: a frozen fp16 parameter (sampler.py, `.half()`)
    t = {prefix + "query": rand(queries, DV, scale=0.02, gen=gen), prefix + "pos_embed": official_sincos(DV, grid).half(),
         prefix + "attn.in_proj_weight": rand(3 * DV, DV, scale=0.06, gen=gen),
         prefix + "attn.in_proj_bias": rand(3 * DV, scale=0.1, gen=gen),
         prefix + "attn.out_proj.weight": rand(DV, DV, scale=0.06, gen=gen),
         prefix + "attn.out_proj.bias": rand(DV, scale=0.1, gen=gen)}
    for ln in ("ln_q", "ln_kv", "ln_post"):
        t[f"{prefix}{ln}.weight"] = 1 + rand(DV, scale=0.1, gen=gen)
        t[f"{prefix}{ln}.bias"] = rand(DV, scale=0.1, gen=gen)
    return t


def slime_parts(seed: int = 0):
    tok = plain_tokenizer()
    lm = tiny_llama(len(tok))
    tower = tiny_clip(TILE, PATCH, DV, heads=4)
    gen = torch.Generator().manual_seed(seed)
    dl = lm.config.hidden_size
    proj = {"model.mm_projector.projection.0.weight": rand(dl, DV, scale=0.1, gen=gen),
            "model.mm_projector.projection.0.bias": rand(dl, scale=0.1, gen=gen),
            "model.mm_projector.projection.2.weight": rand(dl, dl, scale=0.2, gen=gen),
            "model.mm_projector.projection.2.bias": rand(dl, scale=0.1, gen=gen),
            "model.mm_projector.w_gate": rand(DV, 2, scale=0.1, gen=gen).bfloat16(),  # bf16, as official
            "model.mm_projector.w_noise": rand(DV, 2, scale=0.1, gen=gen).bfloat16(),
            "model.mm_projector.mean": torch.tensor([0.0], dtype=torch.bfloat16),
            "model.mm_projector.std": torch.tensor([1.0], dtype=torch.bfloat16)}
    proj.update(resampler_tensors("model.mm_projector.attn.", (TILE // PATCH) ** 2, gen))
    sampler = resampler_tensors("model.sampler.post_qformer.", LOCAL_Q, gen)
    comma = tok(",", add_special_tokens=False)["input_ids"][-1]
    cfg = llava_config(lm, mm_vision_tower="openai/clip-vit-large-patch14-336", mm_hidden_size=DV,
                       mm_projector_type="gated", mm_learnable_gated=-1, mm_vision_select_layer=-2,
                       mm_vision_select_feature="patch", mm_resampler_type="cosine", mm_resampler_dim=LOCAL_Q,
                       mm_resampler_topp=TOPP, mm_resampler_temp=1.0, mm_patch_merge_type="spatial",
                       image_aspect_ratio="anyres", image_grid_pinpoints=[[672, 672], [336, 672]], seperator=comma,
                       tokenizer_model_max_length=2048, use_local_only=False, use_global_only=False)
    return tok, lm, tower, proj, sampler, cfg


@pytest.fixture(scope="module")
def slime(tmp_path_factory):
    root = tmp_path_factory.mktemp("slime")
    tok, lm, tower, proj, sampler, cfg = slime_parts()
    state = {**lm.state_dict(), **proj, **sampler}
    src = write_checkpoint(root / "src", state, cfg, tok)
    vision = save_vision_dir(tower, root / "clip")
    return dict(root=root, src=src, vision=vision, tok=tok, lm=lm, tower=tower, proj=proj, sampler=sampler, cfg=cfg,
                state=state)


# ---------------------------------------------------------------------- the official computation
def official_resampler(x: torch.Tensor, t: dict, prefix: str) -> torch.Tensor:
    """``Resampler.forward`` of SliME: x [n x t x d] → [n x q x d]."""
    heads = DV // 128
    pos = t[prefix + "pos_embed"].float()
    src_grid, tgt_grid = math.isqrt(pos.shape[0]), math.isqrt(x.shape[1])
    pos_k = F.interpolate(pos.reshape(1, src_grid, src_grid, -1).permute(0, 3, 1, 2), size=(tgt_grid, tgt_grid),
                          mode="bicubic", align_corners=False).permute(0, 2, 3, 1).flatten(0, 2)
    kv = F.layer_norm(x, (DV,), t[prefix + "ln_kv.weight"], t[prefix + "ln_kv.bias"], 1e-6).permute(1, 0, 2)
    q = F.layer_norm(t[prefix + "query"], (DV,), t[prefix + "ln_q.weight"], t[prefix + "ln_q.bias"], 1e-6)
    q = q.unsqueeze(1).repeat(1, x.shape[0], 1) + pos.unsqueeze(1)
    out, _ = F.multi_head_attention_forward(
        q, kv + pos_k.unsqueeze(1), kv, DV, heads, t[prefix + "attn.in_proj_weight"], t[prefix + "attn.in_proj_bias"],
        None, None, False, 0.0, t[prefix + "attn.out_proj.weight"], t[prefix + "attn.out_proj.bias"],
        training=False, need_weights=False)
    return F.layer_norm(out.permute(1, 0, 2), (DV,), t[prefix + "ln_post.weight"], t[prefix + "ln_post.bias"], 1e-6)


def official_projection(x, t):
    p = "model.mm_projector.projection."
    return mlp2x(x, t[p + "0.weight"], t[p + "0.bias"], t[p + "2.weight"], t[p + "2.bias"])


def official_global(x: torch.Tensor, t: dict):
    """GatedBlock.forward in eval: x [576 x d] → tokens [576 x dl], gates [576 x 2]."""
    experts = [official_projection(x, t), official_projection(official_resampler(x[None], t, "model.mm_projector.attn.")[0], t)]
    logits = torch.softmax(x @ t["model.mm_projector.w_gate"].float(), dim=1)
    top, idx = logits.topk(2, dim=1)
    gates = torch.zeros_like(logits).scatter(1, idx, top / (top.sum(1, keepdim=True) + 1e-6))
    out = torch.matmul(torch.stack(experts, -1), gates.unsqueeze(-1)).squeeze(-1)
    return out, gates


def official_router(local: torch.Tensor, text: torch.Tensor, pre_softmax: bool) -> torch.Tensor:
    sim = F.cosine_similarity(local.unsqueeze(1), text.unsqueeze(0), dim=-1).sum(-1)
    if pre_softmax:  # the official code until Nov 2024
        sim = torch.softmax(sim / 0.5, dim=-1)
    probs = torch.softmax(sim / 1.0, dim=-1)
    sorted_probs, order = torch.sort(probs, descending=True)
    sel = (torch.cumsum(sorted_probs, 0) <= TOPP).nonzero(as_tuple=True)[0]
    if sel.numel() < order.numel():
        sel = order[:sel.numel() + 1]
    return sel.sort().values


def official_visual(fx, feats, grid, text_emb, embed, pre_softmax):
    t = {**fx["proj"], **fx["sampler"]}
    glob, gates = official_global(feats[0], t)
    cols, rows = grid
    q = math.isqrt(LOCAL_Q)
    local = official_projection(official_resampler(feats[1:], t, "model.sampler.post_qformer."), t)
    local = local.view(rows, cols, q, q, -1).permute(0, 2, 1, 3, 4).flatten(0, 3)
    keep = official_router(local, text_emb, pre_softmax)
    sep = embed(torch.tensor([fx["cfg"]["seperator"]]))
    return torch.cat([glob, sep, local[keep]], 0), gates, keep, local


@pytest.mark.parametrize("router,preset", [("release", "slime-release"), ("head", "slime")])
def test_slime_matches_official_computation(slime, router, preset):
    res = convert("slime", slime["src"], vision=slime["vision"], slime_router=router)
    model, proc = res.model, res.processor
    m = model.config.method
    assert (m["name"], m["gamma"], m["local_queries"], m["resampler_heads"]) == ("slime", TOPP, LOCAL_Q, 2)
    assert m["separator"] == "token" and m["separator_token_id"] == slime["cfg"]["seperator"]
    assert m["router_pre_softmax"] == (0.5 if router == "release" else None)
    assert any(preset in n for n in res.notes)
    assert sorted(res.remap.verified) == ["model.mm_projector.mean", "model.mm_projector.std"]
    # The checkpoint's own fp16 position tables are kept (the numbers the official forward adds).
    for ours, theirs in (("mixture.resampler", "model.mm_projector.attn.pos_embed"),
                         ("local_compressor", "model.sampler.post_qformer.pos_embed")):
        table = getattr(model.connector, ours.split(".")[0])
        table = table.resampler.pos_table if ours.startswith("mixture") else table.pos_table
        assert torch.equal(table, slime["state"][theirs].float())

    size = (100, 70)
    inputs = proc(["Which colour is the circle in the top left?"], [Image.new("RGB", size, (240, 240, 240))])
    rec = proc.imaging_spec.record_for(size)
    feats = clip_features(slime["tower"], inputs["pixel_values"], -2)
    ref_lm = LlamaForCausalLM(slime["lm"].config).eval()
    ref_lm.load_state_dict(dict(slime["lm"].state_dict()))
    ids = inputs["input_ids"][0]
    image_id = model.config.image_token_id
    embed = ref_lm.get_input_embeddings()
    with torch.no_grad():
        text = embed(ids[ids != image_id])  # the official get_pure_text_embedding: every non-image token
        visual, gates, keep, local = official_visual(slime, feats, tuple(rec.grid), text, embed, router == "release")
        other = official_router(local, text, router != "release")
        merged = model.merge_inputs(inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"],
                                    inputs["image_sizes"])
        out = model(**inputs)
    n_local = rec.grid[0] * rec.grid[1] * LOCAL_Q
    assert 0 < keep.numel() < n_local  # the router really selects,
    assert not torch.equal(other, keep)  # and differently with and without the pre-Nov-2024 softmax
    assert torch.equal(merged.visual_aux["router_keep"][0], keep)
    torch.testing.assert_close(merged.visual_aux["gate_weights"][0], gates, rtol=1e-4, atol=1e-5)
    pos = int((ids == image_id).nonzero())
    torch.testing.assert_close(merged.inputs_embeds[0, pos:pos + visual.shape[0]], visual, rtol=1e-4, atol=1e-4)
    seq = torch.cat([embed(ids[:pos]), visual, embed(ids[pos + 1:])])[None]
    with torch.no_grad():
        ref = ref_lm(inputs_embeds=seq).logits
    torch.testing.assert_close(out.logits[..., :ref.shape[-1]], ref, rtol=1e-4, atol=1e-4)


def test_recomputed_position_tables_are_float32_and_move_the_outputs(slime):
    kept = convert("slime", slime["src"], vision=slime["vision"])
    redo = convert("slime", slime["src"], vision=slime["vision"], pos_embed="recompute")
    from hires_vlm.connectors import sincos_2d

    assert torch.equal(redo.model.connector.local_compressor.pos_table, sincos_2d(DV, math.isqrt(LOCAL_Q)))
    assert not torch.equal(kept.model.connector.local_compressor.pos_table,
                           redo.model.connector.local_compressor.pos_table)
    x = torch.randn(2, (TILE // PATCH) ** 2, DV)
    with torch.no_grad():
        a, b = kept.model.connector.local_compressor(x), redo.model.connector.local_compressor(x)
    assert 0 < (a - b).abs().max() < 1e-2


def test_slime_cli_writes_loadable_dir(slime, tmp_path):
    out = tmp_path / "slime-out"
    assert main(["import", "--format", "slime", "--src", slime["src"], "--vision", slime["vision"],
                 "--out", str(out)]) == 0
    model = HiResVLM.from_pretrained(out)
    assert model.config.method["router_pre_softmax"] == 0.5  # default: the released checkpoints' router
    w = model.connector.mixture.gate.w_gate
    torch.testing.assert_close(w, slime["proj"]["model.mm_projector.w_gate"].float())
    assert (out / "import_report.json").is_file()
    assert main(["import", "--format", "slime", "--src", slime["src"], "--vision", slime["vision"],
                 "--out", str(out)]) == 2  # exists: refused without --overwrite
    assert main(["import", "--format", "slime", "--src", slime["src"], "--vision", slime["vision"],
                 "--out", str(out), "--overwrite", "--dtype", "bfloat16", "--slime-router", "head"]) == 0
    model = HiResVLM.from_pretrained(out)
    assert model.config.method["router_pre_softmax"] is None
    assert model.connector.projector[0].weight.dtype == torch.bfloat16
    assert sorted(p.name for p in out.parent.iterdir()) == ["slime-out"]  # no temporary directories left


def test_slime_pos_embed_checks(slime, tmp_path):
    """The stored sin-cos tables pass in fp16/bf16 (as saved) and as NaN (the official forward rebuilds
    them); a table that is not the official one is refused."""
    state = dict(slime["state"])
    state["model.mm_projector.attn.pos_embed"] = state["model.mm_projector.attn.pos_embed"].half()
    state["model.sampler.post_qformer.pos_embed"] = torch.full((LOCAL_Q, DV), float("nan"))
    ok = write_checkpoint(tmp_path / "ok", state, slime["cfg"], slime["tok"])
    convert("slime", ok, vision=slime["vision"])
    state["model.sampler.post_qformer.pos_embed"] = official_sincos(DV, 4).T.reshape(LOCAL_Q, DV).contiguous()
    bad = write_checkpoint(tmp_path / "bad", state, slime["cfg"], slime["tok"])
    with pytest.raises(CheckpointMismatch, match=r"post_qformer\.pos_embed \(local compressor's fixed position "
                                                 r"table\): differs from the 4x4 2-D sin-cos table"):
        convert("slime", bad, vision=slime["vision"])


def test_slime_refuses_mismatches(slime, tmp_path):
    state = {k: v for k, v in slime["state"].items() if k != "model.mm_projector.w_noise"}
    state["model.sampler.selector.query"] = torch.zeros(1, 64)
    state["model.mm_projector.attn.query"] = torch.zeros(144, DV)
    bad = write_checkpoint(tmp_path / "bad", state, slime["cfg"], slime["tok"])
    with pytest.raises(CheckpointMismatch) as err:
        convert("slime", bad, vision=slime["vision"])
    msg = str(err.value)
    assert "connector.mixture.gate.w_noise [256, 2]" in msg
    assert "model.sampler.selector.query: the learnable 'qformer' router is not supported" in msg
    assert "model.mm_projector.attn.query [144, 256] → connector.mixture.resampler.query expects [576, 256]" in msg
    flat = write_checkpoint(tmp_path / "flat", slime["state"], {**slime["cfg"], "mm_patch_merge_type": "flat"},
                            slime["tok"])
    with pytest.raises(CheckpointMismatch, match="mm_patch_merge_type 'flat'"):
        convert("slime", flat, vision=slime["vision"])
    with pytest.raises(CheckpointMismatch, match="looks like a slime checkpoint, not llava"):
        convert("llava", slime["src"], vision=slime["vision"])


def test_slime_stage_adapters(slime, tmp_path):
    """Stage files over a base LM: mm_projector.bin (+ sampler.bin); stage 1 lacks the sampler."""
    lm_dir = tmp_path / "lm"
    slime["lm"].save_pretrained(lm_dir)
    slime["tok"].save_pretrained(lm_dir)
    stage = tmp_path / "stage"
    stage.mkdir()
    torch.save(slime["proj"], stage / "mm_projector.bin")
    torch.save(slime["sampler"], stage / "sampler.bin")
    (stage / "config.json").write_text(json.dumps({**slime["cfg"], "use_global_only": True}))  # stage 1a's flags
    full = convert("slime", str(stage), lm_dir=str(lm_dir), vision=slime["vision"],
                   adapters=[str(stage / "mm_projector.bin"), str(stage / "sampler.bin")])
    assert full.model.config.method["branches"] == "global" and not full.remap.fresh
    torch.testing.assert_close(full.model.connector.local_compressor.query,
                               slime["sampler"]["model.sampler.post_qformer.query"])
    with pytest.raises(CheckpointMismatch, match=r"connector\.local_compressor\.query"):
        convert("slime", str(stage), lm_dir=str(lm_dir), vision=slime["vision"],
                adapters=[str(stage / "mm_projector.bin")])
    part = convert("slime", str(stage), lm_dir=str(lm_dir), vision=slime["vision"], init_missing=True,
                   adapters=[str(stage / "mm_projector.bin")])
    assert part.remap.fresh and all(k.startswith("connector.local_compressor.") for k in part.remap.fresh)
    with pytest.raises(ValueError, match="--lm-dir"):
        convert("slime", str(stage), vision=slime["vision"], adapters=[str(stage / "mm_projector.bin")])
