"""`distmsfa demo-data`: write the synthetic sacroiliac cohort (the embedded demo data)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from distmsfa.cli._common import fail


def demo_data(
    out: Path = typer.Option(..., "--out", help="Folder to write (new, empty, or a previous synthetic cohort)."),
    n: int = typer.Option(120, "--n", help="Number of cases (scans)."),
    sites: str = typer.Option("TAH,NHH", "--sites", help="Comma-separated site profiles (built in: TAH, NHH, SZH)."),
    external_site: Optional[str] = typer.Option(
        None, "--external-site", help="Site recorded as external (kept out of the folds downstream); 'none' for none. "
        "Default: NHH when it is among the sites."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed gives identical files."),
    fmt: str = typer.Option("nifti", "--format", help="nifti (default) or dicom (one series folder per sequence)."),
    profile: str = typer.Option("demo", "--profile", help="Acquisition grids: demo (fast, coarse) or clinical (paper-like)."),
    label_noise: Optional[float] = typer.Option(None, "--label-noise", help="Fraction of cases with a flipped recorded label (default 0.05)."),
    lesion_size: Optional[float] = typer.Option(None, "--lesion-size", help="Scale of every finding (1 = default; smaller is harder)."),
    lesion_contrast: Optional[float] = typer.Option(None, "--lesion-contrast", help="Contrast of every finding (1 = default)."),
    axspa_fraction: Optional[float] = typer.Option(None, "--axspa-fraction", help="Share of axSpA patients (default 0.45)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file with CohortConfig keys (flags override it)."),
    workers: int = typer.Option(1, "--workers", help="Processes rendering cases (same output for any number)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Generate the synthetic two-sequence (T1WI + STIR) sacroiliac cohort and its manifest."""
    from distmsfa.config import ConfigError
    from distmsfa.data.synthetic import CohortConfig, generate_cohort

    try:
        cfg = CohortConfig.from_yaml(config) if config else CohortConfig()
        overrides = {"profile": profile, "label_noise": label_noise, "lesion_size": lesion_size,
                     "lesion_contrast": lesion_contrast, "axspa_fraction": axspa_fraction}
        cfg = cfg.replace(**{k: v for k, v in overrides.items() if v is not None})
    except (ConfigError, OSError) as exc:
        fail(str(exc))
    site_list = tuple(s.strip() for s in sites.split(",") if s.strip())
    if external_site is None:
        ext = "NHH" if "NHH" in site_list else None
    else:
        ext = None if external_site.strip().lower() in ("", "none") else external_site.strip()
    from distmsfa.cli._run import interruptible, resume_command

    try:
        # generation is seeded per case: the same command writes the same cohort again
        with interruptible(f"synthetic cohort generation into {out.resolve()}", resume_command()):
            manifest = generate_cohort(out, n, sites=site_list, external_site=ext, seed=seed, fmt=fmt.lower(),
                                       config=cfg, progress=not quiet, workers=workers)
    except (ValueError, FileExistsError) as exc:
        fail(str(exc))
    typer.echo(f"wrote {n} cases: {manifest}")
