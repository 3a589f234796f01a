"""`hires-vlm build`: a model from a local vision checkpoint and a local causal LM."""

import json

import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPModel, CLIPVisionModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from hires_vlm.cli import main
from hires_vlm.model import HiResVLM, HiResVLMProcessor
from hires_vlm.text import build_bpe_tokenizer


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    cc = CLIPConfig(vision_config=dict(image_size=56, patch_size=14, hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=3, num_attention_heads=2),
                    text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                     vocab_size=100, bos_token_id=0, eos_token_id=1, pad_token_id=1),
                    projection_dim=16)
    CLIPModel(cc).save_pretrained(root / "clip")
    (root / "clip" / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    tok = build_bpe_tokenizer(template="llama3")
    lc = LlamaConfig(vocab_size=len(tok) - 3, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2)
    LlamaForCausalLM(lc).save_pretrained(root / "llama")  # fewer rows than the tokenizer: resized on build
    tok.save_pretrained(root / "llama")
    tok2 = build_bpe_tokenizer(template="chatml")
    qc = Qwen2Config(vocab_size=len(tok2), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    Qwen2ForCausalLM(qc).save_pretrained(root / "qwen")
    tok2.save_pretrained(root / "qwen")
    return root


@pytest.mark.parametrize("lm,template,method", [("llama", "llama3", "llava_hd"), ("qwen", "chatml", "llava")])
def test_build_from_local_parts(parts, tmp_path, lm, template, method):
    out = tmp_path / "built"
    assert main(["build", "--vision", str(parts / "clip"), "--lm", str(parts / lm), "--method", method,
                 "--out", str(out)]) == 0
    model = HiResVLM.from_pretrained(out).eval()
    proc = HiResVLMProcessor.from_pretrained(out)
    assert model.config.template == template and model.config.image_mean == [0.5] * 3
    src = CLIPVisionModel.from_pretrained(parts / "clip").state_dict()
    ours = model.vision_tower.model.state_dict()
    assert src.keys() == ours.keys()
    assert [k for k in src if not torch.equal(src[k], ours[k])] == []
    assert model.language_model.get_input_embeddings().weight.shape[0] == len(proc.tokenizer)
    if lm == "qwen":
        emb, head = model.language_model.get_input_embeddings().weight, model.language_model.lm_head.weight
        assert emb.data_ptr() == head.data_ptr()
    inputs = proc(["What is it?"], [Image.new("RGB", (100, 70))])
    assert model.generate(**inputs, max_new_tokens=2).shape == (1, 2)
    assert all(not p.requires_grad for p in model.vision_tower.parameters())


def test_build_refuses_missing_or_wrong_directories(parts, tmp_path):
    from hires_vlm.build import build_from_parts

    with pytest.raises(FileNotFoundError, match="vision model directory not found"):
        build_from_parts(str(tmp_path / "nope"), str(parts / "llama"))
    with pytest.raises(ValueError, match="not a vision tower"):
        build_from_parts(str(parts / "llama"), str(parts / "llama"))


def test_build_with_the_torch_resampler_and_bad_values(parts, tmp_path):
    from hires_vlm.model import HiResVLMConfig

    out = tmp_path / "fast"
    assert main(["build", "--vision", str(parts / "clip"), "--lm", str(parts / "llama"), "--method", "llava_hd",
                 "--out", str(out), "--image-resampler", "torch"]) == 0
    model = HiResVLM.from_pretrained(out)
    proc = HiResVLMProcessor.from_pretrained(out)
    assert model.config.image_resampler == "torch" and proc.imaging_spec.resampler.value == "torch"
    assert json.loads((out / "processor_config.json").read_text())["imaging"]["resampler"] == "torch"
    image = Image.new("RGB", (150, 90), (200, 30, 30))
    fast = model.image_processor([image]).pixel_values
    model.config.image_resampler = "pillow"  # the model's processor follows its config
    slow = model.image_processor([image]).pixel_values
    assert model.image_processor.spec.resampler.value == "pillow"
    assert float((fast - slow).abs().max()) <= 2 / (255 * 0.5) + 1e-5  # this tower normalises with std 0.5
    with pytest.raises(ValueError, match="image_resampler='nearest' is not valid"):
        HiResVLMConfig(image_resampler="nearest")
