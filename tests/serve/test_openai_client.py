"""The server through the official ``openai`` client: plain and streamed answers, usage and the
``hires_vlm`` extension, multi-turn, stop strings, sampling and seeds, models, API key, local images.

Each answer is checked against the model itself: the same conversation through
``processor.apply_chat_template`` and ``HiResVLM.generate`` (greedy) in this process.
"""

from __future__ import annotations

import pytest
import torch

from serve_helpers import API_KEY, data_url, image_message, picture, png_bytes

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "What colour is the circle?"


@pytest.fixture(scope="module")
def reference(slime_dir):
    """``answer(messages, max_tokens)``: the model's greedy answer, decoded as the processor decodes."""
    from hires_vlm.model import load_model

    model, processor = load_model(slime_dir, "cpu")

    def answer(messages, max_tokens=12):
        inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_tokens)
        return processor.batch_decode(out)[0]

    return answer


def _hf_messages(image=None, text=PROMPT):
    content = ([{"type": "image", "image": image}] if image is not None else []) + [{"type": "text", "text": text}]
    return [{"role": "user", "content": content}]


def test_plain_answer_matches_the_model_with_usage_and_observables(client, model_id, reference):
    r = client.chat.completions.create(model=model_id, messages=[image_message(PROMPT)], max_tokens=12)
    expected = reference(_hf_messages(picture()))
    assert expected, "the test model should answer with some text"
    assert r.choices[0].message.content == expected
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.object == "chat.completion" and r.model == model_id and r.id.startswith("chatcmpl-")
    u = r.usage
    assert u.completion_tokens >= 1 and u.total_tokens == u.prompt_tokens + u.completion_tokens
    ext = r.hires_vlm  # the extension field, kept by the client's models
    (img,) = ext["images"]
    assert ext["method"] == "slime" and ext["batch_size"] >= 1
    assert img["size"] == [300, 200] and img["grid"] == [3, 2] and img["num_views"] == 7
    assert img["views"] == {"global": 1, "tile": 6}
    # SliME: 64 global tokens + separator + kept local tokens out of a 8x12 raster of 4x4 queries per tile
    assert img["local_grid"] == [8, 12] and img["local_tokens"] == 96
    kept = img["kept_local_tokens"]
    assert kept == sorted(set(kept)) and all(0 <= k < 96 for k in kept)
    assert img["visual_tokens"] == 64 + 1 + len(kept) <= img["visual_tokens_upper_bound"] == 64 + 1 + 96
    assert u.model_extra["visual_tokens"] == img["visual_tokens"]
    assert u.prompt_tokens > img["visual_tokens"]  # text tokens too


