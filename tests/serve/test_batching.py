"""Batching over real HTTP: concurrent requests share a decode and get the answers they get alone; a
failing row never fails its batch mates (and a streamed row resumes without repeating itself); a
long request does not hold back a short one; a full queue answers 429; a deadline answers 504; a
client that leaves a stream stops its row."""

from __future__ import annotations

import http.client
import json
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
from serve_helpers import data_url, image_message, picture, png_bytes

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "What colour is the circle?"


@pytest.fixture(scope="module")
def batch_server(start_server, llava_hd_dir):
    return start_server(llava_hd_dir, max_batch_size=8, batch_wait_ms=50, request_timeout=60)


@contextmanager
def worker_held(server, model, waiting: int):
    """Keep the model's worker busy with a long streamed request until ``waiting`` jobs queue behind it,
    then leave that stream: the worker stops it at its next token and takes them as one batch."""
    conn = http.client.HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]), timeout=30)
    body = {"model": model, "messages": [image_message(PROMPT)], "max_tokens": 1700, "stream": True}
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.fp.readline()
    t0 = time.monotonic()
    while not server.batcher.status()["decoding"]:
        assert time.monotonic() - t0 < 10
        time.sleep(0.005)
    try:
        yield
        while server.batcher.status()["waiting"] < waiting:
            assert time.monotonic() - t0 < 20, server.batcher.status()
            time.sleep(0.005)
    finally:
        conn.sock.close()
        conn.close()


@pytest.fixture(scope="module")
def tight_server(start_server, llava_hd_dir):
    return start_server(llava_hd_dir, max_batch_size=1, batch_wait_ms=0, max_queue=2, request_timeout=1.0)


def _client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _ask(client, model, max_tokens=8, stream=False, colour="red"):
    messages = [image_message(PROMPT, data_url(png_bytes(picture(colour=colour))))]
    if stream:
        chunks = list(client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                                     stream=True))
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks[-1]
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens)
    return r.choices[0].message.content, r


def test_concurrent_requests_share_a_batch_and_answer_as_alone(batch_server, llava_hd_dir):
    client, model = _client(batch_server), str(llava_hd_dir)
    colours = ["red", "green", "blue", "black"] * 2
    alone = {c: _ask(client, model, colour=c)[0] for c in set(colours)}
    assert len(set(alone.values())) > 1, "the test images should give different answers"
    with ThreadPoolExecutor(8) as pool:
        with worker_held(batch_server, model, 8):
            futures = [pool.submit(_ask, client, model, stream=k % 2 == 0, colour=c) for k, c in enumerate(colours)]
        results = [f.result() for f in futures]
    for c, (text, last) in zip(colours, results):
        assert text == alone[c], c
        assert last.hires_vlm["batch_size"] == 8


def test_a_failing_row_does_not_fail_its_batch_mates(batch_server, llava_hd_dir, monkeypatch):
    """The model raises for any batch holding a 77x77 image (as a bad row might); its mates are
    decoded again alone and answered, and only the bad row gets the error."""
    client, model = _client(batch_server), str(llava_hd_dir)
    engine = batch_server.app.state.engine
    merge = engine.model.merge_inputs

    def failing_merge(input_ids, attention_mask=None, pixel_values=None, image_sizes=None, *a, **kw):
        if image_sizes is not None and [77, 77] in image_sizes.tolist():
            raise RuntimeError("injected failure for the 77x77 image")
        return merge(input_ids, attention_mask, pixel_values, image_sizes, *a, **kw)

    good = _ask(client, model)[0]
    monkeypatch.setattr(engine.model, "merge_inputs", failing_merge)
    before = dict(batch_server.batcher.stats)

    def send(bad):
        try:
            url = data_url(png_bytes(picture((77, 77)))) if bad else data_url(png_bytes())
            r = client.chat.completions.create(model=model, messages=[image_message(PROMPT, url)], max_tokens=8)
            return r.choices[0].message.content
        except openai.InternalServerError as err:
            return err

    with ThreadPoolExecutor(4) as pool:
        with worker_held(batch_server, model, 4):
            futures = [pool.submit(send, bad) for bad in (False, True, False, False)]
        out = [f.result() for f in futures]
    assert out[0] == out[2] == out[3] == good
    assert isinstance(out[1], openai.InternalServerError) and out[1].code == "generation_failed"
    assert "injected failure" in out[1].message
    stats = batch_server.batcher.stats
    assert stats["retried_batches"] > before["retried_batches"] and stats["failed_rows"] == before["failed_rows"] + 1


