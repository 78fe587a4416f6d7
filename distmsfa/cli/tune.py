"""`distmsfa tune`: a Ray Tune + Optuna study over k-fold CV trials (docs/tuning.md).

Without ``--data`` it runs the README's main job: a synthetic cohort, preprocessing, the
quickstart study, the bundle, and the bundle scoring the held-out external site."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from distmsfa.cli._common import fail


def tune(
    data: Optional[str] = typer.Option(None, "--data", help="Dataset root from `distmsfa preprocess` (folder or URI). "
                                                            "Omitted: generate the synthetic cohort and run the whole loop."),
    config: Optional[str] = typer.Option(None, "--config", help="Study file (train/cv/search/tune sections) or an embedded "
                                                                "profile name: quickstart (default), paper."),
    model: Optional[str] = typer.Option(None, "--model", help="Registry name (default: train.model of the file, else msfanet)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Study folder (default runs/tune; without --data runs/quickstart)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address; default: the job's Ray or a local one."),
    resume: bool = typer.Option(False, "--resume", help="Continue the study in --out (Tuner.restore): finished trials are kept."),
    auto_resume: bool = typer.Option(False, "--auto-resume", help="Continue the study in --out if there is one, else start it "
                                                                  "(for a retried cluster job, e.g. a KubeRay RayJob)."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Tune's storage_path (s3://, gs://, NFS; default: the study folder)."),
    num_samples: Optional[int] = typer.Option(None, "--num-samples", min=1, help="Override tune.num_samples."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Override train.epochs."),
    n: int = typer.Option(120, "--n", min=16, help="Without --data: synthetic cases to generate."),
    no_bundle: bool = typer.Option(False, "--no-bundle", help="Do not export the best trial as a model bundle."),
    verbose: bool = typer.Option(False, "--verbose", help="Show Ray's own INFO/WARNING lines."),
    no_serve: bool = typer.Option(False, "--no-serve", help="Without --data: skip the last step (the bundle served on "
                                  "127.0.0.1 scoring the external site over HTTP)."),
) -> None:
    """Search hyperparameters: each trial a k-fold CV with folds in parallel, ASHA + seeded TPE,
    resumable; writes trials.csv/parquet, plots, best.yaml and the best trial's bundle."""
    if (resume or auto_resume) and out is None:
        fail("--resume / --auto-resume need --out STUDY (the study folder to continue)")
    if auto_resume:
        study_dir = out if data is not None else out / "study"
        resume = (study_dir / "study.yaml").exists()
    overrides: dict = {}
    if num_samples:
        overrides["tune"] = {"num_samples": num_samples}
    if epochs:
        overrides["train"] = {"epochs": epochs}
    from distmsfa.config import ConfigError
    from distmsfa.hpo.runner import TuneError
    from distmsfa.training.cv import CVError

    from distmsfa.cli._run import interruptible, resume_command

    study_out = (out or Path("runs/quickstart" if data is None else "runs/tune")).resolve()
    resume_cmd = resume_command(add=["--resume"], set_options={"--out": str(study_out)})
    try:
        with interruptible(f"study in {study_out}", resume_cmd):
            if data is None:
                from distmsfa.hpo.main_job import run_main_job

                if model:
                    overrides.setdefault("train", {})["model"] = model
                run_main_job(study_out, n=n, config=config or "quickstart", address=address,
                             resume=resume, verbose=verbose, overrides=overrides or None, serve=not no_serve)
                return
            from distmsfa.hpo.runner import tune_study

            tune_study(data, study_out, config or "quickstart", model=model, overrides=overrides or None,
                       address=address, resume=resume, storage=storage, verbose=verbose, bundle=not no_bundle)
    except (ConfigError, TuneError, CVError, FileNotFoundError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        fail(str(msg).splitlines()[0] if msg else type(exc).__name__)
