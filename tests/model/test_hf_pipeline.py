"""``pipeline("image-text-to-text", model=dir)`` after ``import hires_vlm``: a PIL image with text, and
chat messages (one or several images). With ``trust_remote_code=True`` instead of the import, in a
fresh Python: ``test_hf_auto.test_trust_remote_code_in_a_python_that_never_imports_hires_vlm``."""

import pytest
import torch
from PIL import Image
from transformers import pipeline

import hires_vlm  # noqa: F401  (registers the Auto classes)

A, B = Image.new("RGB", (250, 160), (200, 30, 30)), Image.new("RGB", (120, 300), (20, 160, 40))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def saved(save_small_tiny):
    path, model, proc = save_small_tiny("hf_pipe", "llava_hd", 3)
    return path, model, proc, pipeline("image-text-to-text", model=str(path))


def _answer(model, proc, inputs) -> str:
    new = model.generate(**inputs, max_new_tokens=5)
    return proc.tokenizer.decode(new[0], skip_special_tokens=True)


def _chat(*parts):
    return [{"role": "user", "content": [{"type": "image", "image": p} if isinstance(p, Image.Image)
                                         else {"type": "text", "text": p} for p in parts]}]


def test_pipeline_answers_a_pil_image_with_text(saved):
    _, model, proc, pipe = saved
    text = proc.apply_chat_template(_chat(A, "\nWhat colour is it?"), add_generation_prompt=True)
    out = pipe(images=A, text=text, max_new_tokens=5)
    assert out == [{"input_text": text, "generated_text": text + _answer(model, proc, proc(images=A, text=text))}]
    new = pipe(images=A, text=text, max_new_tokens=5, return_full_text=False)
    assert new[0]["generated_text"] == out[0]["generated_text"][len(text):]


def test_pipeline_answers_chat_messages_with_one_or_two_images(saved):
    _, model, proc, pipe = saved
    chats = [_chat(A, "\nWhat colour is it?"), _chat(A, " and ", B, "\nWhich is taller?")]
    outs = pipe(text=chats, max_new_tokens=5)
    for chat, out in zip(chats, outs):
        inputs = proc.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)
        assert out[0]["generated_text"] == [*chat, {"role": "assistant", "content": _answer(model, proc, inputs)}]
    # batched, the pipeline pads the ids on the tokenizer's side and concatenates the views: the model's
    # merge follows the attention mask and the placeholders, so the answers stay the same
    assert pipe(text=chats, max_new_tokens=5, batch_size=2) == outs
    assert torch.equal(pipe.model.language_model.lm_head.weight, model.language_model.lm_head.weight)
