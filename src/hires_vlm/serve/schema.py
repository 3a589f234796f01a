"""``POST /v1/chat/completions`` bodies → a checked :class:`ChatRequest`, or an :class:`APIError`.

The request is OpenAI's chat-completions format. Checked by hand rather than by a schema library,
so that every refusal names the field (``param``, JSON-path style) and says what to send instead:

* ``messages`` — ``system`` (or ``developer``), ``user`` and ``assistant`` messages; content a
  string or a list of parts: ``{"type": "text", "text"}`` and, in user messages,
  ``{"type": "image_url", "image_url": {"url"}}``. Consecutive messages of one role are joined
  with a newline (the conversation templates alternate user and assistant turns); system
  messages only at the start; the last message is the user's.
* sampling — ``temperature`` (0 = greedy), ``top_p``, ``seed``; their defaults come from the
  model's generation config (the tiny models: greedy). ``max_tokens`` (or
  ``max_completion_tokens``), ``stop`` (a string or up to 4), ``n`` (only 1), ``stream`` and
  ``stream_options.include_usage``.
* refused with a reason: tools and function calls, ``logprobs``, ``logit_bias``, non-zero
  presence/frequency penalties, ``response_format`` other than text, audio. Unknown fields are
  ignored, as OpenAI-compatible servers commonly do.

Images are not decoded here (:mod:`.images` does, per request, with the size limits).
Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import APIError, bad_request

MAX_STOP = 4
MAX_STOP_CHARS = 256
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
IMAGE_PLACEHOLDER = "<image>"  # = hires_vlm.text.IMAGE_PLACEHOLDER (not imported: that package imports torch)


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class ImageRef:
    url: str
    param: str  # where it was in the request, for error messages


@dataclass
class Message:
    role: str  # system | user | assistant
    parts: list[str | ImageRef] = field(default_factory=list)  # text pieces and images, in order


@dataclass
class ChatRequest:
    model: str
    messages: list[Message]
    sampling: Sampling
    max_tokens: int | None = None  # None: the server's default, capped by the context left
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False

    @property
    def images(self) -> list[ImageRef]:
        return [p for m in self.messages for p in m.parts if isinstance(p, ImageRef)]


# ---------------------------------------------------------------------- field checks
def _type_name(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def _wrong_type(param: str, expected: str, value: Any) -> APIError:
    return bad_request(f"'{param}' must be {expected}, got {_type_name(value)}", param, "invalid_type")


def _number(body: dict, key: str, lo: float, hi: float, *, lo_open: bool = False) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _wrong_type(key, "a number", value)
    value = float(value)
    if not (value > lo if lo_open else value >= lo) or value > hi or value != value:
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise bad_request(f"'{key}' must be in {interval}, got {value:g}", key)
    return value


def _integer(body: dict, key: str, lo: int | None = None, hi: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise _wrong_type(key, "an integer", value)
    if lo is not None and value < lo:
        raise bad_request(f"'{key}' must be at least {lo}, got {value}", key)
    if hi is not None and value > hi:
        raise bad_request(f"'{key}' must be at most {hi}, got {value}", key,
                          "max_tokens_too_large" if "tokens" in key else "invalid_value")
    return value


def _boolean(body: dict, key: str, default: bool = False, param: str | None = None) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _wrong_type(param or key, "a boolean", value)
    return value


def _text(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise _wrong_type(param, "a string", value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:  # a lone surrogate ("\ud800") from a JSON escape
        raise bad_request(f"'{param}' holds text that is not valid Unicode ({err.reason} at character "
                          f"{err.start})", param, "invalid_text") from None
    if IMAGE_PLACEHOLDER in value:
        raise bad_request(f"'{param}' contains {IMAGE_PLACEHOLDER!r}, which this model reserves for images; send "
                          "images as image_url parts", param, "reserved_text")
    return value


# ---------------------------------------------------------------------- messages
def _parts(content: Any, role: str, param: str) -> list[str | ImageRef]:
    if isinstance(content, str):
        return [_text(content, param)]
    if not isinstance(content, list):
        raise _wrong_type(param, "a string or an array of content parts", content)
    if not content:
        raise bad_request(f"'{param}' is an empty array; give at least one content part", param, "empty_content")
    out: list[str | ImageRef] = []
    for j, part in enumerate(content):
        p = f"{param}[{j}]"
        if not isinstance(part, dict):
            raise _wrong_type(p, "an object with a 'type'", part)
        kind = part.get("type")
        if kind == "text":
            out.append(_text(part.get("text"), f"{p}.text"))
        elif kind == "image_url":
            if role != "user":
                raise bad_request(f"'{p}': images may only be sent in user messages, not in a {role} message", p,
                                  "image_not_allowed")
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str) or not url:
                raise bad_request(f"'{p}.image_url.url' must be a non-empty string (a data: URL)",
                                  f"{p}.image_url.url", "invalid_type")
            out.append(ImageRef(url, f"{p}.image_url.url"))
        elif isinstance(kind, str):
            raise bad_request(f"'{p}.type' {kind!r} is not supported; this model reads 'text' and 'image_url' parts",
                              f"{p}.type", "unsupported_content_type")
        else:
            raise bad_request(f"'{p}.type' is missing; give 'text' or 'image_url'", f"{p}.type", "missing_field")
    return out


def _messages(raw: Any, limit: int) -> list[Message]:
    if raw is None:
        raise bad_request("'messages' is required: a non-empty array of messages", "messages", "missing_field")
    if not isinstance(raw, list):
        raise _wrong_type("messages", "an array of messages", raw)
    if not raw:
        raise bad_request("'messages' is an empty array; give at least one user message", "messages",
                          "empty_messages")
    if len(raw) > limit:
        raise bad_request(f"'messages' has {len(raw)} messages, more than this server's limit of {limit}",
                          "messages", "too_many_messages")
    out: list[Message] = []
    for i, m in enumerate(raw):
        p = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _wrong_type(p, "an object with 'role' and 'content'", m)
        role = m.get("role")
        if role not in ROLES:
            if role in ("tool", "function"):
                raise bad_request(f"'{p}.role' {role!r}: tool and function messages are not supported",
                                  f"{p}.role", "unsupported_role")
            raise bad_request(f"'{p}.role' must be one of system, developer, user, assistant; got {role!r}",
                              f"{p}.role", "invalid_role" if role is not None else "missing_field")
        if m.get("tool_calls") or m.get("function_call"):
            raise bad_request(f"'{p}': tool and function calls are not supported", p, "unsupported_parameter")
        if "content" not in m or m["content"] is None:
            raise bad_request(f"'{p}.content' is required", f"{p}.content", "missing_field")
        role = ROLES[role]
        parts = _parts(m["content"], role, f"{p}.content")
        if role == "system" and out and out[-1].role != "system":
            raise bad_request(f"'{p}': system messages may only come first", p, "misplaced_system_message")
        if out and out[-1].role == role:  # the templates alternate turns: one turn per run of a role
            out[-1].parts += ["\n"] + parts
        else:
            out.append(Message(role, parts))
    if out[-1].role != "user":
        raise bad_request("the last message must be the user's: this server answers it (assistant prefill is not "
                          "supported)", f"messages[{len(raw) - 1}].role", "last_message_not_user")
    return out


# ---------------------------------------------------------------------- the request
_REFUSED = {  # field → (is it in use?, why it is refused)
    "tools": (bool, "tools and function calling are not supported"),
    "functions": (bool, "function calling is not supported"),
    "tool_choice": (lambda v: v not in (None, "none"), "tools and function calling are not supported"),
    "logprobs": (bool, "logprobs are not returned by this server"),
    "top_logprobs": (lambda v: v not in (None, 0), "logprobs are not returned by this server"),
    "logit_bias": (bool, "logit_bias is not supported"),
    "presence_penalty": (lambda v: v not in (None, 0, 0.0), "presence_penalty is not supported (only 0)"),
    "frequency_penalty": (lambda v: v not in (None, 0, 0.0), "frequency_penalty is not supported (only 0)"),
    "response_format": (lambda v: v is not None and not (isinstance(v, dict) and v.get("type") == "text"),
                        "response_format: only {'type': 'text'} is supported"),
    "audio": (bool, "audio output is not supported"),
    "modalities": (lambda v: v not in (None, ["text"]), "only the text modality is supported"),
}


def parse_chat_request(body: Any, *, max_messages: int = 256, max_images: int = 8, max_tokens_limit: int = 4096,
                       default_sampling: Sampling = Sampling()) -> ChatRequest:
    """A checked request, or the :class:`APIError` of its first fault."""
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, got {_type_name(body)}", None, "invalid_body")
    model = body.get("model")
    if model is None:
        raise bad_request("'model' is required (GET /v1/models lists the one this server has)", "model",
                          "missing_field")
    if not isinstance(model, str):
        raise _wrong_type("model", "a string", model)
    for key, (in_use, why) in _REFUSED.items():
        if in_use(body.get(key)):
            raise bad_request(f"'{key}': {why}", key, "unsupported_parameter")
    messages = _messages(body.get("messages"), max_messages)
    n_images = sum(isinstance(p, ImageRef) for m in messages for p in m.parts)
    if n_images > max_images:
        raise bad_request(f"the request has {n_images} images, more than this server's limit of {max_images}",
                          "messages", "too_many_images")
    n = _integer(body, "n", 1)
    if n is not None and n != 1:
        raise bad_request(f"'n' must be 1: this server returns one choice per request (got {n}); send {n} requests "
                          "(with different seeds) instead", "n", "unsupported_value")
    max_tokens = _integer(body, "max_completion_tokens", 1, max_tokens_limit)
    legacy = _integer(body, "max_tokens", 1, max_tokens_limit)
    if max_tokens is not None and legacy is not None and max_tokens != legacy:
        raise bad_request(f"'max_tokens' ({legacy}) and 'max_completion_tokens' ({max_tokens}) differ; give one",
                          "max_tokens", "conflicting_values")
    max_tokens = max_tokens if max_tokens is not None else legacy
    temperature = _number(body, "temperature", 0.0, 2.0)
    top_p = _number(body, "top_p", 0.0, 1.0, lo_open=True)
    seed = _integer(body, "seed", -(1 << 63), (1 << 63) - 1)
    sampling = Sampling(default_sampling.temperature if temperature is None else temperature,
                        default_sampling.top_p if top_p is None else top_p,
                        default_sampling.seed if seed is None else seed)
    stream = _boolean(body, "stream")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise bad_request("'stream_options' is only allowed with 'stream': true", "stream_options")
        if not isinstance(options, dict):
            raise _wrong_type("stream_options", "an object", options)
        include_usage = _boolean(options, "include_usage", param="stream_options.include_usage")
    return ChatRequest(model=model, messages=messages, sampling=sampling, max_tokens=max_tokens,
                       stop=_stops(body.get("stop")), stream=stream, include_usage=include_usage)


def _stops(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list):
        raise _wrong_type("stop", "a string or an array of strings", value)
    if len(stops) > MAX_STOP:
        raise bad_request(f"'stop' has {len(stops)} sequences; at most {MAX_STOP}", "stop")
    for k, s in enumerate(stops):
        if not isinstance(s, str):
            raise _wrong_type(f"stop[{k}]", "a string", s)
        if not s or len(s) > MAX_STOP_CHARS:
            raise bad_request(f"'stop[{k}]' must have 1 to {MAX_STOP_CHARS} characters", f"stop[{k}]")
    return tuple(stops)
