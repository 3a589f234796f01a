"""The bodies the server answers with, in OpenAI's chat-completions format.

* ``chat.completion`` — one choice, ``usage`` and the ``hires_vlm`` extension (see :mod:`.engine`).
* ``chat.completion.chunk`` — a stream: a first chunk with the role, one chunk per text delta, a
  last chunk with ``finish_reason`` and the extension, then ``data: [DONE]``. ``usage`` is in the
  last chunk; with ``stream_options.include_usage`` it comes, as OpenAI sends it, in one more
  chunk with empty ``choices`` (and the last chunk has ``usage: null``).

``usage.prompt_tokens`` counts what the language model read: the text tokens and the visual
tokens (``usage.visual_tokens``, an extension field). Standard library only.
"""

from __future__ import annotations

import json
import secrets
import time


def new_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def completion(cid: str, created: int, model: str, result: dict) -> dict:
    return {
        "id": cid, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result["text"]}, "logprobs": None,
                     "finish_reason": result["finish_reason"]}],
        "usage": result["usage"], "hires_vlm": result["hires_vlm"],
    }


def chunk(cid: str, created: int, model: str, delta: dict | None, finish_reason: str | None = None, **extra) -> dict:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices,
            **extra}


def final_chunks(cid: str, created: int, model: str, result: dict, include_usage: bool) -> list[dict]:
    last = chunk(cid, created, model, {}, result["finish_reason"], usage=None if include_usage else result["usage"],
                 hires_vlm=result["hires_vlm"])
    if not include_usage:
        return [last]
    return [last, chunk(cid, created, model, None, usage=result["usage"])]


def sse(obj: dict | str) -> str:
    """One server-sent event."""
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n"


DONE = sse("[DONE]")


def now() -> int:
    return int(time.time())
