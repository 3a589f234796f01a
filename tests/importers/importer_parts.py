"""Tiny official-layout checkpoints for the importer tests (helpers; fixtures in conftest.py), written the way the official code saves them.

Parts: a CLIP vision tower and a Llama LM with random weights, a byte-level BPE tokenizer that has
no ``<image>`` and no pad token (as Llama/Vicuna tokenizers), and helpers that write a state dict
as ``model.safetensors`` (single or sharded) or ``pytorch_model.bin`` next to a ``config.json``.
"""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CORPUS = ["What is in the image? Describe it, please.", "A red circle on a white background, near the top left.",
          "USER: ASSISTANT: the a an is of and , . ? !"] * 4


def plain_tokenizer(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """Byte-level BPE with only <unk>, <s>, </s> (no <image>, no pad): what a Llama checkpoint ships."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   clean_up_tokenization_spaces=False)


def tiny_clip(image_size: int, patch_size: int, hidden: int, layers: int = 2, heads: int = 2,
              seed: int = 0) -> CLIPVisionModel:
    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(image_size=image_size, patch_size=patch_size, hidden_size=hidden,
                           intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=heads,
                           projection_dim=hidden)
    return CLIPVisionModel(cfg).eval()


def tiny_llama(vocab: int, hidden: int = 64, seed: int = 1) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(cfg).eval()


def rand(*shape, scale: float = 0.5, gen: torch.Generator | None = None) -> torch.Tensor:
    return torch.randn(*shape, generator=gen) * scale


def save_vision_dir(tower: CLIPVisionModel, path) -> str:
    tower.save_pretrained(path)
    with open(os.path.join(path, "preprocessor_config.json"), "w") as f:
        json.dump({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}, f)
    return str(path)


def llava_config(lm: LlamaForCausalLM, **mm) -> dict:
    """A LLaVA-family config.json: the LM's fields plus the mm_* fields, as haotian's LlavaConfig saves it."""
    cfg = lm.config.to_dict()
    cfg.pop("dtype", None)
    cfg.update(architectures=["LlavaLlamaForCausalLM"], model_type="llava_llama", torch_dtype="float32",
               rope_theta=10000.0, use_mm_proj=True, mm_use_im_start_end=False, mm_use_im_patch_token=False,
               tokenizer_padding_side="right", tune_mm_mlp_adapter=False, freeze_mm_mlp_adapter=False)
    cfg.pop("rope_parameters", None)
    cfg.update(mm)
    return cfg


def write_checkpoint(path, state: dict[str, torch.Tensor], config: dict | None, tokenizer=None,
                     kind: str = "safetensors") -> str:
    """``kind``: safetensors | sharded (two safetensors shards + index) | bin (``pytorch_model.bin``) |
    sharded_bin (two ``.bin`` shards + ``pytorch_model.bin.index.json``)."""
    os.makedirs(path, exist_ok=True)
    state = {k: v.contiguous() for k, v in state.items()}
    if kind == "safetensors":
        save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    elif kind == "sharded":
        keys = sorted(state)
        halves = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
                  "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
        weight_map = {}
        for name, ks in halves.items():
            save_file({k: state[k] for k in ks}, os.path.join(path, name), metadata={"format": "pt"})
            weight_map.update({k: name for k in ks})
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f)
    elif kind == "sharded_bin":
        keys = sorted(state)
        halves = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
                  "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2:]}
        for name, ks in halves.items():
            torch.save({k: state[k] for k in ks}, os.path.join(path, name))
        with open(os.path.join(path, "pytorch_model.bin.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": {k: n for n, ks in halves.items() for k in ks}}, f)
    elif kind == "bin":
        torch.save(state, os.path.join(path, "pytorch_model.bin"))
    else:
        raise ValueError(kind)
    if config is not None:
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(config, f)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return str(path)


def prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state.items()}


def clip_features(tower: CLIPVisionModel, pixel_values: torch.Tensor, layer: int) -> torch.Tensor:
    """The official LLaVA feature: hidden_states[layer] without CLS."""
    with torch.no_grad():
        return tower(pixel_values=pixel_values, output_hidden_states=True).hidden_states[layer][:, 1:]


def mlp2x(x, w1, b1, w2, b2):
    import torch.nn.functional as F

    return F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)
