"""Malformed requests over raw HTTP (``http.client``): each gets its status and an OpenAI-shaped error
naming the field, the server keeps serving, and a good request is still answered afterwards."""

from __future__ import annotations

import http.client
import json
import os
import struct
import zlib

import pytest
from serve_helpers import API_KEY, data_url, image_message, picture, png_bytes

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = object()  # replaced by the served model's id


def bomb_png(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header claims ``width`` x ``height`` (a decompression bomb's header)."""
    data = bytearray(png_bytes(picture((1, 1))))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr:ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def big_plain_png(width: int, height: int) -> bytes:
    """A real image of ``width`` x ``height`` (one colour: a small file)."""
    from PIL import Image

    return png_bytes(Image.new("RGB", (width, height), "grey"))


GOOD_IMAGE = data_url(png_bytes())


def body(**fields) -> dict:
    out = {"model": MODEL, "messages": [image_message()], "max_tokens": 4}
    out.update(fields)
    return {k: v for k, v in out.items() if v is not DROP}


DROP = object()


def with_image(url: str) -> dict:
    return body(messages=[image_message(url=url)])


def with_content(content) -> dict:
    return body(messages=[{"role": "user", "content": content}])


# (case id, request body: a dict (MODEL filled in) or raw bytes, status, code, param)
CASES = [
    ("not-json", b"{bad", 400, "invalid_json", None),
    ("not-utf8", b"\xff\xfe{}", 400, "invalid_json", None),
    ("empty-body", b"", 400, "invalid_json", None),
    ("array-body", b"[1, 2]", 400, "invalid_body", None),
    ("missing-model", body(model=DROP), 400, "missing_field", "model"),
    ("model-not-string", body(model=12), 400, "invalid_type", "model"),
    ("unknown-model", body(model="gpt-4o"), 404, "model_not_found", "model"),
    ("missing-messages", body(messages=DROP), 400, "missing_field", "messages"),
    ("messages-not-array", body(messages={"role": "user"}), 400, "invalid_type", "messages"),
    ("messages-empty", body(messages=[]), 400, "empty_messages", "messages"),
    ("message-not-object", body(messages=["hi"]), 400, "invalid_type", "messages[0]"),
    ("bad-role", body(messages=[{"role": "robot", "content": "hi"}]), 400, "invalid_role", "messages[0].role"),
    ("tool-role", body(messages=[{"role": "tool", "content": "hi"}]), 400, "unsupported_role", "messages[0].role"),
    ("missing-content", body(messages=[{"role": "user"}]), 400, "missing_field", "messages[0].content"),
    ("content-number", with_content(5), 400, "invalid_type", "messages[0].content"),
    ("content-empty-array", with_content([]), 400, "empty_content", "messages[0].content"),
    ("part-without-type", with_content([{"text": "hi"}]), 400, "missing_field", "messages[0].content[0].type"),
    ("part-audio", with_content([{"type": "input_audio", "input_audio": {}}]), 400, "unsupported_content_type",
     "messages[0].content[0].type"),
    ("text-not-string", with_content([{"type": "text", "text": 3}]), 400, "invalid_type",
     "messages[0].content[0].text"),
    ("image-url-missing", with_content([{"type": "image_url"}]), 400, "invalid_type",
     "messages[0].content[0].image_url.url"),
    ("image-in-assistant", body(messages=[image_message(), {"role": "assistant", "content": [
        {"type": "image_url", "image_url": {"url": GOOD_IMAGE}}]}, {"role": "user", "content": "?"}]), 400,
     "image_not_allowed", "messages[1].content[0]"),
    ("last-not-user", body(messages=[image_message(), {"role": "assistant", "content": "ok"}]), 400,
     "last_message_not_user", "messages[1].role"),
    ("system-after-user", body(messages=[image_message(), {"role": "system", "content": "x"}]), 400,
     "misplaced_system_message", "messages[1]"),
    ("placeholder-in-text", with_content("look: <image>"), 400, "reserved_text", "messages[0].content"),
    ("lone-surrogate", b'{"model": MODEL, "messages": [{"role": "user", "content": "a\\ud800b"}]}', 400,
     "invalid_text", "messages[0].content"),
    ("tool-calls", body(messages=[{"role": "user", "content": "x"}, {"role": "assistant", "content": "",
                                  "tool_calls": [{"id": "1"}]}, {"role": "user", "content": "y"}]), 400,
     "unsupported_parameter", "messages[1]"),
    ("max-tokens-zero", body(max_tokens=0), 400, "invalid_value", "max_tokens"),
    ("max-tokens-string", body(max_tokens="10"), 400, "invalid_type", "max_tokens"),
    ("max-tokens-bool", body(max_tokens=True), 400, "invalid_type", "max_tokens"),
    ("max-tokens-over-limit", body(max_tokens=100_000), 400, "max_tokens_too_large", "max_tokens"),
    ("max-tokens-conflict", body(max_tokens=4, max_completion_tokens=5), 400, "conflicting_values", "max_tokens"),
    ("temperature-high", body(temperature=3), 400, "invalid_value", "temperature"),
    ("temperature-string", body(temperature="hot"), 400, "invalid_type", "temperature"),
    ("temperature-nan", b'{"model": MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": NaN}', 400,
     "invalid_value", "temperature"),
    ("top-p-zero", body(top_p=0), 400, "invalid_value", "top_p"),
    ("n-two", body(n=2), 400, "unsupported_value", "n"),
    ("n-string", body(n="one"), 400, "invalid_type", "n"),
    ("stop-five", body(stop=["a", "b", "c", "d", "e"]), 400, "invalid_value", "stop"),
    ("stop-number", body(stop=[1]), 400, "invalid_type", "stop[0]"),
    ("stop-empty", body(stop=""), 400, "invalid_value", "stop[0]"),
    ("seed-float", body(seed=1.5), 400, "invalid_type", "seed"),
    ("stream-string", body(stream="yes"), 400, "invalid_type", "stream"),
    ("stream-options-alone", body(stream_options={"include_usage": True}), 400, "invalid_value", "stream_options"),
    ("tools", body(tools=[{"type": "function", "function": {"name": "f"}}]), 400, "unsupported_parameter", "tools"),
    ("logprobs", body(logprobs=True), 400, "unsupported_parameter", "logprobs"),
    ("json-mode", body(response_format={"type": "json_object"}), 400, "unsupported_parameter", "response_format"),
    ("presence-penalty", body(presence_penalty=0.5), 400, "unsupported_parameter", "presence_penalty"),
    ("too-many-images", with_content([{"type": "image_url", "image_url": {"url": GOOD_IMAGE}}] * 4), 400,
     "too_many_images", "messages"),
    ("remote-url", with_image("https://example.com/cat.png"), 400, "remote_image_url",
     "messages[0].content[0].image_url.url"),
    ("ftp-url", with_image("ftp://example.com/cat.png"), 400, "unsupported_image_url",
     "messages[0].content[0].image_url.url"),
    ("data-url-text", with_image(data_url(b"hello", "text/plain")), 400, "unsupported_image_type",
     "messages[0].content[0].image_url.url"),
    ("data-url-no-comma", with_image("data:image/png;base64"), 400, "invalid_image_url",
     "messages[0].content[0].image_url.url"),
    ("data-url-not-base64", with_image("data:image/png,abc"), 400, "invalid_image_url",
     "messages[0].content[0].image_url.url"),
    ("bad-base64", with_image("data:image/png;base64,@@@not base64@@@"), 400, "invalid_base64",
     "messages[0].content[0].image_url.url"),
    ("empty-image", with_image("data:image/png;base64,"), 400, "invalid_image",
     "messages[0].content[0].image_url.url"),
    ("truncated-png", with_image(data_url(png_bytes()[:120])), 400, "invalid_image",
     "messages[0].content[0].image_url.url"),
    ("not-an-image", with_image(data_url(os.urandom(2000))), 400, "invalid_image",
     "messages[0].content[0].image_url.url"),
    ("bomb-header", with_image(data_url(bomb_png(100_000, 100_000))), 400, "invalid_image",
     "messages[0].content[0].image_url.url"),
    ("pixels-over-limit", with_image(data_url(big_plain_png(2100, 2000))), 400, "invalid_image",
     "messages[0].content[0].image_url.url"),
    ("request-pixels-over-limit", with_content([{"type": "image_url", "image_url": {"url": data_url(
        big_plain_png(2000, 2000))}}] * 2), 400, "too_many_pixels", "messages[0].content[1].image_url.url"),
    ("image-bytes-over-limit", with_image(data_url(os.urandom(1_200_000))), 400, "image_too_large",
     "messages[0].content[0].image_url.url"),
    ("prompt-too-long", with_content("word " * 3000), 400, "context_length_exceeded", "messages"),
]


def _send(server, method: str, path: str, data: bytes | None = None, headers: dict | None = None,
          chunked: bool = False):
    conn = http.client.HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]), timeout=60)
    hdrs = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json", **(headers or {})}
    if chunked:
        conn.putrequest(method, path)
        for k, v in {**hdrs, "Transfer-Encoding": "chunked"}.items():
            conn.putheader(k, v)
        conn.endheaders()
        for start in range(0, len(data), 1 << 16):
            piece = data[start:start + (1 << 16)]
            try:
                conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            except (BrokenPipeError, ConnectionResetError):
                break  # the server answered early and closed
        else:
            conn.send(b"0\r\n\r\n")
    else:
        conn.request(method, path, body=data, headers=hdrs)
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    return resp.status, raw


