"""`distmsfa bundle export|verify|info`: make, check and describe model bundles (docs/bundle.md)."""
from __future__ import annotations

from pathlib import Path

import typer

from distmsfa.cli._common import fail

app = typer.Typer(help="Model bundles: export a CV run's fold ensemble, verify a bundle, show what it holds.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip()
    return msg.splitlines()[0] if msg else type(exc).__name__


@app.command("export")
def export(
    run_dir: Path = typer.Argument(..., help="A finished `distmsfa cv` run folder."),
    out: Path = typer.Option(..., "--out", help="Bundle folder to write."),
    checkpoint: str = typer.Option("selected", "--checkpoint",
                                   help="selected = each fold's best.pt (the run's selection rule; optimistic CV "
                                        "metrics), last = each fold's last.pt."),
    threshold: str = typer.Option("youden", "--threshold",
                                  help="youden = Youden's J on the pooled out-of-fold predictions; fixed = the "
                                       "run's threshold_value (0.5)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing bundle at --out."),
) -> None:
    """Export a CV run as a bundle (fold weights, preprocessing, threshold, metrics, model card, checksums)."""
    from distmsfa.bundle import BundleError, bundle_info, export_bundle
    from distmsfa.config import ConfigError

    try:
        path = export_bundle(run_dir, out, checkpoint=checkpoint, threshold_policy=threshold, force=force)
        info = bundle_info(path)
    except (BundleError, ConfigError, FileNotFoundError, KeyError, ValueError) as exc:
        fail(_one_line(exc))
    _print_info(info, title=f"bundle written: {path}")


@app.command("verify")
def verify(bundle: Path = typer.Argument(..., help="Bundle folder.")) -> None:
    """Check every file of a bundle against its checksums; refuse missing, altered or foreign files."""
    from distmsfa.bundle import BundleError, bundle_checksum, verify_bundle

    try:
        meta = verify_bundle(bundle)
        checksum = bundle_checksum(bundle)
    except BundleError as exc:
        fail(_one_line(exc))
    typer.echo(f"ok: {bundle} ({meta['model']['name']}, folds {meta['folds']}, checksum {checksum[:16]})")


@app.command("info")
def info(bundle: Path = typer.Argument(..., help="Bundle folder."),
         as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON.")) -> None:
    """Show a verified bundle's model, folds, threshold, CV metrics (and how they were obtained), preprocessing."""
    from distmsfa.bundle import BundleError, bundle_info

    try:
        data = bundle_info(bundle)
    except BundleError as exc:
        fail(_one_line(exc))
    if as_json:
        import json

        typer.echo(json.dumps(data, indent=2))
        return
    _print_info(data, title=str(bundle))


def _fmt(v) -> str:
    return "-" if v is None or (isinstance(v, float) and v != v) else f"{float(v):.3f}"


def _print_info(info: dict, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    thr = info["threshold"]
    head = Table(title=title, show_header=False, box=None)
    for k, v in (("model", f"{info['model']} {info['model_cfg']}"), ("folds", str(info["folds"])),
                 ("checkpoint", f"{info['checkpoint']}: {info['selection']}"),
                 ("threshold", f"{thr['value']:.4f} ({thr['policy']}, on the {thr['source']})"),
                 ("input", f"(T1, FS) crop {info['crop_size']} at {info['spacing_dhw']} mm, {info['orientation']}"),
                 ("checksum", info["checksum"]), ("files", f"{info['files']} ({info['size_bytes'] / 1e6:.2f} MB), verified"),
                 ("created", str((info.get("source") or {}).get("created")))):
        head.add_row(k, v)
    console.print(head)
    mean, std, pooled = info.get("cv_mean") or {}, info.get("cv_std") or {}, info.get("cv_pooled_oof") or {}
    t = Table(title=f"CV metrics: {info.get('cv_estimate')}")
    t.add_column("metric")
    t.add_column("mean ± SD over folds", justify="right")
    t.add_column(f"pooled out-of-fold (n={info.get('n_oof_cases')})", justify="right")
    for k in ("auc", "acc", "sen", "spec", "f1"):
        t.add_row(k.upper(), f"{_fmt(mean.get(k))} ± {_fmt(std.get(k))}", _fmt(pooled.get(k)))
    console.print(t)
