"""``--format inf_llava``: INF-LLaVA's ``llava_llama`` with ``model.spatial_embed`` (the DEM).

Reference: ``SpatialEmbed.forward`` of the official code written again with plain torch ops on the
*source* tensors — the Annotated-Transformer attention with ``linears.{0,1,2,3}`` as W_q, W_k,
W_v, W_o and ``LayerNorm(W_o·attn + q)``, contiguous windows with global queries, strided windows
with local queries, ``ffn_crop``/``ffn_stride``, ``ln_fuse(cat + both)``, bilinear to 24×24, the
mean with the low-resolution view, the projector — then ``LlamaForCausalLM`` on the merged sequence.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import LlamaForCausalLM

from hires_vlm.importers import CheckpointMismatch, convert

from importer_parts import (clip_features, llava_config, mlp2x, plain_tokenizer, prefixed, rand, save_vision_dir,
                            tiny_clip, tiny_llama, write_checkpoint)

TILE, PATCH, DV, HEADS, N = 48, 2, 64, 8, 3  # 24x24 tokens per view (the official hard-coded size)
SE = "model.spatial_embed."


def inf_parts(seed: int = 0):
    tok = plain_tokenizer()
    lm = tiny_llama(len(tok))
    tower = tiny_clip(TILE, PATCH, DV, heads=4)
    gen = torch.Generator().manual_seed(seed)
    dl = lm.config.hidden_size
    conn = {"model.mm_projector.0.weight": rand(dl, DV, scale=0.2, gen=gen),
            "model.mm_projector.0.bias": rand(dl, scale=0.1, gen=gen),
            "model.mm_projector.2.weight": rand(dl, dl, scale=0.2, gen=gen),
            "model.mm_projector.2.bias": rand(dl, scale=0.1, gen=gen)}
    for i in range(4):
        conn[f"{SE}attention.linears.{i}.weight"] = rand(DV, DV, scale=0.15, gen=gen)
        conn[f"{SE}attention.linears.{i}.bias"] = rand(DV, scale=0.1, gen=gen)
    for ln in ("attention.ln", "ln_fuse"):
        conn[f"{SE}{ln}.weight"] = 1 + rand(DV, scale=0.1, gen=gen)
        conn[f"{SE}{ln}.bias"] = rand(DV, scale=0.1, gen=gen)
    for ffn in ("ffn_crop", "ffn_stride"):
        conn[f"{SE}{ffn}.0.weight"] = rand(DV // 16, DV, scale=0.2, gen=gen)
        conn[f"{SE}{ffn}.0.bias"] = rand(DV // 16, scale=0.1, gen=gen)
        conn[f"{SE}{ffn}.2.weight"] = rand(DV // 2, DV // 16, scale=0.3, gen=gen)
        conn[f"{SE}{ffn}.2.bias"] = rand(DV // 2, scale=0.1, gen=gen)
    cfg = llava_config(lm, mm_vision_tower="openai/clip-vit-large-patch14-336", mm_hidden_size=DV,
                       mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2, mm_vision_select_feature="patch",
                       mm_patch_merge_type="flat", image_aspect_ratio="pad", tokenizer_model_max_length=2048)
    return tok, lm, tower, conn, cfg


@pytest.fixture(scope="module")
def inf(tmp_path_factory):
    root = tmp_path_factory.mktemp("inf")
    tok, lm, tower, conn, cfg = inf_parts()
    # The SFT save holds the tower (loaded, not delayed, during training) under haotian's prefix.
    state = {**lm.state_dict(), **conn, **prefixed(tower.state_dict(), "model.vision_tower.vision_tower.vision_model.")}
    src = write_checkpoint(root / "src", state, cfg, tok, kind="sharded_bin")
    vision = save_vision_dir(tiny_clip(TILE, PATCH, DV, heads=4, seed=7), root / "clip")  # config only
    return dict(root=root, src=src, vision=vision, tok=tok, lm=lm, tower=tower, conn=conn, cfg=cfg, state=state)


# ---------------------------------------------------------------------- the official computation
def crop_blocks(x, n):  # crop_pixels_N on [b x d x H x W]
    hb, wb = x.shape[2] // n, x.shape[3] // n
    return [x[:, :, i * hb:(i + 1) * hb, j * wb:(j + 1) * wb] for i in range(n) for j in range(n)]


def stride_blocks(x, n):  # extract_pixels_N
    return [x[:, :, h::n, w::n] for h in range(n) for w in range(n)]


def combine_crop(ts, n):  # combine_crop_features_N on [b x h x w x d]
    return torch.cat([torch.cat(ts[i * n:(i + 1) * n], dim=2) for i in range(n)], dim=1)


def combine_stride(ts, n):  # combine_stride_features_N
    b, h, w, d = ts[0].shape
    out = torch.zeros(b, n * h, n * w, d)
    for i in range(n):
        for j in range(n):
            out[:, i::n, j::n, :] = ts[i * n + j]
    return out


def official_attention(q_in, k_in, v_in, t):
    def lin(i, x):
        return F.linear(x, t[f"{SE}attention.linears.{i}.weight"], t[f"{SE}attention.linears.{i}.bias"])

    b, dk = q_in.shape[0], DV // HEADS
    q, k, v = [lin(i, x).view(b, -1, HEADS, dk).transpose(1, 2) for i, x in enumerate((q_in, k_in, v_in))]
    p = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(dk), dim=-1)
    x = (p @ v).transpose(1, 2).reshape(b, -1, HEADS * dk)
    return F.layer_norm(lin(3, x) + q_in, (DV,), t[f"{SE}attention.ln.weight"], t[f"{SE}attention.ln.bias"], 1e-5)


def official_spatial_embed(feats, t):
    """feats: 18 x [b x 576 x d] (9 crops, 9 strides) → [b x 576 x d]."""
    b, hw, d = feats[0].shape
    h = w = math.isqrt(hw)
    feats = [f.reshape(b, h, w, d) for f in feats]
    crop_map, stride_map = combine_crop(feats[:N * N], N), combine_stride(feats[N * N:], N)
    loc_w, glob_w = crop_blocks(crop_map.permute(0, 3, 1, 2), N), crop_blocks(stride_map.permute(0, 3, 1, 2), N)
    lg = []
    for i in range(N * N):
        lo, gl = (x.permute(0, 2, 3, 1).reshape(b, hw, d) for x in (loc_w[i], glob_w[i]))
        lg.append(official_attention(gl, lo, lo, t).reshape(b, h, w, d))
    loc_s, glob_s = stride_blocks(crop_map.permute(0, 3, 1, 2), N), stride_blocks(stride_map.permute(0, 3, 1, 2), N)
    gl_ = []
    for i in range(N * N):
        lo, gl = (x.permute(0, 2, 3, 1).reshape(b, hw, d) for x in (loc_s[i], glob_s[i]))
        gl_.append(official_attention(lo, gl, gl, t).reshape(b, h, w, d))
    stride_out, crop_out = combine_crop(lg, N), combine_stride(gl_, N)

    def ffn(name, x):
        return mlp2x(x, t[f"{SE}{name}.0.weight"], t[f"{SE}{name}.0.bias"], t[f"{SE}{name}.2.weight"],
                     t[f"{SE}{name}.2.bias"])

    fused = torch.cat([ffn("ffn_crop", crop_out), ffn("ffn_stride", stride_out)], dim=-1)
    fused = F.layer_norm(fused + stride_out + crop_out, (d,), t[f"{SE}ln_fuse.weight"], t[f"{SE}ln_fuse.bias"], 1e-5)
    out = F.interpolate(fused.permute(0, 3, 1, 2), size=(24, 24), mode="bilinear", align_corners=False)
    return out.permute(0, 2, 3, 1).reshape(b, hw, d)


def official_visual(feats, t):
    """encode_images: 9 crops + 9 strides through the DEM, mean with the low-res view, then the projector."""
    dem = official_spatial_embed([feats[i:i + 1] for i in range(2 * N * N)], t)
    x = torch.mean(torch.stack([feats[-1:], dem], -1), -1)
    return mlp2x(x, t["model.mm_projector.0.weight"], t["model.mm_projector.0.bias"], t["model.mm_projector.2.weight"],
                 t["model.mm_projector.2.bias"])[0]


def test_inf_llava_matches_official_computation(inf):
    res = convert("inf_llava", inf["src"], vision=inf["vision"])
    model, proc = res.model, res.processor
    m = model.config.method
    assert (m["name"], m["heads"], m["canvas"], m["fusion_order"]) == ("inf_llava", 8, "pad_square", "local_first")
    size = (90, 60)
    inputs = proc(["Describe the image."], [Image.new("RGB", size, (30, 90, 200))])
    assert inputs["pixel_values"].shape[0] == 2 * N * N + 1
    feats = clip_features(inf["tower"], inputs["pixel_values"], -2)
    with torch.no_grad():
        visual = official_visual(feats, inf["conn"])
        merged = model.merge_inputs(inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"],
                                    inputs["image_sizes"])
        out = model(**inputs)
    ids = inputs["input_ids"][0]
    pos = int((ids == model.config.image_token_id).nonzero())
    assert visual.shape[0] == 576 == int(out.visual_tokens[0])
    torch.testing.assert_close(merged.inputs_embeds[0, pos:pos + 576], visual, rtol=1e-4, atol=1e-4)
    ref_lm = LlamaForCausalLM(inf["lm"].config).eval()
    ref_lm.load_state_dict(dict(inf["lm"].state_dict()))
    emb = ref_lm.get_input_embeddings()
    with torch.no_grad():
        ref = ref_lm(inputs_embeds=torch.cat([emb(ids[:pos]), visual, emb(ids[pos + 1:])])[None]).logits
    torch.testing.assert_close(out.logits[..., :ref.shape[-1]], ref, rtol=1e-4, atol=1e-4)


def test_inf_llava_head_order_matters(inf):
    """The reference is sensitive to the q/k/v order: swapping W_q and W_k changes the output."""
    t = dict(inf["conn"])
    feats = torch.randn(2 * N * N + 1, 576, DV, generator=torch.Generator().manual_seed(0))
    swapped = {**t, f"{SE}attention.linears.0.weight": t[f"{SE}attention.linears.1.weight"],
               f"{SE}attention.linears.1.weight": t[f"{SE}attention.linears.0.weight"]}
    assert not torch.allclose(official_visual(feats, t), official_visual(feats, swapped), atol=1e-3)


def test_inf_llava_stage_adapter_and_mismatches(inf, tmp_path):
    # Stage 1 saves mm_projector + spatial_embed; a LoRA run's non_lora_trainables.bin prefixes base_model.model.
    lm_dir = tmp_path / "lm"
    inf["lm"].save_pretrained(lm_dir)
    inf["tok"].save_pretrained(lm_dir)
    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "config.json").write_text(json.dumps({**inf["cfg"], "image_aspect_ratio": "square"}))
    torch.save({"base_model.model." + k: v for k, v in inf["conn"].items()}, stage / "non_lora_trainables.bin")
    res = convert("inf_llava", str(stage), lm_dir=str(lm_dir), vision=inf["vision"],
                  adapters=[str(stage / "non_lora_trainables.bin")])
    assert res.model.config.method["canvas"] == "center_crop"  # official pre-training: CLIP resize + centre crop
    torch.testing.assert_close(res.model.connector.dem.attention.k_proj.weight, inf["conn"][f"{SE}attention.linears.1.weight"])
    torch.testing.assert_close(res.model.connector.fusion.global_mlp[2].bias, inf["conn"][f"{SE}ffn_stride.2.bias"])
    # The tower of the stage run comes from --vision (its weights this time: the LM dir has none).
    torch.testing.assert_close(res.model.vision_tower.model.embeddings.patch_embedding.weight,
                               tiny_clip(TILE, PATCH, DV, heads=4, seed=7).embeddings.patch_embedding.weight)

    state = {k: v for k, v in inf["state"].items() if k != f"{SE}ln_fuse.bias"}
    state[f"{SE}ffn_crop.0.weight"] = torch.zeros(DV // 8, DV)
    state[f"{SE}attention.linears.4.weight"] = torch.zeros(DV, DV)
    bad = write_checkpoint(tmp_path / "bad", state, inf["cfg"], inf["tok"])
    with pytest.raises(CheckpointMismatch) as err:
        convert("inf_llava", bad, vision=inf["vision"])
    msg = str(err.value)
    assert "connector.fusion.norm.bias [64]" in msg
    assert f"{SE}ffn_crop.0.weight [8, 64] → connector.fusion.local_mlp.0.weight expects [4, 64]" in msg
    assert f"{SE}attention.linears.4.weight [64, 64]" in msg
    with pytest.raises(CheckpointMismatch, match="looks like a inf_llava checkpoint, not llava"):
        convert("llava", inf["src"], vision=inf["vision"])
