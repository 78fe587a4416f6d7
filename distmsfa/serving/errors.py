"""The HTTP error contract of the scoring service (plain Python, no Ray, no FastAPI).

Every refusal is ``ServeError(status, code, message)`` and goes out as
``{"error": {"code": code, "message": message}}`` with that status.  Messages are one line,
say how to fix the request, and never carry patient identifiers (see ``deid``).
"""
from __future__ import annotations


class ServeError(Exception):
    """A request the service refuses: HTTP ``status`` (4xx/5xx), a stable ``code``, a message."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = int(status)
        self.code = code
        self.message = message
        self.headers = dict(headers or {})

    def body(self) -> dict:
        return error_body(self.code, self.message)


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


# Status codes used by the service, with their stable error codes (docs/serving.md lists them).
BAD_REQUEST = 400  # malformed multipart, unknown or duplicate field
UNAUTHORIZED = 401  # missing or wrong API key
REQUEST_TIMEOUT = 408  # the client did not finish sending its body in time
PAYLOAD_TOO_LARGE = 413  # upload or unpacked zip over the limit
UNSUPPORTED_MEDIA = 415  # not multipart/form-data, or a file type we do not read
UNPROCESSABLE = 422  # the images/ROI cannot be used (each message says why)
TOO_MANY = 429  # queue full (with Retry-After)
UNAVAILABLE = 503  # models not loaded yet, or an inner queue full (with Retry-After)
GATEWAY_TIMEOUT = 504  # the case took longer than the request timeout
