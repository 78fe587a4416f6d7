"""`distmsfa score`: score a manifest's cases against a running `distmsfa serve` endpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from distmsfa.cli._common import fail, warn


def score(
    endpoint: str = typer.Option(..., "--endpoint", help="Service URL, e.g. http://127.0.0.1:8000"),
    manifest: Path = typer.Option(..., "--manifest", help="Manifest CSV/Parquet (the format of `distmsfa preprocess`)."),
    out: Path = typer.Option(..., "--out", help="Output folder; cases already scored there are skipped."),
    concurrency: int = typer.Option(8, "--concurrency", help="Requests in flight."),
    api_key_file: Optional[Path] = typer.Option(None, "--api-key-file",
                                                help="File holding the API key (else $DISTMSFA_API_KEY_FILE / $DISTMSFA_API_KEY)."),
    retries: int = typer.Option(6, "--retries", help="Retries per case on 429/503/504 and dropped connections."),
    gradcam: bool = typer.Option(False, "--gradcam", help="Ask for Grad-CAM maps (kept in answers/<case>.json)."),
) -> None:
    """Upload every case, write predictions.csv, failed.csv and, with labels, metrics.json + roc.png."""
    from distmsfa.io.manifest import ManifestError
    from distmsfa.serving import auth
    from distmsfa.serving.client import score_manifest

    if not endpoint.startswith(("http://", "https://")):
        fail(f"--endpoint {endpoint!r}: give an http:// or https:// URL")
    try:
        key = auth.read_key(str(api_key_file) if api_key_file else None)
    except auth.ApiKeyError as exc:
        fail(str(exc))
    from distmsfa.cli._run import interruptible, resume_command

    try:
        # the cases already scored in --out are skipped: the same command resumes
        with interruptible(f"scoring of {manifest} against {endpoint}", resume_command()):
            report = score_manifest(endpoint, manifest, out, api_key=key, concurrency=concurrency, retries=retries,
                                    gradcam=gradcam)
    except (ManifestError, ValueError, OSError) as exc:
        fail(str(exc).splitlines()[0])
    for f in report.failures[:20]:
        warn(f"case {f['case_id'] or '?'}: {f['status']} {f['code']}: {f['message']}")
    if report.n_failed > 20:
        warn(f"... {report.n_failed - 20} more in {out / 'failed.csv'}")
    typer.echo(report.summary())
    if report.metrics:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=f"metrics over HTTP ({report.metrics['n']} labelled cases, threshold "
                        f"{report.metrics['threshold']:.3f}); {out / 'metrics.json'}")
        for c in ("metric", "value", "95% CI", "method"):
            t.add_column(c)
        for k, v in report.metrics["metrics"].items():
            if isinstance(v, dict) and "value" in v:
                t.add_row(k, f"{v['value']:.3f}", f"{v.get('lo', float('nan')):.3f}-{v.get('hi', float('nan')):.3f}",
                          str(v.get("method", "")))
            else:
                t.add_row(k, f"{float(v):.3f}" if isinstance(v, (int, float)) else str(v), "", "")
        Console().print(t)
    if report.n_scored + report.n_skipped == 0 and report.n_failed:
        raise typer.Exit(1)
