"""`distmsfa serve`: host a model bundle over HTTP (Ray Serve) until Ctrl-C."""
from __future__ import annotations

import ipaddress
import time
from pathlib import Path
from typing import Optional

import typer

from distmsfa.cli._common import fail

LOOPBACK = "127.0.0.1"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(
    bundle: Path = typer.Option(..., "--bundle", help="Model bundle folder (distmsfa bundle export)."),
    host: str = typer.Option(LOOPBACK, "--host", help="Address to bind; another than 127.0.0.1 needs an API key."),
    port: int = typer.Option(8000, "--port", help="HTTP port."),
    replicas: int = typer.Option(1, "--replicas", help="Model replicas (each holds the fold ensemble)."),
    preprocess_replicas: int = typer.Option(1, "--preprocess-replicas", help="CPU preprocessing replicas."),
    gpus_per_replica: float = typer.Option(0.0, "--gpus-per-replica", help="GPU share per model replica (0: CPU)."),
    max_batch: int = typer.Option(8, "--max-batch", help="Largest dynamic batch of the model deployment."),
    max_upload_mb: float = typer.Option(512.0, "--max-upload-mb", help="Largest request body (413 above)."),
    request_timeout_s: float = typer.Option(120.0, "--request-timeout", help="Seconds per case before 504."),
    drain_timeout_s: float = typer.Option(30.0, "--drain-timeout",
                                          help="On Ctrl-C/SIGTERM: seconds to answer requests in flight before stopping."),
    api_key_file: Optional[Path] = typer.Option(None, "--api-key-file",
                                                help="File holding the API key (else $DISTMSFA_API_KEY_FILE / $DISTMSFA_API_KEY)."),
    insecure_loopback: bool = typer.Option(False, "--insecure-loopback",
                                           help="Serve without an API key (only on 127.0.0.1)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address; default: start a local Ray."),
    verbose: bool = typer.Option(False, "--verbose", help="Show Ray's and Serve's own log lines."),
) -> None:
    """Serve a bundle: POST /v1/predict, GET /v1/health, GET /v1/model (docs/serving.md)."""
    from distmsfa.config import ConfigError
    from distmsfa.serving import auth
    from distmsfa.serving.settings import ServeSettings

    if not bundle.is_dir():
        fail(f"--bundle {bundle}: no such bundle folder")
    try:
        key = auth.read_key(str(api_key_file) if api_key_file else None)
    except auth.ApiKeyError as exc:
        fail(str(exc))
    if key is None:
        if not _is_loopback(host):
            fail(f"refusing to serve on {host} without an API key; give --api-key-file (or $DISTMSFA_API_KEY)")
        if host != LOOPBACK or not insecure_loopback:
            fail("no API key: give --api-key-file, or --insecure-loopback to serve without a key on 127.0.0.1")
    try:
        settings = ServeSettings(
            bundle=str(bundle.resolve()), model_replicas=replicas, preprocess_replicas=preprocess_replicas,
            gpus_per_replica=gpus_per_replica, max_batch=max_batch, max_upload_mb=max_upload_mb,
            request_timeout_s=request_timeout_s, drain_timeout_s=drain_timeout_s,
            api_key_sha256=auth.key_digest(key) if key else None,
            allow_no_key=key is None)
    except ConfigError as exc:
        fail(str(exc))
    import os

    from distmsfa.cli._run import interruptible
    from distmsfa.runtime import InterruptGuard, ray_session
    from distmsfa.serving.runner import drain, start, stop

    # Ctrl-C / SIGTERM drains (docs/operations.md): new requests 503, those in flight are
    # answered (up to --drain-timeout), Serve stops, the local Ray ends with every process,
    # one line, exit 130 / 143.  A second signal exits at once.
    with interruptible(f"serving {bundle.name} on {host}:{port}", resume=None) as guard:
        guard.deadline_s = settings.drain_timeout_s + 15.0  # the drain may use its whole timeout
        with ray_session(address, num_cpus=max(4, os.cpu_count() or 1), verbose=verbose, include_dashboard=False):
            url = handle = None
            try:
                url = start(settings, host=host, port=port, address=address, verbose=verbose)
                from ray import serve as _serve

                handle = _serve.get_app_handle("distmsfa")  # now, not in the signal's aftermath
                InterruptGuard.reinstall_active()  # in case Serve's start replaced a handler
                typer.echo(f"serving {bundle.name} at {url}  (POST {url}/v1/predict; "
                           f"{'API key required' if key else 'no key, loopback only'}); Ctrl-C drains and stops")
                while True:
                    time.sleep(1.0)  # the signal lands here
            except Exception as exc:  # noqa: BLE001 - one line, not a traceback
                stop()
                fail(f"serve: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            finally:
                if guard.interrupted:
                    try:  # also when the signal came while start() was still waiting for readiness
                        left = drain(settings.drain_timeout_s, handle=handle)
                        if left:
                            typer.echo(f"drain: {left} request(s) still in flight after "
                                       f"{settings.drain_timeout_s:g} s", err=True)
                    except Exception as exc:  # noqa: BLE001 - no app yet, or gone: stop anyway
                        if url is not None:
                            typer.echo(f"drain: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                                       err=True)
                    stop()
