"""`distmsfa localiser ...`: train (and cross-validate) the automatic sacroiliac ROI localiser."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from distmsfa.cli._common import fail

app = typer.Typer(help="Automatic sacroiliac ROI: a small 3D UNet that finds the left and right joints.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@app.command("train")
def train(
    data: str = typer.Option(..., "--data", help="Manifest (CSV/Parquet) with ROI label maps, or a dataset folder (then --manifest)."),
    out: Path = typer.Option(..., "--out", "-o", help="Localiser folder to write (localiser.json, weights.safetensors, cv_metrics.json)."),
    manifest: Optional[str] = typer.Option(None, "--manifest", help="The raw manifest, when --data is a preprocessed dataset."),
    folds: Optional[str] = typer.Option(None, "--folds", help="Dataset folder (or folds.parquet) whose folds to use."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Training epochs per model (default 40)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML with `localiser:` (LocaliserConfig) and `train:` sections."),
    external_site: List[str] = typer.Option([], "--external-site", help="Site never trained on (repeatable), when folds are derived here."),
    n_folds: int = typer.Option(4, "--n-folds", help="Folds, when derived here (same rule as preprocess)."),
    seed: int = typer.Option(0, "--seed", help="Fold seed, when derived here (same as preprocess)."),
    no_cv: bool = typer.Option(False, "--no-cv", help="Skip cross-validation: train the final localiser only."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars."),
) -> None:
    """Cross-validate the localiser on the classification folds (Dice per joint, centroid
    error in mm), then train the final one on every internal case and save it to --out."""
    from distmsfa.config import ConfigError
    from distmsfa.io.manifest import ManifestError
    from distmsfa.localiser.config import LocaliserConfig, LocaliserTrainConfig
    from distmsfa.localiser.cv import train_localiser

    try:
        data_cfg: dict = {}
        if config is not None:
            import yaml

            data_cfg = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        cfg = LocaliserConfig.from_dict(data_cfg.get("localiser"))
        tcfg = LocaliserTrainConfig.from_dict(data_cfg.get("train"))
        if epochs is not None:
            tcfg = tcfg.replace(epochs=epochs)
            LocaliserTrainConfig.from_dict(tcfg.to_dict())  # re-check
    except (ConfigError, OSError, AttributeError) as exc:
        fail(str(exc))
    try:
        rep = train_localiser(data, out, manifest=manifest, folds=folds, cfg=cfg, tcfg=tcfg, n_folds=n_folds,
                              seed=seed, external_sites=tuple(external_site), cv=not no_cv, progress=not no_progress)
    except ManifestError as exc:
        for p in exc.problems:
            typer.echo(f"error: manifest: {p}", err=True)
        raise typer.Exit(2)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc).splitlines()[0])
    for case_id, reason in rep.failures:
        typer.echo(f"error: case {case_id}: {reason}", err=True)
    if rep.table:
        typer.echo(rep.table)
    typer.echo(f"localiser saved to {rep.out} (metrics: {rep.out / 'cv_metrics.json'})")


@app.command("attach")
def attach(
    bundle: Path = typer.Option(..., "--bundle", help="Model bundle folder (distmsfa bundle export)."),
    localiser: Path = typer.Option(..., "--localiser", help="Trained localiser folder."),
    force: bool = typer.Option(False, "--force", help="Replace a localiser the bundle already carries."),
) -> None:
    """Put a localiser into a model bundle, so that the bundle can score studies without an ROI."""
    from distmsfa.localiser.bundle import attach_localiser

    try:
        rec = attach_localiser(bundle, localiser, force=force)
    except (ValueError, OSError) as exc:
        fail(str(exc).splitlines()[0])
    typer.echo(f"localiser {rec['weights_sha256'][:12]} attached to {bundle} ({rec['path']}/)")
