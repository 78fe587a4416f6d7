"""`distmsfa demo`: the main job on the embedded default (synthetic cohort, local Ray)."""
from __future__ import annotations

from pathlib import Path

import typer


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Folder for cohort, dataset and run."),
    n: int = typer.Option(120, "--n", min=8, help="Number of synthetic cases."),
    seed: int = typer.Option(0, "--seed"),
    model: str = typer.Option("msfanet", "--model", help="A name from `distmsfa models`."),
    epochs: int = typer.Option(0, "--epochs", min=0, help="Override the profile's epochs (0 = keep)."),
    address: str = typer.Option(None, "--address", help="Ray address; default: start a local Ray."),
    folds: int = typer.Option(4, "--folds", min=2, help="Cross-validation folds (the paper: 4)."),
    resume: bool = typer.Option(False, "--resume", help="Reuse the cohort in --out and continue its newest unfinished CV run."),
) -> None:
    """Generate a synthetic sacroiliac cohort, preprocess it, cross-validate MSFANet, print the summary."""
    from distmsfa.cli._run import interruptible, resume_command
    from distmsfa.demo import run_demo

    with interruptible(f"demo in {out.resolve()}", resume_command(add=["--resume"])):
        res = run_demo(out, n=n, seed=seed, model=model, address=address, epochs=epochs or None, resume=resume, folds=folds)
    typer.echo(f"manifest: {res.manifest}\ndataset:  {res.data}\nrun:      {res.run_dir}")