def test_a_batch_failing_mid_stream_resumes_its_rows_without_repeats(batch_server, llava_hd_dir, monkeypatch):
    client, model = _client(batch_server), str(llava_hd_dir)
    lm = batch_server.app.state.engine.model.language_model
    expected = _ask(client, model, max_tokens=12)[0]
    forward, calls = lm.forward, {"n": 0}

    def flaky_forward(*args, **kwargs):
        embeds = kwargs.get("inputs_embeds")
        ids = kwargs.get("input_ids")
        rows = (embeds if embeds is not None else ids).shape[0]
        if rows > 1:
            calls["n"] += 1
            if calls["n"] == 5:  # prefill + 4 decode steps: a few tokens were already streamed
                raise RuntimeError("injected mid-decode failure")
        return forward(*args, **kwargs)

    with ThreadPoolExecutor(2) as pool:
        with worker_held(batch_server, model, 2):
            monkeypatch.setattr(lm, "forward", flaky_forward)
            futures = [pool.submit(_ask, client, model, 12, s) for s in (True, False)]
        out = [f.result() for f in futures]
    assert calls["n"] >= 5
    assert out[0][0] == expected and out[1][0] == expected


def test_a_long_request_does_not_hold_back_a_short_one(batch_server, llava_hd_dir):
    client, model = _client(batch_server), str(llava_hd_dir)

    def timed(max_tokens):
        t0 = time.monotonic()
        text, r = _ask(client, model, max_tokens=max_tokens)
        return time.monotonic() - t0, r

    with ThreadPoolExecutor(2) as pool:
        with worker_held(batch_server, model, 2):
            futures = [pool.submit(timed, n) for n in (1000, 2)]
        (t_long, long_r), (t_short, short_r) = (f.result() for f in futures)
    assert long_r.usage.completion_tokens == 1000 and short_r.usage.completion_tokens == 2
    assert long_r.hires_vlm["batch_size"] == short_r.hires_vlm["batch_size"] == 2
    # the short answer left the shared decode after its 2 tokens, not after the long one's 1000
    decode_short, decode_long = (r.hires_vlm["timing"]["decode_ms"] for r in (short_r, long_r))
    assert decode_short * 5 < decode_long and t_short < t_long, (decode_short, decode_long, t_short, t_long)


def test_a_client_leaving_a_stream_stops_its_row(batch_server, llava_hd_dir):
    conn = http.client.HTTPConnection("127.0.0.1", int(batch_server.url.rsplit(":", 1)[1]), timeout=30)
    body = {"model": str(llava_hd_dir), "messages": [image_message(PROMPT)], "max_tokens": 1500, "stream": True}
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    resp.fp.readline(), resp.fp.readline(), resp.fp.readline()  # the role chunk and the first token arrived
    t0 = time.monotonic()
    conn.sock.close()
    conn.close()
    while batch_server.batcher.status()["decoding"]:  # 1500 tokens take several seconds; a stop, one step
        assert time.monotonic() - t0 < 3.0, "the row kept decoding after its client left"
        time.sleep(0.02)


def test_a_full_queue_answers_429_and_the_rest_are_served(tight_server, llava_hd_dir):
    client, model = _client(tight_server), str(llava_hd_dir)

    def send(_):
        try:
            return _ask(client, model, max_tokens=20)[1].usage.completion_tokens
        except openai.RateLimitError as err:
            return err

    with ThreadPoolExecutor(8) as pool:
        out = list(pool.map(send, range(8)))
    refused = [o for o in out if isinstance(o, openai.RateLimitError)]
    assert refused and len(refused) < 8
    assert all(o == 20 for o in out if not isinstance(o, openai.RateLimitError))
    err = refused[0]
    assert err.status_code == 429 and err.code == "queue_full" and err.response.headers["retry-after"] == "1"
    assert _ask(client, model, max_tokens=3)[1].usage.completion_tokens == 3  # still serving