def _payload(case_body, model_id: str) -> bytes:
    if isinstance(case_body, bytes):
        return case_body.replace(b"MODEL", json.dumps(model_id).encode())
    filled = {k: (model_id if v is MODEL else v) for k, v in case_body.items()}
    return json.dumps(filled).encode()


def _assert_error(status, raw, want_status, code, param):
    assert status == want_status, raw[:500]
    err = json.loads(raw)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and len(err["message"]) > 10
    assert err["code"] == code and err["param"] == param, err
    assert err["type"] == {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                           404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
                           429: "rate_limit_error"}[want_status]
    return err


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_malformed_request_is_refused_clearly(main_server, model_id, case):
    _, case_body, status, code, param = case
    got_status, raw = _send(main_server, "POST", "/v1/chat/completions", _payload(case_body, model_id))
    _assert_error(got_status, raw, status, code, param)


def test_bomb_and_pixel_messages_say_why(main_server, model_id):
    cases = ((bomb_png(100_000, 100_000), "10000000000 pixels"), (big_plain_png(2100, 2000), "4200000 pixels"),
             (os.urandom(500), "no image format Pillow reads"))
    for png, words in cases:
        _, raw = _send(main_server, "POST", "/v1/chat/completions", _payload(with_image(data_url(png)), model_id))
        assert words in json.loads(raw)["error"]["message"]


