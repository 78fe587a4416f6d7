"""``ServeSettings``: the limits and scaling of the scoring service (a frozen, checked config).

Given to the Serve application as a plain dict (``to_dict``), so `serve build` / `serve deploy`
YAML can set every field; the API key itself is never part of it (see ``auth``)."""
from __future__ import annotations

import dataclasses

from distmsfa.config import Config, require


@dataclasses.dataclass(frozen=True)
class ServeSettings(Config):
    bundle: str = ""
    # limits
    max_upload_mb: float = 512.0  # whole multipart body (413 above)
    max_unzipped_mb: float = 1024.0  # all zips of one request, unpacked (413 above: zip bomb)
    max_zip_entries: int = 5000
    body_timeout_s: float = 30.0  # idle time allowed while the client sends its body (408)
    upload_timeout_s: float = 600.0  # total time allowed for the body (408)
    request_timeout_s: float = 120.0  # preprocessing + model of one case (504)
    drain_timeout_s: float = 30.0  # on stop: wait this long for in-flight requests (graceful_shutdown_timeout_s)
    # queues / backpressure
    max_ongoing_requests: int = 8  # per ingress replica
    max_queued_requests: int = 16  # per ingress replica, beyond: 429 + Retry-After
    retry_after_s: float = 2.0
    # scaling
    ingress_replicas: int = 1
    preprocess_replicas: int = 1
    model_replicas: int = 1
    gpus_per_replica: float = 0.0  # model replicas
    cpus_per_preprocess: float = 1.0
    max_batch: int = 8  # @serve.batch max_batch_size of the model deployment
    batch_wait_s: float = 0.05
    # security: require an API key (a SHA-256 hex digest of it is passed, never the key)
    api_key_sha256: str | None = None
    allow_no_key: bool = False  # only with an explicit --insecure-loopback

    def __post_init__(self) -> None:
        n = type(self).__name__
        for f in ("max_upload_mb", "max_unzipped_mb", "body_timeout_s", "upload_timeout_s", "request_timeout_s", "batch_wait_s",
                  "drain_timeout_s"):
            v = getattr(self, f)
            require(isinstance(v, (int, float)) and v > 0, n, f"{f} must be a positive number, got {v!r}")
        for f in ("max_zip_entries", "max_ongoing_requests", "ingress_replicas", "preprocess_replicas",
                  "model_replicas", "max_batch"):
            v = getattr(self, f)
            require(isinstance(v, int) and v >= 1, n, f"{f} must be an integer >= 1, got {v!r}")
        require(isinstance(self.max_queued_requests, int) and self.max_queued_requests >= 0, n,
                f"max_queued_requests must be an integer >= 0, got {self.max_queued_requests!r}")
        require(self.gpus_per_replica >= 0, n, f"gpus_per_replica must be >= 0, got {self.gpus_per_replica!r}")
        require(self.cpus_per_preprocess > 0, n, f"cpus_per_preprocess must be > 0, got {self.cpus_per_preprocess!r}")
        require(self.retry_after_s >= 0, n, f"retry_after_s must be >= 0, got {self.retry_after_s!r}")
        if self.api_key_sha256 is not None:
            h = str(self.api_key_sha256).lower()
            require(len(h) == 64 and all(c in "0123456789abcdef" for c in h), n,
                    "api_key_sha256 must be the 64-hex-digit SHA-256 of the key (see distmsfa.serving.auth.key_digest)")
            object.__setattr__(self, "api_key_sha256", h)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_unzipped_bytes(self) -> int:
        return int(self.max_unzipped_mb * 1024 * 1024)
