"""`distmsfa tune` as a library call: :func:`tune_study`.

Checks the study, joins or starts Ray, fits (or restores) the Tune experiment, then writes
the trials table, Optuna's plots and ``best.yaml`` and exports the best trial as a model
bundle.  The study folder (layout in docs/tuning.md)::

    STUDY/study.yaml     the resolved study (what --resume continues; the stored one wins)
    STUDY/tune/          Ray Tune's experiment (Tuner.restore reads it)
    STUDY/trials/<id>/   each trial's CV run folder (distmsfa cv layout + config.yaml, point.json)
    STUDY/trials.csv|parquet, best.yaml, plots/*.png, bundle/
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import pandas as pd
import yaml

from distmsfa.config import ConfigError
from distmsfa.hpo.study import Study, load_study

STUDY_FILE = "study.yaml"
BUNDLE_DIR = "bundle"


class TuneError(RuntimeError):
    """A study could not start, or ended without a usable trial (the message says why)."""


@dataclass
class StudyResult:
    study_dir: Path
    trials: pd.DataFrame
    best: Optional[dict[str, Any]]
    best_yaml: Optional[Path]
    plots: dict[str, str]
    bundle: Optional[Path]
    wall_s: float
    timeline: dict[str, float] = field(default_factory=dict)


def _records(grid: Any, study: Study, study_dir: Path) -> list[dict[str, Any]]:
    from distmsfa.hpo.ray_tune import POINT_FILE, REPORTS_FILE, TRIALS_DIR
    from distmsfa.hpo.space import decode_choice

    out = []
    trials = grid._experiment_analysis.trials  # Trial objects, in the ResultGrid's order (ids of failed trials)
    for trial, r in zip(trials, grid):
        m = dict(r.metrics or {})
        tid = trial.trial_id
        run_dir = study_dir / TRIALS_DIR / str(tid)
        params = {k: decode_choice(v) for k, v in (r.config or {}).items() if k in study.space}
        if (run_dir / POINT_FILE).exists():
            params = json.loads((run_dir / POINT_FILE).read_text())
        reps: dict[int, dict] = {}
        if (run_dir / REPORTS_FILE).exists():  # one line per report; a re-reported epoch keeps its last
            for line in (run_dir / REPORTS_FILE).read_text(encoding="utf-8").splitlines():
                if line.strip():
                    rep = json.loads(line)
                    reps[int(rep["epoch"])] = rep
        curve = [_f(reps[e].get("objective")) for e in sorted(reps)]
        cvs = [_f(reps[e].get("cv_auc")) for e in sorted(reps)]
        cv_best = max((v for v in cvs if not math.isnan(v)), default=float("nan"))
        epochs_run = int(m.get("training_iteration") or 0)
        if r.error is not None:
            status = "ERROR"
        elif not m or trial.status in ("PENDING", "RUNNING", "PAUSED"):
            status = "PENDING" if not m else "RUNNING"
        else:
            status = "COMPLETE" if epochs_run >= study.max_t else "STOPPED"
        fold_aucs = {int(k[4:-4]): v for k, v in m.items() if k.startswith("fold") and k.endswith("_auc")}
        rec = {"trial_id": str(tid), "status": status, "epochs_run": epochs_run, "objective": m.get("objective"),
               "cv_auc": m.get("cv_auc"), "cv_auc_best": cv_best, "fold_aucs": fold_aucs, "params": params,
               "wall_s": m.get("time_total_s"), "run_dir": str(run_dir), "curve": curve,
               "error": _one_line(r.error) if r.error is not None else ""}
        summ = run_dir / "summary.json"
        if summ.exists():
            s = json.loads(summ.read_text())
            rec["mean_auc_selected"] = (s.get("mean") or {}).get("auc")
            rec["pooled_oof_auc"] = (s.get("pooled_oof") or {}).get("auc")
        out.append(rec)
    return out


def _f(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _one_line(exc: BaseException) -> str:
    text = [t for t in str(exc).strip().splitlines() if t.strip()]
    # Tune wraps the trial's exception; its last line is the trial's own message
    for t in reversed(text):
        if "TrialRefused" in t or "Error" in t:
            return t.strip()[:300]
    return (text[-1] if text else type(exc).__name__)[:300]


class _RayMessagesToFile:
    """Ray's driver prints the raylet's warnings (e.g. "N PYTHON worker processes have been
    started") to stdout whatever ``log_to_driver`` says; without ``--verbose`` they go to
    ``STUDY/ray_messages.log`` instead of the user's terminal."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._orig = None

    def __enter__(self) -> "_RayMessagesToFile":
        import ray._private.worker as rw

        self._orig = rw.print_to_stdstream

        def to_file(data: dict, ignore_prefix: bool = False) -> None:
            with open(self.path, "a", encoding="utf-8") as fh:
                for line in data.get("lines", []):
                    fh.write(f"({data.get('pid')}) {line}\n")

        rw.print_to_stdstream = to_file
        return self

    def __exit__(self, *exc: Any) -> None:
        import ray._private.worker as rw

        if self._orig is not None:
            rw.print_to_stdstream = self._orig


def init_ray(address: Optional[str], study: Study, n_folds: int, verbose: bool) -> bool:
    """Join ``address`` (or the Ray this process is connected to), else start a local Ray with
    enough logical CPUs for two trials at once.  Returns whether this call started Ray."""
    import ray

    from distmsfa.hpo.study import trial_footprint

    if ray.is_initialized():
        return False
    kw: dict[str, Any] = {"log_to_driver": bool(verbose), "logging_level": "INFO" if verbose else "ERROR"}
    if address:
        ray.init(address=address, **kw)
        return True
    foot = trial_footprint(n_folds, study.base["cv"], study.settings.trial_cpus, False)["CPU"]
    # One logical CPU more than two trials hold: a fold's Ray Data tasks (loading the
    # training, validation and external cases) run outside its placement group, and with
    # every CPU reserved by trials they would wait forever (seen: a study hung when a third
    # trial started while the first scored its external cases).
    cpus = max(os.cpu_count() or 1, math.ceil(foot * min(2, study.settings.num_samples)) + 1)
    try:
        ray.init(num_cpus=cpus, include_dashboard=False, **kw)
    except ValueError:  # a local cluster started with `ray start` is running: join it as it is
        ray.init(**kw)
    return True


def tune_study(data: str | os.PathLike[str], out: str | os.PathLike[str], config: str | Path | Mapping[str, Any] | None = None, *,
               model: Optional[str] = None, profile: str = "paper", overrides: Mapping[str, Any] | None = None,
               address: Optional[str] = None, resume: bool = False, storage: Optional[str] = None,
               verbose: bool = False, progress: bool = True, bundle: bool = True, console: Any = None) -> StudyResult:
    """Run (or ``resume``) a study on the dataset at ``data``; everything lands in ``out``."""
    from rich.console import Console

    from distmsfa.data.index import read_index
    from distmsfa.hpo import ray_tune
    from distmsfa.hpo.live import LiveTable
    from distmsfa.hpo.results import best_trial, trials_table, write_best_yaml, write_plots, write_tables
    from distmsfa.training.cv import _select_folds

    t0 = time.time()
    console = console or Console(stderr=True)
    ray_tune.quiet_ray(verbose)
    # Ctrl-C / SIGTERM are the command's (distmsfa.cli._run.interruptible: one line, exit 130/143,
    # the local Ray ended); Tune's own SIGINT handler would swallow the first Ctrl-C. The study
    # resumes with Tuner.restore from its periodically saved experiment state (--resume).
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    # Tune saves the experiment state at most every 10 s by default; a driver killed in that window
    # restores a finished trial as unfinished (the trial then only re-reads its results from disk).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    study_dir = Path(out).resolve()
    data = str(data) if "://" in str(data) else os.path.abspath(data)
    stored = study_dir / STUDY_FILE
    if resume:
        if not stored.exists():
            raise TuneError(f"--resume: no study in {study_dir} ({STUDY_FILE} missing); start it without --resume")
        rec = yaml.safe_load(stored.read_text(encoding="utf-8"))
        if rec["data"] != data:
            raise TuneError(f"--resume: the study in {study_dir} used data={rec['data']!r}, not {data!r}")
        study = load_study({k: rec["study"][k] for k in ("train", "cv", "search", "tune")})  # the stored study wins
        storage = rec.get("storage")
    else:
        if stored.exists():
            raise TuneError(f"study folder {study_dir} already holds a study; pass --resume to continue it or choose another --out")
        study = load_study(config, model=model, profile=profile, overrides=overrides)
    folds = _select_folds(read_index(data), tuple(study.base["cv"]["folds"]) if study.base["cv"].get("folds") else None)
    study.base["cv"]["folds"] = list(folds)
    exp_dir_str = f"{(storage or str(study_dir)).rstrip('/')}/{ray_tune.EXPERIMENT}"
    if not resume:
        study_dir.mkdir(parents=True, exist_ok=True)
        stored.write_text(yaml.safe_dump({"data": data, "storage": storage, "model": study.model, "study": study.to_dict(),
                                          "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, sort_keys=False))
    else:
        from ray import tune

        if not tune.Tuner.can_restore(exp_dir_str):
            raise TuneError(f"--resume: no Tune experiment to restore at {exp_dir_str}")

    import contextlib

    messages = contextlib.nullcontext() if verbose else _RayMessagesToFile(study_dir / "ray_messages.log")
    started = init_ray(address, study, len(folds), verbose)
    from distmsfa.runtime import _OWNED_SESSIONS, InterruptGuard, RaySession, _session_dir, _started_here, shutdown_session

    InterruptGuard.reinstall_active()  # ray.init replaced the SIGTERM handler (docs/operations.md)
    session = RaySession(started and _started_here(address), address, _session_dir())
    if session.started and session.session_dir:
        _OWNED_SESSIONS.append(session.session_dir)  # a forced exit (second Ctrl-C) ends its processes too
    timeline = {"ray_ready_s": time.time() - t0}
    try:
        messages.__enter__()
        max_conc, foot = ray_tune.concurrency(study, len(folds))
        setup = {"study_dir": str(study_dir), "data": data, "model": study.model, "base": study.base,
                 "keys": list(study.space), "folds": list(folds), "profile": profile, "rank_by": study.settings.rank_by,
                 "smooth_window": study.settings.smooth_window, "verbose": verbose}
        live = LiveTable(list(study.space), study.epochs, study.max_t, enabled=progress)
        console.print(f"study: {study.settings.num_samples} trials of {len(folds)}-fold CV ({study.model}, {study.epochs} epochs), "
                      f"up to {max_conc} at once (one trial holds {', '.join(f'{v:g} {k}' for k, v in foot.items())}); "
                      f"folder {study_dir}", highlight=False)
        callbacks = [live, ray_tune.ReleaseStoppedTrials(str(study_dir))]
        grid = ray_tune.run_tune(study, setup, exp_dir_str, storage or str(study_dir), resume=resume, callbacks=callbacks,
                                 max_concurrent=max_conc)
        records = _records(grid, study, study_dir)
    finally:
        messages.__exit__(None, None, None)
        if started:  # a local Ray ends with every process it started; a joined one is only left
            shutdown_session(session)
    timeline["study_s"] = time.time() - t0
    table = trials_table(records, study.space)
    write_tables(table, study_dir)
    plots = write_plots(records, study.space, study_dir)
    best = best_trial(table)
    best_yaml = write_best_yaml(best, study_dir, study.settings.rank_by) if best else None
    bundle_dir = None
    if best and bundle and Path(best["run_dir"], "summary.json").exists():
        try:
            from distmsfa.bundle import export_bundle
        except ImportError:  # the bundle package is not in this build
            console.print("warning: distmsfa.bundle is missing; no bundle exported", highlight=False)
        else:
            bundle_dir = Path(export_bundle(best["run_dir"], study_dir / BUNDLE_DIR, force=True))
    res = StudyResult(study_dir, table, best, best_yaml, plots, bundle_dir, time.time() - t0, timeline)
    console.print(final_table(res, study))
    if best is None:
        raise TuneError("no trial finished; see the error column of " + str(study_dir / "trials.csv"))
    return res


def final_table(res: StudyResult, study: Study):
    """Trials best first: id, status, epochs, objective, last CV AUC and the searched values
    (per-fold AUCs and the rest are in trials.csv)."""
    from rich.table import Table

    short = {"COMPLETE": "done", "STOPPED": "stopped", "ERROR": "failed", "PENDING": "pending", "RUNNING": "running"}
    t = Table(title=f"{len(res.trials)} trials, ranked by {study.settings.rank_by} fold-mean val AUC "
                    f"(per-fold values: trials.csv)")
    for c in ("trial", "status", "ep", "objective", "CV AUC", *[k.split(".", 1)[1] for k in study.space]):
        t.add_column(c, justify="right", overflow="fold")

    def fmt(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    for _, row in res.trials.iterrows():
        status = short.get(row["status"], str(row["status"]))
        t.add_row(str(row["trial_id"]), status, str(row["epochs_run"]), fmt(row["objective"]), fmt(row["cv_auc_last"]),
                  *[fmt(row.get(k)) for k in study.space])
    failed = res.trials[res.trials["status"] == "ERROR"]
    if len(failed):
        t.caption = "; ".join(f"{r.trial_id}: {str(r.error)[:120]}" for r in failed.itertuples())
    return t
