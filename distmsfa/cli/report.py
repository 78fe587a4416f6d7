"""`distmsfa report RUN... --out DIR`: Tables 3-6, Figures 4-5, learning curves, localisation."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from distmsfa.cli._common import fail


def report(
    runs: List[Path] = typer.Argument(..., help="Finished `distmsfa cv` run folders (same dataset and folds)."),
    out: Path = typer.Option(..., "--out", help="Report folder: report.html (self-contained), report.md, tables/, figures/."),
    reference: str = typer.Option("msfanet", "--reference", help="Model the p-values compare against."),
    lesions: Optional[Path] = typer.Option(None, "--lesions", help="Synthetic cohort manifest.csv with lesion masks: "
                                           "measure Grad-CAM localisation."),
    no_gradcam: bool = typer.Option(False, "--no-gradcam", help="Skip Figure 5 and the localisation scores."),
    loc_cases: int = typer.Option(16, "--loc-cases", help="axSpA cases scored for localisation per run."),
) -> None:
    """Tables 3-6 (t-test + DeLong, Holm), the paper's figures beside ours, ROC, Grad-CAM (docs/evaluation.md)."""
    from distmsfa.evaluation.report import ReportError, make_report

    try:
        res = make_report(runs, out, reference=reference, lesions=str(lesions) if lesions else None,
                          gradcam=not no_gradcam, loc_cases=loc_cases)
    except (ReportError, FileNotFoundError, ValueError) as exc:
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    typer.echo(f"report: {res.out / 'report.html'} ({len(res.tables)} tables, {len(res.files)} files)")
