"""`distmsfa paper --data D --profile cpu|paper --out OUT [--models ...]`: every model of the
paper's Tables 3-6 as CV runs (reused when finished), the external site, the report."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from distmsfa.cli._common import fail


def paper(
    data: str = typer.Option(..., "--data", help="Dataset root written by `distmsfa preprocess` (with an external site)."),
    out: Path = typer.Option(..., "--out", help="Experiment folder: runs/<model>/, report/, paper.json."),
    profile: str = typer.Option("paper", "--profile", help="cpu (small models, 40 epochs) or paper (the paper's settings)."),
    models: Optional[str] = typer.Option(None, "--models", help="Comma-separated registry names (default: all 14)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML `train:` / `cv:` applied over the profile."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address; default: a local Ray."),
    plain: bool = typer.Option(False, "--plain", help="No Ray: models and folds one after another."),
    parallel_models: Optional[int] = typer.Option(None, "--parallel-models", help="Models at once (default: fold slots / 4)."),
    lesions: Optional[Path] = typer.Option(None, "--lesions", help="Synthetic cohort manifest.csv: Grad-CAM localisation."),
) -> None:
    """The paper's experiment: all 14 models as CV runs (reused when finished), external site, report."""
    from distmsfa.config import ConfigError
    from distmsfa.evaluation.paper import run_paper
    from distmsfa.evaluation.runs import ReportError
    from distmsfa.training.cv import CVError

    names = [m.strip() for m in models.split(",") if m.strip()] if models else None
    from distmsfa.cli._run import interruptible, resume_command

    try:
        # finished runs are reused and stopped ones resumed: the same command continues
        with interruptible(f"the paper's experiment in {out}", resume_command()):
            rec = run_paper(data, out, profile=profile, models=names, config=str(config) if config else None,
                            address=address, plain=plain, parallel_models=parallel_models,
                            lesions=str(lesions) if lesions else None, log=lambda s: typer.echo(s, err=True))
    except (ConfigError, CVError, ReportError, ValueError, RuntimeError, FileNotFoundError) as exc:
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    typer.echo(f"report: {rec.get('report')}")
