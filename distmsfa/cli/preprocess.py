"""`distmsfa preprocess`: raw cases (manifest) in, Parquet-indexed volume pairs out."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from distmsfa.cli._common import fail


def _triple(text: str | None, name: str, cast=float):
    if text is None:
        return None
    try:
        vals = tuple(cast(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        vals = ()
    if len(vals) != 3:
        fail(f"{name} needs three comma-separated values D,H,W, e.g. {'24,224,320' if cast is int else '4,0.45,0.45'}; got {text!r}")
    return vals


def preprocess(
    manifest: str = typer.Argument(..., help="CSV or Parquet manifest (local path or URI); see docs/preprocessing.md"),
    out: str = typer.Option(..., "--out", "-o", help="dataset folder or URI to write (index.parquet, pairs/, ...)"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML with PreprocessConfig keys (or a 'preprocess:' section)"),
    spacing: Optional[str] = typer.Option(None, "--spacing", help="target spacing D,H,W in mm (default: cohort median)"),
    crop: Optional[str] = typer.Option(None, "--crop", help="crop size D,H,W in voxels (default 24,224,320)"),
    roi_mask_mm: Optional[float] = typer.Option(None, "--roi-mask-mm", help="zero the crop farther than this many mm "
                                                "from the ROI (needs label-map or box ROIs; default: the paper's box crop)"),
    external_site: List[str] = typer.Option([], "--external-site", help="site kept out of the folds (repeatable)"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: local Ray)"),
    serial: bool = typer.Option(False, "--serial", help="run in this process without Ray"),
    workers: Optional[int] = typer.Option(None, "--workers", help="cases processed at once (default: cluster CPUs)"),
    refold: bool = typer.Option(False, "--refold", help="rewrite folds.parquet (otherwise existing folds are kept)"),
    refingerprint: bool = typer.Option(False, "--refingerprint", help="recompute the cohort median spacing"),
    update: bool = typer.Option(False, "--update", help="accept a dataset built from another manifest or other "
                                "settings: add/rebuild this manifest's cases, keep the others"),
    force: bool = typer.Option(False, "--force", help="make the index exactly this run's good cases: drop indexed "
                               "cases that fail now or are not in the manifest (and their files)"),
    no_progress: bool = typer.Option(False, "--no-progress", help="no progress bar"),
    localiser: Optional[Path] = typer.Option(None, "--localiser", help="trained localiser folder, or a model bundle that carries one: cases with an empty roi cell get a predicted ROI"),
) -> None:
    """Preprocess every case of MANIFEST into a dataset at --out.

    Exit code 0 when at least one case is in the dataset, 1 when every case failed,
    2 for unusable arguments, config or manifest structure."""
    from distmsfa.config import ConfigError
    from distmsfa.data.build import build_dataset
    from distmsfa.data.preprocess import PreprocessConfig
    from distmsfa.io.manifest import ManifestError

    try:
        if config is not None:
            from distmsfa.config import load_yaml

            data = load_yaml(config) or {}
            if isinstance(data, dict) and "preprocess" in data:
                data = data["preprocess"] or {}
            if not isinstance(data, dict):
                raise ConfigError(f"config file {config.name}: expected PreprocessConfig keys (or a 'preprocess:' "
                                  f"section of them), got a {type(data).__name__}")
            cfg = PreprocessConfig.from_dict(data)
        else:
            cfg = PreprocessConfig()
        changes = {}
        if spacing:
            changes["target_spacing_mm"] = _triple(spacing, "--spacing")
        if crop:
            changes["crop_size"] = _triple(crop, "--crop", int)
        if roi_mask_mm is not None:
            changes["roi_mask_mm"] = roi_mask_mm
        cfg = cfg.replace(**changes) if changes else cfg
    except (ConfigError, OSError) as exc:
        fail(str(exc))
    from distmsfa.cli._run import interruptible, resume_command

    # A re-run skips the cases already in the index (written on interrupt): the same command resumes.
    try:
        with interruptible(f"preprocessing of {manifest} into {out}", resume_command()):
            report = build_dataset(
                manifest, out, cfg, address="serial" if serial else address, external_sites=tuple(external_site),
                num_workers=workers, progress=not no_progress, refold=refold, refingerprint=refingerprint,
                update=update, force=force,
                **({"localiser": localiser} if localiser is not None else {}),
            )
    except ManifestError as exc:
        for p in exc.problems:
            typer.echo(f"error: manifest: {p}", err=True)
        raise typer.Exit(2)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    typer.echo(report.summary())
    kept = set(report.kept)
    for case_id, reason in report.failures:
        note = "; its previous version stays in the index (--force drops it)" if case_id in kept else ""
        typer.echo(f"error: case {case_id}: {reason}{note}", err=True)
    for case_id, why in report.dropped:
        typer.echo(f"warning: case {case_id}: dropped from the index ({why})", err=True)
    if report.failures:
        typer.echo(f"failed cases listed in {report.failed_path}", err=True)
    if report.n_ok == 0:
        raise typer.Exit(1)
