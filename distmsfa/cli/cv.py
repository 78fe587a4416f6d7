"""`distmsfa cv`: k-fold cross-validation of one model, folds in parallel on Ray."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from distmsfa.cli._common import fail


def _parse_folds(text: Optional[str]) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        folds = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        fail(f"--folds {text!r}: give fold numbers separated by commas, e.g. 0,1,2,3")
    if not folds:
        fail("--folds is empty; give e.g. 0,1,2,3")
    return folds


def cv(
    data: str = typer.Option(..., "--data", help="Dataset root written by `distmsfa preprocess` (folder or s3:// / gs:// URI)."),
    model: Optional[str] = typer.Option(None, "--model", help="Registry name (see `distmsfa models`), e.g. msfanet; "
                                                              "default: train.model of --config (a study's best.yaml has it)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML with `train:` / `cv:` sections, applied over the profile."),
    folds: Optional[str] = typer.Option(None, "--folds", help="Folds to run, e.g. 0,1,2,3 (default: all)."),
    profile: str = typer.Option("paper", "--profile", help="Settings profile: cpu (tests, demo) or paper (the paper's)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default runs/cv-<model>-<time>)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address; default: start a local Ray."),
    resume: bool = typer.Option(False, "--resume", help="Continue the stopped run in --out from its checkpoints."),
    gpus_per_fold: Optional[float] = typer.Option(None, "--gpus-per-fold", help="GPU share per fold; 0.5 = two folds per GPU."),
    workers_per_fold: Optional[int] = typer.Option(None, "--workers-per-fold", help="DDP workers (GPUs) per fold, "
                                                   "for more GPUs than folds (docs/training.md)."),
    plain: bool = typer.Option(False, "--plain", help="No Ray: run the folds one after another in this process."),
    selection: Optional[str] = typer.Option(None, "--selection", help="Checkpoint rule: inner (default, honest), val "
                                            "(the paper's, optimistic) or last; see docs/evaluation.md."),
    compile_: Optional[str] = typer.Option(None, "--compile", help="auto (on for CUDA; falls back to eager if torch.compile "
                                           "fails) | on | off: torch.compile for training and evaluation."),
) -> None:
    """Cross-validate a model: labelled estimates, out-of-fold and external predictions, curves (docs/training.md)."""
    fold_list = _parse_folds(folds)
    if resume and out is None:
        fail("--resume needs --out RUNDIR (the run folder to continue)")
    from distmsfa.cli._run import interruptible, resume_command
    from distmsfa.config import ConfigError
    from distmsfa.data.index import PairChecksumError
    from distmsfa.training.cv import CVError, _default_run_dir, run_cv
    from distmsfa.training.speed import CompileError

    if model is None:
        from distmsfa.training.profiles import load_config_file

        try:
            model = load_config_file(config)["train"].get("model") if config is not None else None
        except ConfigError as exc:
            fail(str(exc).splitlines()[0])
        if not model:
            fail("--model is required unless --config names one (train.model), as a study's best.yaml does")
    run_dir = (out or _default_run_dir(model)).resolve()  # named now, so the resume line can name it
    resume_cmd = resume_command(add=["--resume"], set_options={"--out": str(run_dir)})
    try:
        with interruptible(f"cross-validation of {model} in {run_dir}", resume_cmd):
            run_cv(data, model, config, profile=profile, folds=fold_list, out=run_dir, address=address, resume=resume,
                   gpus_per_fold=gpus_per_fold, plain=plain,
                   overrides={**({"selection": selection} if selection else {}),
                              **({"compile": compile_} if compile_ else {}),
                              **({"workers_per_fold": workers_per_fold} if workers_per_fold else {})} or None)
    except (ConfigError, CVError, CompileError, FileNotFoundError, KeyError, PairChecksumError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        fail(str(msg).splitlines()[0] if msg else type(exc).__name__)