def test_stream_gives_the_same_text_and_ends_with_usage(client, model_id):
    plain = client.chat.completions.create(model=model_id, messages=[image_message(PROMPT)], max_tokens=12)
    chunks = list(client.chat.completions.create(model=model_id, messages=[image_message(PROMPT)], max_tokens=12,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert sum(bool(c.choices and c.choices[0].delta.content) for c in chunks) >= 2  # streamed, not one piece
    last = chunks[-1]
    assert last.choices[0].finish_reason == plain.choices[0].finish_reason
    assert last.usage.completion_tokens == plain.usage.completion_tokens
    assert last.usage.prompt_tokens == plain.usage.prompt_tokens
    assert last.hires_vlm["images"][0]["kept_local_tokens"] == plain.hires_vlm["images"][0]["kept_local_tokens"]

    with_usage = list(client.chat.completions.create(model=model_id, messages=[image_message(PROMPT)], max_tokens=12,
                                                     stream=True, stream_options={"include_usage": True}))
    assert with_usage[-1].choices == [] and with_usage[-1].usage.total_tokens == plain.usage.total_tokens
    assert with_usage[-2].choices[0].finish_reason is not None and with_usage[-2].usage is None


def test_stop_strings_in_both_modes(client, model_id):
    full = client.chat.completions.create(model=model_id, messages=[image_message(PROMPT)], max_tokens=12)
    text = full.choices[0].message.content
    stop = text[2:4]  # cut after two characters
    assert len(text) > 4 and text.find(stop) == 2, text
    r = client.chat.completions.create(model=model_id, messages=[image_message(PROMPT)], max_tokens=12,
                                       stop=[stop, "never-appears"])
    assert r.choices[0].message.content == text[:2].rstrip()
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens < full.usage.completion_tokens
    streamed = client.chat.completions.create(model=model_id, messages=[image_message(PROMPT)], max_tokens=12,
                                              stop=stop, stream=True)
    chunks = list(streamed)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text[:2].rstrip()
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_max_tokens_gives_finish_reason_length(client, model_id):
    r = client.chat.completions.create(model=model_id, messages=[image_message(PROMPT)], max_tokens=2)
    assert r.usage.completion_tokens == 2 and r.choices[0].finish_reason == "length"


def test_multi_turn_conversation_matches_the_model(client, model_id, reference):
    first = client.chat.completions.create(model=model_id, messages=[image_message(PROMPT)], max_tokens=6)
    answer = first.choices[0].message.content
    messages = [{"role": "system", "content": "You look at images."}, image_message(PROMPT),
                {"role": "assistant", "content": answer}, {"role": "user", "content": "And the background?"}]
    r = client.chat.completions.create(model=model_id, messages=messages, max_tokens=8)
    hf = [{"role": "system", "content": [{"type": "text", "text": "You look at images."}]},
          *_hf_messages(picture()), {"role": "assistant", "content": [{"type": "text", "text": answer}]},
          *_hf_messages(None, "And the background?")]
    assert r.choices[0].message.content == reference(hf, 8)
    assert r.usage.prompt_tokens > first.usage.prompt_tokens


def test_sampling_is_reproducible_with_a_seed(client, model_id):
    def ask(seed):
        return client.chat.completions.create(model=model_id, messages=[image_message(PROMPT)], max_tokens=10,
                                              temperature=1.5, top_p=0.95, seed=seed).choices[0].message.content

    a, b = ask(11), ask(11)
    assert a == b
    others = {ask(s) for s in (12, 13, 14)}
    assert len(others | {a}) > 1  # the seed changes the draw
    greedy = client.chat.completions.create(model=model_id, messages=[image_message(PROMPT)], max_tokens=10,
                                            temperature=0).choices[0].message.content
    assert greedy == client.chat.completions.create(model=model_id, messages=[image_message(PROMPT)], max_tokens=10,
                                                    temperature=0, seed=99).choices[0].message.content


def test_n_other_than_one_is_refused(client, model_id):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model_id, messages=[image_message()], n=2)
    assert info.value.code == "unsupported_value" and info.value.param == "n"
    assert "n" in info.value.message


def test_models_endpoint(client, model_id):
    models = client.models.list()
    assert [m.id for m in models.data] == [model_id]
    assert models.data[0].hires_vlm["method"] == "slime"
    assert client.models.retrieve(model_id).id == model_id
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[image_message()])


def test_api_key_is_required(main_server, model_id):
    for key in ("wrong-key", API_KEY + "x"):
        bad = openai.OpenAI(base_url=main_server.url + "/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as info:
            bad.chat.completions.create(model=model_id, messages=[image_message()])
        assert info.value.code == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()


def test_local_images_inside_the_allowed_folder_only(client, model_id, image_folder):
    by_data = client.chat.completions.create(model=model_id, messages=[image_message(PROMPT)], max_tokens=6)
    for url in ("circle.png", str(image_folder / "circle.png"), (image_folder / "circle.png").as_uri()):
        r = client.chat.completions.create(model=model_id, messages=[image_message(PROMPT, url)], max_tokens=6)
        assert r.choices[0].message.content == by_data.choices[0].message.content, url
    for url in ("../secret.png", str(image_folder.parent / "secret.png"), "escape.png",
                (image_folder.parent / "secret.png").as_uri()):
        with pytest.raises(openai.PermissionDeniedError) as info:
            client.chat.completions.create(model=model_id, messages=[image_message(PROMPT, url)], max_tokens=6)
        assert info.value.code == "image_path_not_allowed", url
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model_id, messages=[image_message(PROMPT, "missing.png")])
    assert info.value.code == "image_not_found"


def test_two_images_in_one_request(client, model_id):
    url2 = data_url(png_bytes(picture((160, 400), "green")))
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(png_bytes())}},
        {"type": "image_url", "image_url": {"url": url2}}, {"type": "text", "text": "Which is larger?"}]}]
    r = client.chat.completions.create(model=model_id, messages=messages, max_tokens=4)
    sizes = [im["size"] for im in r.hires_vlm["images"]]
    assert sizes == [[300, 200], [160, 400]]
    assert r.usage.model_extra["visual_tokens"] == sum(im["visual_tokens"] for im in r.hires_vlm["images"])
