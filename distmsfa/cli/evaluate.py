"""`distmsfa evaluate --bundle B --data D [--split external|internal|all] --out DIR`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from distmsfa.cli._common import fail, warn


def evaluate(
    bundle: Path = typer.Option(..., "--bundle", help="Model bundle folder (distmsfa bundle export)."),
    data: str = typer.Option(..., "--data", help="Dataset root written by `distmsfa preprocess` with the bundle's settings."),
    split: str = typer.Option("external", "--split", help="external | internal | all"),
    out: Path = typer.Option(..., "--out", help="Folder for predictions.csv, metrics.json, roc.png/.svg, calibration.png/.svg."),
    n_boot: int = typer.Option(2000, "--n-boot", help="Bootstrap resamples for the 95% CIs of ACC/SEN/SPEC/F1."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: cuda if available)."),
    joint_evidence: bool = typer.Option(False, "--joint-evidence", help="Grad-CAM per case: add roi_source and the "
                                        "left/right joint share of each branch's evidence to predictions.csv."),
    precision: str = typer.Option("auto", "--precision", help="auto | bf16 | fp32 (auto: bf16 on CUDA, fp32 on CPU)."),
    compile_: str = typer.Option("auto", "--compile", help="auto | on | off: torch.compile the ensemble (auto: on CUDA only)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Cases per model call (the compiled batch size)."),
) -> None:
    """Score a dataset split with a bundle: predictions, metrics with 95% CIs, ROC, calibration."""
    from distmsfa.evaluation.evaluate import EvaluateError, evaluate_bundle

    from distmsfa.cli._run import interruptible, resume_command

    try:
        with interruptible(f"evaluation of {bundle} on the {split} split", resume_command()):
            res = evaluate_bundle(bundle, data, split, out, n_boot=n_boot, seed=seed, device=device,
                                  joint_evidence=joint_evidence, batch_size=batch_size, precision=precision,
                                  compile=compile_)
    except (EvaluateError, FileNotFoundError) as exc:
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    for w in res.warnings:
        warn(w)
    from rich.console import Console
    from rich.table import Table

    m = res.metrics
    t = Table(title=f"{m['model']} bundle, {m['split']} split: {m['n_labelled']} labelled of {m['n_cases']} cases, "
                    f"threshold {m['threshold']:.3f} ({m['threshold_policy']})", caption=m["ci"])
    for c in ("metric", "value", "95% CI"):
        t.add_column(c, justify="right")
    for k, v in (m.get("metrics") or {}).items():
        t.add_row(k.upper(), f"{v['value']:.3f}", f"{v['lo']:.3f} - {v['hi']:.3f}")
    Console(stderr=True).print(t)
    typer.echo(f"evaluation: {res.out}")