def test_the_deadline_answers_504_plain_and_streamed(tight_server, llava_hd_dir, monkeypatch):
    client, model = _client(tight_server), str(llava_hd_dir)
    lm = tight_server.app.state.engine.model.language_model
    forward = lm.forward

    def slow_forward(*args, **kwargs):
        time.sleep(0.01)  # 10 ms a step: 500 tokens take 5 s, far past the 1 s deadline
        return forward(*args, **kwargs)

    monkeypatch.setattr(lm, "forward", slow_forward)
    t0 = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        _ask(client, model, max_tokens=500)
    assert info.value.status_code == 504 and info.value.code == "timeout"
    assert time.monotonic() - t0 < 3.5
    with pytest.raises(openai.APIError) as info:
        _ask(client, model, max_tokens=500, stream=True)
    assert "timeout" in str(info.value)
    monkeypatch.setattr(lm, "forward", forward)
    assert _ask(client, model, max_tokens=3)[1].usage.completion_tokens == 3


def test_gathering_waits_for_requests_being_prepared_and_never_for_absent_ones(start_server, llava_hd_dir,
                                                                             monkeypatch):
    server = start_server(llava_hd_dir, max_batch_size=4, batch_wait_ms=2000, request_timeout=60, preprocess_workers=2)
    client, model = _client(server), str(llava_hd_dir)
    alone = _ask(client, model, max_tokens=2)[1]
    assert alone.hires_vlm["batch_size"] == 1 and alone.hires_vlm["timing"]["queue_ms"] < 1000  # not 2000
    engine = server.app.state.engine
    prepare = engine.prepare

    def slow_prepare(req):
        if "slow" in req.messages[-1].parts[-1]:
            time.sleep(0.4)
        return prepare(req)

    monkeypatch.setattr(engine, "prepare", slow_prepare)

    def ask(text):
        r = client.chat.completions.create(model=model, messages=[image_message(text)], max_tokens=2)
        return r.hires_vlm

    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(ask, "slow one")
        time.sleep(0.1)  # the slow request is being prepared when the fast one queues
        fast = pool.submit(ask, "fast one").result()
        slow = slow.result()
    assert fast["batch_size"] == slow["batch_size"] == 2
    assert fast["timing"]["queue_ms"] > 200  # it waited for its batch mate, about 0.3 s


def test_under_a_steady_load_the_answered_clients_are_waited_for(start_server, llava_hd_dir):
    """After a batch of 3, the next requests gather again into 3 (the clients just answered come back),
    though they arrive 0.2 s apart; after a second of quiet a lone request starts at once."""
    server = start_server(llava_hd_dir, max_batch_size=4, batch_wait_ms=2000, request_timeout=60, preprocess_workers=2)
    client, model = _client(server), str(llava_hd_dir)

    def ask(delay):
        time.sleep(delay)
        return _ask(client, model, max_tokens=2)[1].hires_vlm

    with ThreadPoolExecutor(3) as pool:
        first = [pool.submit(ask, 0) for _ in range(3)]  # sent together: gathered as they are being prepared
        assert [f.result()["batch_size"] for f in first] == [3, 3, 3]
        second = [f.result() for f in [pool.submit(ask, d) for d in (0.0, 0.2, 0.4)]]
    assert [r["batch_size"] for r in second] == [3, 3, 3]
    # the first waited for the other two (0.4 s), not for the 2 s bound
    assert 300 < second[0]["timing"]["queue_ms"] < 1500, second[0]["timing"]
    time.sleep(1.2)  # longer than the load's memory (RECENT_S)
    lone = ask(0)
    assert lone["batch_size"] == 1 and lone["timing"]["queue_ms"] < 1000
