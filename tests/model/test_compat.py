"""The transformers release boundary (``hires_vlm.compat``): the KV cache's name, and no deprecations.

transformers 5.24 renamed ``past_key_values`` to ``cache`` (forward argument and ``ModelOutput``
field). Before the compat module, every forward pass on 5.24 raised
``HiResVLMOutput.__init__() got an unexpected keyword argument 'cache'`` and printed a
``FutureWarning``; these tests fail on either, on whichever release is installed (the drift check
runs them on the newest one, ``scripts/test.sh --lowest`` on the lowest).
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from PIL import Image
from transformers.modeling_outputs import CausalLMOutputWithPast

from hires_vlm import compat
from hires_vlm.model import HiResVLMOutput
from hires_vlm.tiny import build_tiny


@pytest.fixture(scope="module")
def hd():
    model, proc = build_tiny("llava_hd", seed=0)
    return model.eval(), proc


def test_cache_name_is_the_installed_release_s():
    assert compat.CACHE_NAME in CausalLMOutputWithPast.__dataclass_fields__
    assert compat.CACHE_NAME in HiResVLMOutput.__dataclass_fields__
    out = HiResVLMOutput(**compat.cache_kwargs("kv"))
    assert compat.cache_of(out) == "kv" and out[compat.CACHE_NAME] == "kv"


@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_forward_returns_the_cache_and_continues_from_it_under_either_name(hd, name):
    """Prefill with use_cache, then one step from the returned cache = the full sequence's logits."""
    model, proc = hd
    inp = proc(["What colour is it?"], [Image.new("RGB", (300, 200), (200, 10, 10))])
    merged = model.merge_inputs(inp["input_ids"], inp["attention_mask"], inp["pixel_values"], inp["image_sizes"])
    emb, mask, pos = merged.inputs_embeds, merged.attention_mask, merged.position_ids
    with torch.no_grad():
        full = model(inputs_embeds=emb, attention_mask=mask, position_ids=pos).logits[:, -1]
        pre = model(inputs_embeds=emb[:, :-1], attention_mask=mask[:, :-1], position_ids=pos[:, :-1], use_cache=True)
        cache = compat.cache_of(pre)
        assert cache is not None and cache.get_seq_length() == emb.shape[1] - 1
        step = model(inputs_embeds=emb[:, -1:], attention_mask=mask, position_ids=pos[:, -1:], use_cache=True,
                     **{name: cache}).logits[:, -1]
    torch.testing.assert_close(step, full, rtol=1e-5, atol=1e-5)


def test_the_cache_is_passed_once(hd):
    model, proc = hd
    with pytest.raises(ValueError, match="not both"):
        model(input_ids=torch.tensor([[1, 2]]), cache=object(), past_key_values=object())


_STEP_SCRIPT = textwrap.dedent("""
    import torch
    from PIL import Image
    from hires_vlm.tiny import build_tiny
    from hires_vlm.data.llava_json import LlavaCollator

    model, proc = build_tiny("{method}", seed=0)
    model.train()
    im = Image.new("RGB", (300, 200), (200, 10, 10))
    enc = proc.encoder.encode([{{"from": "human", "value": "<image>\\nColour?"}}, {{"from": "gpt", "value": "red"}}],
                              [proc.max_visual_tokens(im.size)])
    row = {{"input_ids": torch.tensor(enc.input_ids), "labels": torch.tensor(enc.labels),
            "pixel_values": proc.image_processor([im]).pixel_values, "image_sizes": torch.tensor([im.size])}}
    batch = LlavaCollator(proc.tokenizer.pad_token_id)([row, row])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(3):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    out = model.generate(**proc(["Colour?"], [im]), max_new_tokens=3, do_sample=False)
    print("OK", float(loss), out.shape[1])
""")


@pytest.mark.parametrize("method", ["llava_hd", "slime"])
def test_training_steps_and_generate_print_no_deprecation(tmp_path, method):
    """A fresh process (transformers warns once per process): nothing about deprecations on stderr."""
    env = {**os.environ, "PYTHONWARNINGS": "always", "TRANSFORMERS_VERBOSITY": "warning"}
    proc = subprocess.run([sys.executable, "-c", _STEP_SCRIPT.format(method=method)], capture_output=True,
                          text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("OK"), proc.stdout
    noisy = [line for line in proc.stderr.splitlines() if "deprecat" in line.lower() or "FutureWarning" in line]
    assert not noisy, "\n".join(noisy)
