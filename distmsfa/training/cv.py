"""k-fold cross-validation: :func:`run_cv` (library entry point of ``distmsfa cv``).

The folds run in parallel on Ray (one TorchTrainer per fold, see ``ray_train.py``) or, with
``plain=True``, one after the other in this process with the same loop.  Each epoch's
metrics reach ``on_epoch(event, monitor)`` on the calling thread while the run goes on;
``monitor.fold_mean("val_auc", epoch)`` is what a Ray Tune trial wrapping the CV run
reports as its objective.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import pandas as pd

from distmsfa.config import ConfigError
from distmsfa.training import outputs as out_files
from distmsfa.training.augment import resolve_masked
from distmsfa.training.batches import FoldRows, PlainSource, fold_rows
from distmsfa.training.config import CVConfig, TrainConfig
from distmsfa.training.loop import LAST_FILE, fit_fold, load_state
from distmsfa.training.profiles import check_sections, get_profile, load_config_file, merge
from distmsfa.training.report import LiveProgress, estimates_table, plot_learning_curves, summarize_run, summary_table

RUN_FILE = "run.json"
SUMMARY_FILE = "summary.json"
OOF_CSV = "oof_predictions.csv"
OOF_PARQUET = "oof_predictions.parquet"
EXTERNAL_CSV = "external_predictions.csv"
CURVES_PNG = "learning_curves.png"


class CVError(RuntimeError):
    """A CV run could not start or some folds failed (the message names them)."""


@dataclass
class CVMonitor:
    """Every epoch event seen so far; the fold mean is what an HPO trial reports."""

    folds: tuple[int, ...]
    events: list[dict[str, Any]] = field(default_factory=list)

    def add(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def latest(self) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        for e in self.events:
            out[int(e["fold"])] = e
        return out

    def fold_mean(self, metric: str, epoch: int) -> Optional[float]:
        """Mean of ``metric`` at ``epoch`` over the folds; None until every fold reported it.

        An epoch re-run after a worker restart is reported again; its last value counts."""
        vals = {int(e["fold"]): e.get(metric) for e in self.events if int(e["epoch"]) == epoch}
        if set(vals) != set(self.folds) or any(v is None or (isinstance(v, float) and math.isnan(v)) for v in vals.values()):
            return None
        return sum(vals.values()) / len(vals)


@dataclass
class CVResult:
    run_dir: Path
    summary: dict[str, Any]
    oof: pd.DataFrame
    histories: dict[int, pd.DataFrame]
    fold_results: dict[int, dict[str, Any]]


def resolve_configs(model: str, config: str | Path | Mapping[str, Any] | None = None, profile: str = "paper",
                    overrides: Mapping[str, Any] | None = None) -> tuple[TrainConfig, CVConfig]:
    """profile <- config file or mapping <- overrides ({'train': {...}, 'cv': {...}}) <- model."""
    data = get_profile(profile)
    if config is not None:
        data = merge(data, load_config_file(config) if isinstance(config, (str, Path)) else check_sections(config))
    if overrides:
        data = merge(data, check_sections(_sectioned(overrides), "overrides"))
    data["train"]["model"] = model
    return TrainConfig.from_dict(data["train"]), CVConfig.from_dict(data["cv"])


def _sectioned(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Accept ``{'train': {...}, 'cv': {...}}`` or flat keys of either config (``{'epochs': 2}``)."""
    import dataclasses

    tkeys = {f.name for f in dataclasses.fields(TrainConfig)}
    ckeys = {f.name for f in dataclasses.fields(CVConfig)}
    out: dict[str, Any] = {"train": {}, "cv": {}}
    for k, v in overrides.items():
        if k in ("train", "cv") and isinstance(v, Mapping):
            out[k].update(v)
        elif k in tkeys:
            out["train"][k] = v
        elif k in ckeys:
            out["cv"][k] = v
        else:
            raise ConfigError(f"override {k!r} is neither a TrainConfig nor a CVConfig key")
    return out


def _select_folds(index: pd.DataFrame, wanted: Optional[Sequence[int]]) -> list[int]:
    lab = index[index["label"].notna() & index["fold"].notna() & ~index["is_external"].astype(bool)]
    have = sorted(int(f) for f in lab["fold"].unique())
    if not have:
        raise CVError("the dataset has no labelled cases with a fold; was it built with folds (distmsfa preprocess)?")
    if wanted is None:
        return have
    missing = [f for f in wanted if f not in have]
    if missing:
        raise CVError(f"fold(s) {missing} not in the dataset; it has folds {have}")
    return list(wanted)


