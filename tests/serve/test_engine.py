"""The parts under the HTTP layer: request preparation (the ids ``apply_chat_template`` gives), per-row
decoding (stop strings, streaming hold-back), per-row sampling, and image decoding limits."""

from __future__ import annotations

import math

import pytest
import torch
from serve_helpers import data_url, picture, png_bytes

from hires_vlm.serve.decoding import RowDecoder, RowSampler
from hires_vlm.serve.errors import APIError
from hires_vlm.serve.images import fetch_image
from hires_vlm.serve.schema import ImageRef, Sampling, parse_chat_request

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def engine(slime_dir):
    from hires_vlm.serve import Engine, ServeSettings

    return Engine.load(ServeSettings(model_dir=str(slime_dir), device="cpu"))


def test_prepare_gives_the_ids_and_pixels_of_apply_chat_template(engine):
    a, b = picture((300, 200), "red"), picture((150, 420), "green")
    body = {"model": "m", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(png_bytes(a))}},
                                     {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": "A circle."},
        {"role": "user", "content": [{"type": "text", "text": "And this one?"},
                                     {"type": "image_url", "image_url": {"url": data_url(png_bytes(b))}}]}]}
    prepared = engine.prepare(parse_chat_request(body))
    hf = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
          {"role": "user", "content": [{"type": "image", "image": a}, {"type": "text", "text": "What is this?"}]},
          {"role": "assistant", "content": [{"type": "text", "text": "A circle."}]},
          {"role": "user", "content": [{"type": "text", "text": "And this one?"}, {"type": "image", "image": b}]}]
    ref = engine.processor.apply_chat_template(hf, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert prepared.input_ids == ref["input_ids"][0].tolist()
    assert torch.equal(prepared.pixel_values, ref["pixel_values"])
    assert prepared.image_sizes == [(300, 200), (150, 420)]
    assert prepared.upper_bounds == [engine.processor.max_visual_tokens(s) for s in prepared.image_sizes]
    assert prepared.max_tokens == 256  # the default, within the context


def test_consecutive_messages_of_one_role_are_joined():
    req = parse_chat_request({"model": "m", "messages": [
        {"role": "system", "content": "a"}, {"role": "developer", "content": "b"},
        {"role": "user", "content": "c"}, {"role": "user", "content": [{"type": "text", "text": "d"}]}]})
    assert [(m.role, "".join(m.parts)) for m in req.messages] == [("system", "a\nb"), ("user", "c\nd")]


# ---------------------------------------------------------------------- RowDecoder
def _decoder(stops=(), max_tokens=50, stream=True, eos=(0,)):
    return RowDecoder(lambda ids: "".join(chr(i) for i in ids), eos_ids=eos, stops=stops, max_tokens=max_tokens,
                      stream=stream)


def _feed(dec, text, then_eos=True):
    deltas = [dec.push(ord(ch)) for ch in text]
    if then_eos and not dec.finished:
        deltas.append(dec.push(0))
    return deltas


def test_stream_deltas_add_up_to_the_text_and_hold_back_stop_prefixes():
    dec = _decoder(stops=("</s>",))
    deltas = _feed(dec, "  ab </xs> c</s>zz")
    assert dec.text == "ab </xs> c" and dec.finish_reason == "stop"
    assert "".join(deltas) == dec.text
    assert all("<" not in d or "</x" in "".join(deltas[: i + 1]) for i, d in enumerate(deltas))
    # nothing that may be the start of the stop string, nor trailing whitespace, goes out early
    dec = _decoder(stops=("</s>",))
    assert _feed(dec, "ab </", then_eos=False) == ["a", "b", "", "", ""]
    assert dec.push(ord("x")) == " </x"


def test_non_streamed_text_equals_streamed_text():
    for text, stops in ((" a b c d ", ()), (" a b c d ", ("c",)), (" a b c d ", ("zz", " b")),
                        ("ab </s> c", ("</s>",)), ("ab \n </s>", ("</s>", "\n\n"))):
        streamed, plain = _decoder(stops=stops), _decoder(stops=stops, stream=False)
        out = "".join(_feed(streamed, text))
        assert not any(_feed(plain, text))
        assert out == streamed.text == plain.text and streamed.finish_reason == plain.finish_reason


def test_budget_eos_and_interruptions():
    dec = _decoder(max_tokens=3)
    assert "".join(_feed(dec, "abcdef")) == "abc" and dec.finish_reason == "length" and dec.n_tokens == 3
    dec = _decoder()
    _feed(dec, "ab")
    assert dec.finish_reason == "stop" and dec.n_tokens == 3  # the end-of-turn token counts, shows nothing
    dec = _decoder()
    _feed(dec, "ab ", then_eos=False)
    assert dec.close("cancelled") == "" and dec.text == "ab" and dec.finish_reason == "cancelled"
    assert dec.push(ord("c")) == "" and dec.text == "ab"
    resumed = RowDecoder(lambda ids: "".join(chr(i) for i in ids), eos_ids=(0,), max_tokens=9, stream=True,
                         already_emitted=2)
    assert "".join(_feed(resumed, "abcd")) == "cd"  # a retried row does not resend what was streamed


# ---------------------------------------------------------------------- RowSampler
def test_sampler_draws_follow_temperature_and_top_p_per_row():
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0])
    rows = [Sampling(0.0), Sampling(1.0, 1.0, seed=1), Sampling(0.5, 1.0, seed=2), Sampling(1.0, 0.5, seed=3)]
    sampler = RowSampler(rows, done=lambda i: False)
    counts = torch.zeros(4, 4)
    n = 3000
    for _ in range(n):
        scores = sampler(None, logits.repeat(4, 1).clone())
        assert torch.equal(scores[0], logits)  # greedy row untouched
        picks = scores[1:].argmax(-1)
        assert torch.equal(scores[1:].max(-1).values, torch.zeros(3))
        counts[torch.arange(1, 4), picks] += 1
    for row, temp in ((1, 1.0), (2, 0.5)):
        want = torch.softmax(logits / temp, -1) * n
        chi2 = float(((counts[row] - want) ** 2 / want).sum())
        assert chi2 < 25, (row, counts[row], want)  # 3 degrees of freedom: p ≈ 1e-5
    # top_p = 0.5: the most likely token alone holds softmax([2, 1, .5, -1])[0] ≈ 0.61 ≥ 0.5
    assert counts[3, 0] == n


