"""API keys: read from a file or an environment variable, checked in constant time.

The service stores only the SHA-256 of the key (so the key never sits in Serve's config,
the dashboard or logs) and compares digests with ``hmac.compare_digest``."""
from __future__ import annotations

import hashlib
import hmac
import os

#: Environment variables read when no key file is given (the file variant suits k8s secrets).
KEY_ENV = "DISTMSFA_API_KEY"
KEY_FILE_ENV = "DISTMSFA_API_KEY_FILE"
MIN_KEY_CHARS = 16


class ApiKeyError(ValueError):
    """The API key cannot be read or is too weak; the message says how to fix it."""


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def read_key(path: str | None = None, environ: dict | None = None) -> str | None:
    """The key from ``path``, else ``$DISTMSFA_API_KEY_FILE``, else ``$DISTMSFA_API_KEY``; None if none."""
    env = os.environ if environ is None else environ
    path = path or env.get(KEY_FILE_ENV)
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                key = fh.read().strip()
        except OSError as exc:
            raise ApiKeyError(f"cannot read the API key file {path}: {exc.strerror or exc}") from None
        if not key:
            raise ApiKeyError(f"the API key file {path} is empty")
    else:
        key = (env.get(KEY_ENV) or "").strip()
        if not key:
            return None
    if len(key) < MIN_KEY_CHARS:
        raise ApiKeyError(f"the API key has {len(key)} characters; use at least {MIN_KEY_CHARS} "
                        "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return key


def presented_key(headers) -> str | None:
    """The key a request presents: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = headers.get("x-api-key")
    return key.strip() if key else None


def key_matches(presented: str | None, expected_sha256: str) -> bool:
    """Constant-time check of a presented key against the stored digest."""
    given = key_digest(presented or "")
    ok = hmac.compare_digest(given, expected_sha256)
    return bool(presented) and ok
