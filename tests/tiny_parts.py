"""Small parts for tests: a training batch made by a model's own processor, and the saved checkpoint
folders (a CLIP tower, an LM with its tokenizer) that ``build_from_parts`` assembles."""

from __future__ import annotations

import torch


def conversation_batch(proc, images, question: str = "What colour?", answer: str = "red") -> dict:
    from hires_vlm.data.llava_json import LlavaCollator

    rows = []
    for im in images:
        conv = [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]
        enc = proc.encoder.encode(conv, [proc.max_visual_tokens(im.size)])
        rows.append({"input_ids": torch.tensor(enc.input_ids), "labels": torch.tensor(enc.labels),
                     "pixel_values": proc.image_processor([im]).pixel_values, "image_sizes": torch.tensor([im.size])})
    return LlavaCollator(proc.tokenizer.pad_token_id)(rows)


def save_tiny_parts(root, corpus=("a b",), template: str = "chatml", vision_layers: int = 1) -> tuple[str, str]:
    """Save a random 32-wide CLIP tower (56 px, 14 px patches) and a 1-layer Llama with a BPE tokenizer
    of ``corpus`` under ``root``; returns their folders (``root/clip``, ``root/lm``)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    from hires_vlm.text import build_bpe_tokenizer

    clip, lm = f"{root}/clip", f"{root}/lm"
    CLIPVisionModel(CLIPVisionConfig(image_size=56, patch_size=14, hidden_size=32, intermediate_size=64,
                                     num_hidden_layers=vision_layers, num_attention_heads=2)).save_pretrained(clip)
    tok = build_bpe_tokenizer(list(corpus), vocab_size=300, template=template)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(lm)
    tok.save_pretrained(lm)
    return clip, lm


def check_trains_generates_reloads(model, proc, images, tmp_path) -> list[int]:
    """One SGD step on the connector changes every connector weight; greedy generation works; the model
    and processor saved and loaded again give the same method, cut and answer. Returns the visual
    tokens per image of the training forward (each equal to the processor's count)."""
    from hires_vlm.model import HiResVLM, HiResVLMProcessor

    batch = conversation_batch(proc, images)
    model.train()
    params = list(model.connector.parameters())
    before = [p.detach().clone() for p in params]
    out = model(**batch)
    assert torch.isfinite(out.loss)
    tokens = out.visual_tokens.tolist()
    assert tokens == [proc.max_visual_tokens(im.size) for im in images]
    out.loss.backward()
    assert all(p.grad is not None for p in params)
    torch.optim.SGD(params, lr=0.1).step()
    assert all(not torch.equal(a, b) for a, b in zip(before, params))
    inp = proc(["What is it?", "Describe."], images)
    new = model.eval().generate(**inp, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    assert new.shape == (len(images), 2)
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    loaded, loaded_proc = HiResVLM.from_pretrained(tmp_path).eval(), HiResVLMProcessor.from_pretrained(tmp_path)
    assert loaded.connector.cfg == model.connector.cfg
    again = loaded_proc(["What is it?", "Describe."], images)
    assert again["pixel_values"].shape == inp["pixel_values"].shape
    assert torch.equal(loaded.generate(**again, max_new_tokens=2, min_new_tokens=2, do_sample=False), new)
    return tokens
