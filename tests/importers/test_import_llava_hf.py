"""``--format llava_hf``: transformers' LLaVA and LLaVA-NeXT, in the v4 and the v5 key layouts.

Reference: transformers' own ``LlavaForConditionalGeneration`` / ``LlavaNextForConditionalGeneration``
holding the same tensors, run on the same pixel values with its own grid choice (over
(height, width) pinpoints), un-padding and newline — logits must agree at every position.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaNextConfig,
                          LlavaNextForConditionalGeneration)

from hires_vlm.importers import CheckpointMismatch, convert
from hires_vlm.text import build_bpe_tokenizer

from importer_parts import write_checkpoint

TILE, PATCH = 56, 14
PINPOINTS_HW = [[112, 56], [56, 112], [112, 112]]  # transformers: (height, width)


def _hf_model(next_: bool, image_id: int, vocab: int, pad_id: int):
    torch.manual_seed(3)
    vc = CLIPVisionConfig(image_size=TILE, patch_size=PATCH, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=2)
    tc = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, pad_token_id=pad_id, tie_word_embeddings=False)
    if next_:
        cfg = LlavaNextConfig(vision_config=vc, text_config=tc, image_token_index=image_id,
                              image_grid_pinpoints=PINPOINTS_HW, vision_feature_layer=-2,
                              vision_feature_select_strategy="default")
        model = LlavaNextForConditionalGeneration(cfg)
        with torch.no_grad():
            model.model.image_newline.normal_()
    else:
        cfg = LlavaConfig(vision_config=vc, text_config=tc, image_token_index=image_id, vision_feature_layer=-2,
                          vision_feature_select_strategy="default")
        model = LlavaForConditionalGeneration(cfg)
    return model.eval()


def v4_layout(state: dict) -> dict:
    """The layout of the llava-hf hub checkpoints (transformers 4.x)."""
    out = {}
    for k, v in state.items():
        if k.startswith("model.vision_tower."):
            k = "vision_tower.vision_model." + k[len("model.vision_tower."):]
        elif k.startswith("model.language_model."):
            k = "language_model.model." + k[len("model.language_model."):]
        elif k == "lm_head.weight":
            k = "language_model.lm_head.weight"
        elif k.startswith("model."):
            k = k[len("model."):]
        out[k] = v
    return out


@pytest.fixture(scope="module", params=["llava", "llava_next"])
def hf(request, tmp_path_factory):
    next_ = request.param == "llava_next"
    tok = build_bpe_tokenizer(template="vicuna_v1")  # has <image> and <pad>, as llava-hf tokenizers
    image_id = tok.convert_tokens_to_ids("<image>")
    model = _hf_model(next_, image_id, len(tok), tok.pad_token_id)
    root = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(root / "saved")  # what transformers 5 writes
    tok.save_pretrained(root / "saved")
    config = model.config.to_dict()
    dirs = {"v5-save": str(root / "saved"),
            "v4": write_checkpoint(root / "v4", v4_layout(model.state_dict()), config, tok),
            "v5-state-dict": write_checkpoint(root / "v5", dict(model.state_dict()), config, tok, kind="bin")}
    return dict(model=model, dirs=dirs, image_id=image_id, next=next_)


@pytest.mark.parametrize("layout", ["v4", "v5-save", "v5-state-dict"])
def test_llava_hf_matches_transformers(hf, layout):
    res = convert("llava_hf", hf["dirs"][layout])
    ours, proc, ref = res.model, res.processor, hf["model"]
    assert ours.config.image_token_id == hf["image_id"]
    assert ours.config.method["name"] == ("llava_hd" if hf["next"] else "llava")
    if hf["next"]:  # (height, width) pinpoints flipped to (columns, rows)
        assert [tuple(c) for c in ours.config.method["grid_candidates"]] == [(1, 2), (2, 1), (2, 2)]
    # (50, 30) fits both 1x2 canvases: list order decides, so a missing (height, width) flip would show.
    for size in [(100, 70), (50, 30)] if hf["next"] else [(64, 48)]:
        inputs = proc(["What is in the image?"], [Image.new("RGB", size, (10, 120, 200))])
        with torch.no_grad():
            out = ours(**inputs)
        n = int(out.visual_tokens[0])
        ids = inputs["input_ids"][0]
        pos = int((ids == hf["image_id"]).nonzero())
        hf_ids = torch.cat([ids[:pos], torch.full((n,), hf["image_id"]), ids[pos + 1:]])[None]
        pv = inputs["pixel_values"]
        kwargs = {}
        if hf["next"]:
            pv = pv[None]  # [images x views x c x S x S]
            kwargs["image_sizes"] = torch.tensor([[size[1], size[0]]])  # transformers: (height, width)
        with torch.no_grad():
            expected = ref(input_ids=hf_ids, pixel_values=pv, **kwargs).logits
        torch.testing.assert_close(out.logits, expected, rtol=1e-4, atol=1e-4)


def test_llava_hf_refuses_mismatches(hf, tmp_path):
    import json
    import os

    src = hf["dirs"]["v4"]
    cfg = json.load(open(os.path.join(src, "config.json")))
    state = v4_layout(hf["model"].state_dict())
    del state["multi_modal_projector.linear_2.bias"]
    state["multi_modal_projector.linear_3.weight"] = torch.zeros(2, 2)
    bad = write_checkpoint(tmp_path / "bad", state, cfg, build_bpe_tokenizer(template="vicuna_v1"))
    with pytest.raises(CheckpointMismatch) as err:
        convert("llava_hf", bad)
    msg = str(err.value)
    assert "multi_modal_projector.linear_3.weight [2, 2]" in msg
    assert "connector.projector.2.bias [64]" in msg
    full = write_checkpoint(tmp_path / "full", v4_layout(hf["model"].state_dict()),
                            {**cfg, "vision_feature_select_strategy": "full"}, build_bpe_tokenizer(template="vicuna_v1"))
    with pytest.raises(CheckpointMismatch, match="vision_feature_select_strategy 'full'"):
        convert("llava_hf", full)
    with pytest.raises(CheckpointMismatch, match="looks like a llava_hf checkpoint, not llava"):
        convert("llava", src)