def test_sampler_seeds_reproduce_and_differ():
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(0)).repeat(2, 1)

    def draws(seed):
        s = RowSampler([Sampling(1.0, 1.0, seed=seed)] * 2, done=lambda i: False)
        return [s(None, logits.clone()).argmax(-1).tolist() for _ in range(20)]

    assert draws(5) == draws(5) != draws(6)
    a = draws(7)
    assert [x for x, _ in a] == [y for _, y in a]  # two rows with one seed draw alike: nothing shared between rows


# ---------------------------------------------------------------------- images
def test_a_bomb_is_refused_before_any_pixel_is_decoded(monkeypatch):
    from PIL import ImageFile

    from test_malformed import bomb_png

    decoded = []
    load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or load(self))
    ref = ImageRef(data_url(bomb_png(50_000, 50_000)), "u")
    with pytest.raises(APIError) as info:
        fetch_image(ref, max_bytes=1 << 20, max_pixels=10_000_000)
    assert info.value.code == "invalid_image" and "2500000000 pixels" in info.value.message
    assert decoded == []
    ok = fetch_image(ImageRef(data_url(png_bytes()), "u"), max_bytes=1 << 20, max_pixels=10_000_000)
    assert ok.size == (300, 200) and ok.mode == "RGB" and decoded and set(decoded) == {(300, 200)}


def test_payload_size_is_checked_before_base64_is_decoded():
    limit = 1000
    ok = data_url(b"x" * limit)
    assert math.ceil(limit / 3) * 4 <= len(ok.split(",", 1)[1])
    with pytest.raises(APIError) as info:
        fetch_image(ImageRef(data_url(b"x" * (limit + 200)), "u"), max_bytes=limit, max_pixels=100)
    assert info.value.code == "image_too_large"
    with pytest.raises(APIError) as info:  # within the size, so it is decoded, and it is no image
        fetch_image(ImageRef(ok, "u"), max_bytes=limit, max_pixels=100)
    assert info.value.code == "invalid_image"


def test_the_cut_figure_shades_the_dropped_local_tokens(engine):
    import base64
    import io

    import numpy as np
    from PIL import Image

    from hires_vlm.serve.figures import cut_figure

    def brightness(router):
        fig = cut_figure(engine.model, picture(), router)
        png = base64.b64decode(fig["figure"].split(",", 1)[1])
        return fig["cut"], float(np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float32).mean())

    cut, plain = brightness(None)
    assert cut["grid"] == [3, 2] and cut["num_views"] == 7 and cut["visual_tokens_upper_bound"] == 161
    kept_all, all_kept = brightness({"local_grid": [8, 12], "kept": list(range(96))})
    kept_none, none_kept = brightness({"local_grid": [8, 12], "kept": []})
    assert kept_all["kept_local_tokens"] == 96 and kept_none["kept_local_tokens"] == 0
    assert none_kept < all_kept - 2  # 96 shaded cells over the image
    assert abs(all_kept - plain) < 2  # nothing shaded: only the title's second line differs


def test_inspect_route_figure_shades_what_the_router_dropped(slime_dir, tmp_path):
    """``hires-vlm inspect IMAGE --model DIR --route --save-figure F`` passes the router's choice to the figure."""
    from hires_vlm.inspect_cut import run_inspect

    image = tmp_path / "circle.png"
    image.write_bytes(png_bytes())
    _, routed = run_inspect(str(image), model_dir=str(slime_dir), route=True, figure=str(tmp_path / "r.png"))
    _, plain = run_inspect(str(image), model_dir=str(slime_dir), figure=str(tmp_path / "p.png"))
    assert routed["visual_tokens_after_routing"] < routed["visual_tokens"] == plain["visual_tokens"] == 161
    assert (tmp_path / "r.png").read_bytes() != (tmp_path / "p.png").read_bytes()