def _rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    cols = ["case_id", "patient_id", "label", "pair_path", "pair_sha256"]
    d = df[cols].copy()
    d["label"] = d["label"].astype(int)
    return d.to_dict("records")


def _fold_rows(index: pd.DataFrame, fold: int, tcfg: TrainConfig) -> FoldRows:
    """The fold's partition for the run's selection rule; identical on the plain and Ray paths."""
    try:
        return fold_rows(index, fold, tcfg.selection, tcfg.inner_fraction, tcfg.inner_seed)
    except ValueError as exc:
        raise CVError(str(exc)) from None


def _default_run_dir(model: str) -> Path:
    return Path("runs") / f"cv-{model}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _nothing_to_resume(run_dir: Path) -> bool:
    """No fold of the run in ``run_dir`` finished or left a checkpoint."""
    if any((run_dir / "ray").glob("**/checkpoint_epoch*")):  # Ray Train checkpoints
        return False
    folds = run_dir / "folds"
    for d in (folds.iterdir() if folds.is_dir() else ()):
        if out_files.fold_done(str(d)) or any(d.rglob(LAST_FILE)):
            return False
    return True


def _prepare_run_dir(run_dir: Path, resume: bool, record: dict[str, Any]) -> dict[str, Any]:
    run_file = run_dir / RUN_FILE
    if run_file.exists() and not resume and _nothing_to_resume(run_dir):
        run_file.unlink()  # a run that failed before any fold finished or checkpointed: start again
    if run_file.exists():
        stored = json.loads(run_file.read_text(encoding="utf-8"))
        if not resume:
            raise CVError(f"run folder {run_dir} already holds a run; pass --resume to continue it or choose another --out")
        for key in ("data", "model"):
            if stored.get(key) != record.get(key):
                raise CVError(f"--resume: the run in {run_dir} used {key}={stored.get(key)!r}, not {record.get(key)!r}")
        return stored  # the stored configs win: a resumed run continues the same experiment
    if resume:
        raise CVError(f"--resume: no run in {run_dir} ({RUN_FILE} missing); start it without --resume")
    run_dir.mkdir(parents=True, exist_ok=True)
    out_files.write_json(str(run_file), record)
    return record


