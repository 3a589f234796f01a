"""A bounded loopback load test: 240 requests at concurrency 16 through the ``openai`` client, half of
them streamed, over four different images — zero errors, none lost, each the answer its own image
gets alone (a row mixed up with a batch mate would show), and real batches formed."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from serve_helpers import data_url, image_message, picture, png_bytes

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.usefixtures("one_thread")

REQUESTS, CONCURRENCY, MAX_TOKENS, BUDGET_S = 240, 16, 4, 60.0
SIZES = [(300, 200), (200, 300), (112, 112), (500, 150)]


def test_load_zero_errors_nothing_lost(client, model_id, main_server):
    colours = ["red", "green", "blue", "black"]
    urls = [data_url(png_bytes(picture(size, colour))) for size, colour in zip(SIZES, colours)]

    def ask(i: int):
        url = urls[i % len(urls)]
        kwargs = dict(model=model_id, messages=[image_message("Describe the image.", url)], max_tokens=MAX_TOKENS)
        if i % 2:
            chunks = list(client.chat.completions.create(stream=True, **kwargs))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            return i, chunks[-1].id, text, chunks[-1].hires_vlm
        r = client.chat.completions.create(**kwargs)
        return i, r.id, r.choices[0].message.content, r.hires_vlm

    alone = [ask(k)[2] for k in range(len(urls))]  # one at a time, before the load
    before = main_server.batcher.status()
    t0 = time.monotonic()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        results = list(pool.map(ask, range(REQUESTS)))
    elapsed = time.monotonic() - t0
    after = main_server.batcher.status()

    assert len(results) == REQUESTS and len({r[1] for r in results}) == REQUESTS  # every request, one answer each
    for i, _, text, ext in results:
        assert text == alone[i % len(urls)], i
        assert ext["images"][0]["size"] == list(SIZES[i % len(SIZES)]), i
    rows = after["rows"] - before["rows"]
    batches = after["batches"] - before["batches"]
    assert rows == REQUESTS and after["failed_rows"] == before["failed_rows"] and after["admitted"] == 0
    assert rows / batches > 2, f"{rows} rows in {batches} batches: the server did not batch"
    assert max(r[3]["batch_size"] for r in results) > 4
    assert elapsed < BUDGET_S, f"{REQUESTS} requests took {elapsed:.1f} s"
