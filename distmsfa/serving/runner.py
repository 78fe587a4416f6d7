"""Run the scoring service from Python: ``start`` / ``stop`` (what `distmsfa serve` calls) and
``serve_and_score`` (serve a bundle on loopback, score a manifest over HTTP, stop)."""
from __future__ import annotations

import time

from ray import serve

from distmsfa.serving import auth
from distmsfa.serving.ray_serve import build_app
from distmsfa.serving.settings import ServeSettings

_STARTED_RAY = False


def start(settings: ServeSettings, *, host: str = "127.0.0.1", port: int = 8000, address: str | None = None,
          verbose: bool = False, name: str = "distmsfa", ready_timeout_s: float = 600.0) -> str:
    """Start Serve on a Ray cluster (``address``; default a local Ray), deploy the app, wait
    until ``/v1/health`` says ready; return the URL.  ``stop()`` undoes it."""
    import logging as _logging
    import os

    import httpx
    import ray

    if not verbose:
        for n in ("ray", "ray.serve", "ray.serve._private"):
            _logging.getLogger(n).setLevel(_logging.WARNING)
    global _STARTED_RAY
    if not ray.is_initialized():
        _STARTED_RAY = True
        if address:
            ray.init(address=address, log_to_driver=verbose, logging_level=_logging.INFO if verbose else _logging.WARNING)
        else:
            ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=verbose,
                     logging_level=_logging.INFO if verbose else _logging.WARNING)
    serve.start(http_options={"host": host, "port": int(port)},
                logging_config={"log_level": "INFO" if verbose else "WARNING"})
    serve.run(build_app(settings), name=name, route_prefix="/", blocking=False)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else shown}:{int(port)}"
    deadline = time.monotonic() + ready_timeout_s
    while True:
        try:
            if httpx.get(url + "/v1/health", timeout=10).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the service did not become ready within {ready_timeout_s:g} s")
        time.sleep(0.5)


def drain(timeout_s: float, name: str = "distmsfa", poll_s: float = 0.2, settle_s: float = 1.0, handle=None) -> int:
    """Stop the app's ingress accepting predictions (new ones get 503 + Retry-After) and wait
    up to ``timeout_s`` until the ones it holds are answered; return how many were still in
    flight at the end (0: drained).  The count must stay 0 for ``settle_s``: a request the
    HTTP proxy accepted just before the drain reaches the ingress a moment later.  With several ingress replicas only the one the handle
    reaches drains here; ``stop`` then still waits for the others' requests (each
    deployment's ``graceful_shutdown_timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    handle = handle if handle is not None else serve.get_app_handle(name)
    n = handle.begin_drain.remote().result(timeout_s=max(1.0, timeout_s))
    zero_since = None
    while time.monotonic() < deadline:
        if n > 0:
            zero_since = None
        elif zero_since is None:
            zero_since = time.monotonic()
        elif time.monotonic() - zero_since >= settle_s:
            break  # a request the proxy had already taken has reached the ingress (and got its 503) by now
        time.sleep(poll_s)
        n = handle.in_flight.remote().result(timeout_s=max(1.0, deadline - time.monotonic()))
    return n


def stop(name: str = "distmsfa") -> None:
    """Remove the app and stop Serve; disconnect from Ray if ``start`` connected (a local Ray
    it started stops too)."""
    global _STARTED_RAY
    import ray

    try:
        serve.delete(name)
    except Exception:  # noqa: BLE001 - already gone
        pass
    try:
        serve.shutdown()
    finally:
        if _STARTED_RAY:
            ray.shutdown()
            _STARTED_RAY = False


def serve_and_score(bundle: str, manifest: str, out: str, *, port: int | None = None, address: str | None = None,
                    concurrency: int = 4, progress: bool = True):
    """Serve ``bundle`` on 127.0.0.1 with a one-off API key (kept in memory), score ``manifest``
    over HTTP into ``out`` with :func:`~distmsfa.serving.client.score_manifest`, stop the server.
    For a demo's last step: the external site scored through the real service."""
    import secrets
    import socket

    from distmsfa.serving.client import score_manifest

    key = secrets.token_urlsafe(32)
    if port is None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
    url = start(ServeSettings(bundle=str(bundle), api_key_sha256=auth.key_digest(key)), host="127.0.0.1",
                port=port, address=address)
    try:
        return score_manifest(url, manifest, out, api_key=key, concurrency=concurrency, progress=progress)
    finally:
        stop()