def run_cv(data: str | os.PathLike[str], model: str, config: str | Path | Mapping[str, Any] | None = None, *,
           profile: str = "paper", folds: Optional[Sequence[int]] = None, out: str | os.PathLike[str] | None = None,
           address: Optional[str] = None, resume: bool = False, gpus_per_fold: Optional[float] = None,
           plain: bool = False, overrides: Mapping[str, Any] | None = None,
           on_epoch: Optional[Callable[[dict[str, Any], CVMonitor], None]] = None, progress: bool = True,
           console: Any = None) -> CVResult:
    """Cross-validate ``model`` on the dataset at ``data``; returns the summary and the
    out-of-fold predictions, and leaves everything in the run folder (docs/training.md).

    ``address``: a Ray cluster to join; None joins the Ray this process is connected to
    or starts a local one.  ``resume``: continue the run in ``out`` from its checkpoints."""
    from distmsfa.data.index import read_index

    data = str(data) if "://" in str(data) else os.path.abspath(data)
    tcfg, ccfg = resolve_configs(model, config, profile, overrides)
    if folds is not None:
        ccfg = ccfg.replace(folds=tuple(int(f) for f in folds))
    if gpus_per_fold is not None:
        ccfg = ccfg.replace(gpus_per_fold=float(gpus_per_fold))
    from distmsfa.models import registry

    if model not in registry.list_models():
        registry.create_model(model)  # raises the registry's "did you mean" error
    index = read_index(data)
    fold_ids = _select_folds(index, ccfg.folds)
    tcfg = tcfg.replace(augment=resolve_masked(tcfg.augment, _dataset_roi_mask_mm(data)))  # recorded resolved
    run_dir = Path(out) if out is not None else _default_run_dir(model)
    run_dir = run_dir.resolve()
    record = {"data": data, "model": model, "folds": fold_ids, "train": tcfg.to_dict(), "cv": ccfg.to_dict(),
              "profile": profile, "path": "plain" if plain else "ray",
              "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    record = _prepare_run_dir(run_dir, resume, record)
    tcfg, ccfg = TrainConfig.from_dict(record["train"]), CVConfig.from_dict(record["cv"])
    fold_ids = list(record["folds"])
    monitor = CVMonitor(tuple(fold_ids))
    todo = [f for f in fold_ids if not out_files.fold_done(str(run_dir / "folds" / f"fold{f}"))]
    for f in todo:  # a fold whose inner split is impossible stops the run before any training
        _fold_rows(index, f, tcfg)

    with LiveProgress(fold_ids, tcfg.epochs, enabled=progress, console=console) as live:
        for f in fold_ids:
            if f not in todo:
                live.set_status(f, "done")

        def event(e: dict[str, Any]) -> None:
            monitor.add(e)
            live.on_epoch(e)
            if on_epoch is not None:
                on_epoch(e, monitor)

        if plain:
            errors = _run_plain(data, index, todo, tcfg, run_dir, resume, event, live)
        else:
            errors = _run_ray(data, index, todo, tcfg, ccfg, run_dir, address, event, live)
    return _finish(run_dir, fold_ids, tcfg, model, errors, console)


def _dataset_roi_mask_mm(data: str) -> Optional[float]:
    """The dataset's ``roi_mask_mm`` from its fingerprint (None: unmasked, or no fingerprint)."""
    from distmsfa.data.index import FINGERPRINT_FILE, read_bytes

    try:
        params = json.loads(read_bytes(data, FINGERPRINT_FILE)).get("params") or {}
    except (FileNotFoundError, OSError, ValueError):
        return None  # a dataset without a fingerprint was not built with roi_mask_mm by distmsfa preprocess
    v = params.get("roi_mask_mm")
    return None if v is None else float(v)


def _run_plain(data, index, todo, tcfg, run_dir, resume, event, live) -> dict[int, Optional[str]]:
    errors: dict[int, Optional[str]] = {}
    for f in todo:
        fold_dir = str(run_dir / "folds" / f"fold{f}")
        rows = _fold_rows(index, f, tcfg)
        source = PlainSource(data, rows.train, rows.val, tcfg.batch_size, tcfg.seed, inner=rows.inner,
                             external=rows.external)
        last = os.path.join(fold_dir, LAST_FILE)
        state = load_state(last) if resume and os.path.exists(last) else None
        files = out_files.FileReporter(fold_dir)

        class _Rep:
            def on_epoch(self, fold, metrics, st, is_best):
                files.on_epoch(fold, metrics, st, is_best)
                event({**metrics, "pid": os.getpid()})

        live.set_status(f, "running")
        try:
            res = fit_fold(tcfg, source, f, out_dir=fold_dir, reporter=_Rep(), resume=state)
            out_files.write_fold_outputs(fold_dir, res)
            live.set_status(f, "done")
            errors[f] = None
        except Exception as exc:  # noqa: BLE001 - one fold's failure is reported, the others go on
            live.set_status(f, "failed")
            errors[f] = f"{type(exc).__name__}: {exc}"
    return errors


def _run_ray(data, index, todo, tcfg, ccfg, run_dir, address, event, live) -> dict[int, Optional[str]]:
    import logging

    import ray

    from distmsfa.runtime import ray_session
    from distmsfa.training import ray_train

    # At least 4 logical CPUs on a small machine: each fold's worker reserves one, the Ray
    # Data loading tasks need a share too (docs/training.md, "Resources").  The session
    # shuts down a Ray it started with all its processes, and only disconnects from a
    # joined one (docs/operations.md).
    with ray_session(address, num_cpus=max(4, os.cpu_count() or 1)):
        logging.getLogger("ray.train").setLevel(max(logging.WARNING, logging.getLogger("ray.train").level))
        logging.getLogger("ray.data").setLevel(max(logging.WARNING, logging.getLogger("ray.data").level))
        use_gpu = ray.cluster_resources().get("GPU", 0) > 0
        par = ray_train.cluster_parallelism(ccfg.gpus_per_fold, ccfg.cpus_per_fold, ccfg.data_cpus, use_gpu,
                                            ccfg.workers_per_fold)
        if ccfg.max_parallel:
            par = min(par, ccfg.max_parallel)
        par = max(1, min(par, len(todo) or 1))
        node_cpus = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)
        if ccfg.cpus_per_fold + ccfg.data_cpus > node_cpus:
            raise CVError(f"cv.cpus_per_fold ({ccfg.cpus_per_fold}) + cv.data_cpus ({ccfg.data_cpus}) exceed the CPUs of "
                          f"the largest node ({node_cpus}); lower them in the profile or --config")
        threads = tcfg.num_threads or max(1, (os.cpu_count() or 1) // (par * ccfg.workers_per_fold))
        run_id = f"{os.getpid()}-{abs(hash(str(run_dir))) % 10**8}"
        hub = ray_train.start_hub(run_id)
        try:
            specs = []
            for f in todo:
                rows = _fold_rows(index, f, tcfg)
                fold_dir = str(run_dir / "folds" / f"fold{f}")
                os.makedirs(fold_dir, exist_ok=True)
                spec = {"fold": f, "fold_dir": fold_dir, "root": data, "run_id": run_id,
                        "train": tcfg.replace(num_threads=threads).to_dict(),
                        "train_rows": _rows(rows.train), "val_rows": _rows(rows.val), "inner_rows": _rows(rows.inner),
                        "external_rows": _rows(rows.external), "name": f"fold{f}",
                        "storage_path": str(run_dir / "ray"), "use_gpu": use_gpu, "gpus_per_fold": ccfg.gpus_per_fold,
                        "workers_per_fold": ccfg.workers_per_fold,
                        "cpus_per_fold": ccfg.cpus_per_fold, "data_cpus": ccfg.data_cpus,
                        "materialize_train": ccfg.materialize_train, "materialize_val": ccfg.materialize_val,
                        "max_failures": ccfg.max_failures, "read_concurrency": ccfg.read_concurrency}
                ray_train.dump_spec(spec, os.path.join(fold_dir, "spec.json"))
                specs.append(spec)
                live.set_status(f, "submitted")
            errors = ray_train.run_folds(specs, par, hub, event)
            for f, err in errors.items():
                live.set_status(f, "failed" if err else "done")
            return errors
        finally:  # a failed or interrupted run must not leave its named hub actor behind
            try:
                ray.kill(hub)
            except Exception:  # noqa: BLE001 - already gone with a lost cluster
                pass


def _finish(run_dir: Path, fold_ids: list[int], tcfg: TrainConfig, model: str,
            errors: dict[int, Optional[str]], console: Any) -> CVResult:
    from rich.console import Console

    console = console or Console(stderr=True)
    done = {f: out_files.read_fold(str(run_dir / "folds" / f"fold{f}"))
            for f in fold_ids if out_files.fold_done(str(run_dir / "folds" / f"fold{f}"))}
    failed = {f: e for f, e in errors.items() if e}
    if not done:
        raise CVError("no fold finished: " + "; ".join(f"fold {f}: {e}" for f, e in failed.items()))
    summary, oof, ext = summarize_run(done, tcfg.threshold, tcfg.threshold_value, tcfg.selection)
    summary.update(model=model, folds_done=sorted(done), folds_failed={str(k): v for k, v in failed.items()},
                   epochs=tcfg.epochs, run_dir=str(run_dir),
                   augment_masked=tcfg.augment.masked,
                   ema_decay=tcfg.ema_decay)  # > 0: every estimate scored the weights' moving average
    oof.to_csv(run_dir / OOF_CSV, index=False)
    oof.to_parquet(run_dir / OOF_PARQUET, index=False)
    if ext is not None:
        ext.to_csv(run_dir / EXTERNAL_CSV, index=False)
    out_files.write_json(str(run_dir / SUMMARY_FILE), summary)
    histories = {f: d["history"] for f, d in done.items()}
    plot_learning_curves(histories, str(run_dir / CURVES_PNG), f"{model}: {len(done)} fold(s)")
    console.print(summary_table(summary, f"{model}: {len(done)}-fold CV (threshold {summary['threshold']:.3f}, "
                                         f"{summary['threshold_policy']})"))
    console.print(estimates_table(summary))
    console.print(f"run folder: {run_dir}")
    if failed:
        raise CVError("fold(s) failed (finished folds are summarised in the run folder): "
                      + "; ".join(f"fold {f}: {e}" for f, e in sorted(failed.items())))
    return CVResult(run_dir, summary, oof, histories, done)