def test_body_over_the_limit_is_413_declared_or_streamed(main_server, model_id):
    big = _payload(with_content("x" * (5 << 20)), model_id)
    _assert_error(*_send(main_server, "POST", "/v1/chat/completions", big), 413, "request_too_large", None)
    _assert_error(*_send(main_server, "POST", "/v1/chat/completions", big, chunked=True), 413, "request_too_large",
                  None)


def test_routes_methods_and_key_errors_have_the_shape(main_server, model_id):
    _assert_error(*_send(main_server, "GET", "/v1/chat/completions"), 405, "method_not_allowed", None)
    err = _assert_error(*_send(main_server, "GET", "/v1/nothing-here"), 404, "unknown_route", None)
    assert "/v1/nothing-here" in err["message"]
    good = _payload(body(), model_id)
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {API_KEY}"}):
        _assert_error(*_send(main_server, "POST", "/v1/chat/completions", good, headers), 401, "invalid_api_key", None)


def test_max_tokens_beyond_the_context_left(main_server, model_id):
    text = "word " * 420  # ≈1700 tokens, text only: the upper bound of the prompt is its length
    status, raw = _send(main_server, "POST", "/v1/chat/completions",
                        _payload(with_content(text) | {"max_tokens": 1}, model_id))
    assert status == 200, raw
    prompt = json.loads(raw)["usage"]["prompt_tokens"]
    room = 2048 - prompt  # the tiny model's max_length
    assert 1 <= room <= 512, prompt  # within the server's max_tokens_limit, so the context is what refuses
    err = _assert_error(*_send(main_server, "POST", "/v1/chat/completions",
                               _payload(with_content(text) | {"max_tokens": room + 1}, model_id)),
                        400, "context_length_exceeded", "max_tokens")
    assert f"at most {room}" in err["message"]


CUT_CASES = [
    ("no-image", {}, 400, "missing_field", "image_url.url"),
    ("bad-grid", {"image_url": {"url": GOOD_IMAGE}, "local_grid": [8], "kept_local_tokens": []}, 400,
     "invalid_value", "local_grid"),
    ("kept-out-of-range", {"image_url": {"url": GOOD_IMAGE}, "local_grid": [8, 12], "kept_local_tokens": [96]}, 400,
     "invalid_value", "kept_local_tokens"),
    ("broken-image", {"image_url": {"url": data_url(png_bytes()[:100])}}, 400, "invalid_image", "image_url.url"),
]


@pytest.mark.parametrize("case", CUT_CASES, ids=[c[0] for c in CUT_CASES])
def test_malformed_cut_request_is_refused_clearly(main_server, case):
    _, case_body, status, code, param = case
    _assert_error(*_send(main_server, "POST", "/v1/hires_vlm/cut", json.dumps(case_body).encode()), status, code, param)


def test_still_serving_after_all_of_them(main_server, model_id):
    status, raw = _send(main_server, "POST", "/v1/chat/completions", _payload(body(max_tokens=3), model_id))
    assert status == 200, raw
    answer = json.loads(raw)
    assert answer["usage"]["completion_tokens"] >= 1 and answer["choices"][0]["message"]["role"] == "assistant"
    status, raw = _send(main_server, "GET", "/health")
    health = json.loads(raw)
    assert status == 200 and health["worker_alive"] and health["failed_rows"] == 0
