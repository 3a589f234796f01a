"""Errors a request can meet, in the shape OpenAI's API answers them with.

Every refusal of the server is one :class:`APIError`: the HTTP status and the body
``{"error": {"message", "type", "param", "code"}}`` that OpenAI's clients parse (``openai`` raises
``BadRequestError`` for 400, ``AuthenticationError`` for 401, ``NotFoundError`` for 404,
``RateLimitError`` for 429, …, with ``.code`` and ``.param`` from this body). ``param`` names the
request field at fault in JSON-path style (``messages[0].content[1].image_url``) or is ``None``.
Standard library only.
"""

from __future__ import annotations

from typing import Any

# OpenAI's error types, by the status they go with.
INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
PERMISSION = "permission_error"
NOT_FOUND = "not_found_error"
RATE_LIMIT = "rate_limit_error"
SERVER = "server_error"
TIMEOUT = "timeout_error"


class APIError(Exception):
    """A request the server refuses or could not answer: ``status``, and the OpenAI error body."""

    def __init__(self, status: int, message: str, *, type: str = INVALID_REQUEST, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = int(status)
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def __repr__(self) -> str:
        return f"APIError({self.status}, {self.code!r}, {self.message!r})"


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)
