"""Ray Tune side of a study: the trial function, the searcher, the Tuner (fit or restore).

* :func:`trial_fn` is a Tune *function trainable*: one k-fold CV (:func:`run_cv`) with its
  folds' TorchTrainers started from inside the trial (Train V2 inside Tune, see
  ray-notes).  It reports once per epoch, as soon as every fold has finished that epoch:
  ``cv_auc`` (fold-mean val AUC), ``cv_val_loss``, ``fold<k>_auc`` and ``objective``
  (:func:`distmsfa.hpo.study.objective_value`), with a small checkpoint (the epoch) so a
  restored trial keeps ``training_iteration`` aligned with the epochs.
* :class:`PrunedAwareOptunaSearch`: Ray's OptunaSearch tells Optuna an ASHA-stopped trial
  as COMPLETE with its early value; this one tells it PRUNED (docs/tuning.md).
* :func:`run_tune` builds or restores the Tuner and returns its ResultGrid.
"""
from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Optional

from ray.tune import Callback
from ray.tune.search.optuna import OptunaSearch

from distmsfa.hpo.study import OBJECTIVE, Study, default_concurrency, objective_value, trial_footprint

EXPERIMENT = "tune"
TRIALS_DIR = "trials"
STARTS_FILE = "starts.jsonl"
POINT_FILE = "point.json"
REPORTS_FILE = "reports.jsonl"
TRIAL_CONFIG = "config.yaml"

log = logging.getLogger("distmsfa.hpo")


class TrialRefused(ValueError):
    """The sampled configuration is one the model or the configs refuse (trial recorded as failed)."""


# --- quiet Ray --------------------------------------------------------------------------

QUIET_ENV = {
    "RAY_DEDUP_LOGS": "1",
    # Not RAY_BACKEND_LOG_LEVEL: setting it makes the driver's C++ logger print a line saying so
    # on every start (distmsfa.runtime).
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "RAY_AIR_NEW_OUTPUT": "0",
    "RAY_TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "1000",
    "TUNE_WARN_INSUFFICENT_RESOURCE_THRESHOLD_S": "0",
    "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore::FutureWarning",
}


def quiet_ray(verbose: bool) -> None:
    """Keep Ray's INFO/WARNING and deprecation lines off the terminal (``--verbose``: keep them)."""
    if verbose:
        return
    import warnings

    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*optuna.*", category=Warning)
    for name in ("ray", "ray.data", "ray.air", "ray.util", "optuna"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # A failed trial's traceback is in its error.txt and its reason in the live/final table
    # and trials.csv; Tune's own ERROR log of it would fill the terminal.
    for name in ("ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)
    except ImportError:  # pragma: no cover - optuna is a dependency
        pass


# --- the trial ----------------------------------------------------------------------------

class EpochAggregator:
    """Per-epoch fold values; an epoch is ready once every fold reported it (last value wins:
    a fold's epoch re-run after a worker restart is reported again)."""

    def __init__(self, folds: list[int]) -> None:
        self.folds = list(folds)
        self.by_epoch: dict[int, dict[int, dict[str, Any]]] = {}

    def add(self, fold: int, epoch: int, metrics: Mapping[str, Any]) -> None:
        self.by_epoch.setdefault(int(epoch), {})[int(fold)] = dict(metrics)

    def ready(self, epoch: int) -> bool:
        return set(self.by_epoch.get(epoch, {})) >= set(self.folds)

    def mean(self, epoch: int, key: str) -> float:
        vals = [self.by_epoch[epoch][f].get(key) for f in self.folds]
        vals = [float(v) for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
        return sum(vals) / len(vals) if len(vals) == len(self.folds) else float("nan")

    def seed_from_disk(self, run_dir: Path) -> None:
        """Epochs the folds finished in an earlier attempt of this trial (before a driver kill)."""
        from distmsfa.training.outputs import read_metrics_log

        for f in self.folds:
            df = read_metrics_log(str(run_dir / "folds" / f"fold{f}"))
            for row in df.to_dict("records") if len(df) else []:
                self.add(f, int(row["epoch"]), row)


def _check_trial_config(model: str, data: Mapping[str, Any]) -> None:
    from distmsfa.config import ConfigError
    from distmsfa.models import registry
    from distmsfa.training.config import CVConfig, TrainConfig

    try:
        tcfg = TrainConfig.from_dict(data["train"])
        CVConfig.from_dict(data["cv"])
        registry.create_model(model, **tcfg.model_cfg)  # the model refuses a bad combination here
    except (ConfigError, ValueError, TypeError, KeyError) as exc:
        msg = str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc).splitlines()[0]
        raise TrialRefused(f"the sampled configuration is refused: {msg}") from None


def trial_fn(config: dict[str, Any], setup: dict[str, Any]) -> None:
    """One trial = one CV run in ``STUDY/trials/<trial_id>``; ``setup`` is the study's fixed part."""
    import yaml
    from ray import tune

    from distmsfa.hpo.space import apply_point
    from distmsfa.training.cv import run_cv

    quiet_ray(setup.get("verbose", False))
    trial_id = tune.get_context().get_trial_id()
    run_dir = Path(setup["study_dir"]) / TRIALS_DIR / trial_id
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / STARTS_FILE, "a", encoding="utf-8") as fh:  # one line per (re)start of the trial
        fh.write(json.dumps({"t": time.time(), "pid": os.getpid()}) + "\n")
    point = {k: config[k] for k in setup["keys"] if k in config}
    data = apply_point(setup["base"], point)
    data["train"]["model"] = setup["model"]
    from distmsfa.hpo.space import decode_choice

    (run_dir / POINT_FILE).write_text(json.dumps({k: decode_choice(v) for k, v in point.items()}, indent=2))
    with open(run_dir / TRIAL_CONFIG, "w", encoding="utf-8") as fh:  # `distmsfa cv --config` re-runs it
        yaml.safe_dump({"train": data["train"], "cv": data["cv"]}, fh, sort_keys=False)
    _check_trial_config(setup["model"], data)

    folds = list(setup["folds"])
    agg = EpochAggregator(folds)
    agg.seed_from_disk(run_dir)
    ckpt = tune.get_checkpoint()
    reported = -1
    if ckpt is not None:
        with ckpt.as_directory() as d:
            reported = int(json.loads(Path(d, "epoch.json").read_text())["epoch"])
    curve = [agg.mean(e, "val_auc") for e in range(reported + 1)]
    epochs, rank_by, window = int(data["train"]["epochs"]), setup["rank_by"], int(setup["smooth_window"])

    def flush(final: bool = False) -> None:
        # The last epoch is reported only once the CV run has written its outputs (final=True):
        # Tune (ASHA at max_t) may stop the trial's actor as soon as it gets the last result.
        nonlocal reported
        while agg.ready(reported + 1) and (reported + 1 < epochs - 1 or final):
            e = reported + 1
            auc = agg.mean(e, "val_auc")
            curve.append(auc)
            metrics = {"epoch": e + 1, "epochs_total": epochs, "cv_auc": auc,
                       "cv_val_loss": agg.mean(e, "val_loss"),
                       OBJECTIVE: objective_value(curve, rank_by, window),
                       **{f"fold{f}_auc": agg.by_epoch[e][f].get("val_auc") for f in folds}}
            if e == epochs - 1 and (run_dir / "summary.json").exists():
                summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
                metrics.update(mean_auc_selected=(summary.get("mean") or {}).get("auc"),
                               pooled_oof_auc=(summary.get("pooled_oof") or {}).get("auc"))
            with open(run_dir / REPORTS_FILE, "a", encoding="utf-8") as fh:  # the trial's curve, for the plots
                fh.write(json.dumps(metrics) + "\n")
            with tempfile.TemporaryDirectory(prefix="distmsfa-trial-") as tmp:
                Path(tmp, "epoch.json").write_text(json.dumps({"epoch": e}))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
            reported = e

    if (run_dir / "summary.json").exists():
        # the CV finished before the driver was killed (and before Tune saved that): nothing to train
        flush(final=True)
        return
    flush()  # epochs every fold finished before a driver kill

    def on_epoch(event: dict[str, Any], _monitor: Any) -> None:
        agg.add(int(event["fold"]), int(event["epoch"]), event)
        flush()

    from rich.console import Console

    run_cv(setup["data"], setup["model"], {"train": data["train"], "cv": data["cv"]}, profile=setup["profile"],
           out=run_dir, resume=(run_dir / "run.json").exists(), on_epoch=on_epoch, progress=False,
           console=Console(file=open(os.devnull, "w")))
    flush(final=True)


# --- resources of stopped trials ----------------------------------------------------------

def release_trial_resources(run_dir: Path) -> list[str]:
    """Remove the placement groups a trial's fold workers ran in, where still present.

    Placement groups live as long as the job that made them, not the actor: when Tune stops
    a trial mid-run (ASHA), its actor and the fold trainers' controllers and workers die,
    but the workers' placement groups stay reserved (Ray issue #54305; Train V2's
    PlacementGroupCleaner did not remove them here, Ray 2.60) and the next trials' folds
    wait for CPUs/GPUs that never come back.  Each fold worker records its group's id
    (``folds/fold<k>/placement_groups.txt``); the study's driver removes them."""
    import ray
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, placement_group_table

    from distmsfa.training.ray_train import PG_FILE

    removed = []
    for f in sorted(Path(run_dir).glob(f"folds/fold*/{PG_FILE}")):
        for hexid in f.read_text(encoding="utf-8").split():
            pg = PlacementGroup(PlacementGroupID(bytes.fromhex(hexid)))
            try:
                state = placement_group_table(pg).get("state")
                if state not in (None, "REMOVED"):
                    ray.util.remove_placement_group(pg)
                    removed.append(hexid)
            except Exception as exc:  # noqa: BLE001 - a group already gone is fine
                log.debug("placement group %s: %s", hexid, exc)
    return removed


class ReleaseStoppedTrials(Callback):
    """Tune callback (driver side): when a trial ends, remove its fold workers' placement
    groups that are still reserved (see :func:`release_trial_resources`)."""

    def __init__(self, study_dir: str) -> None:
        self.study_dir = study_dir
        self.released: dict[str, list[str]] = {}

    def _release(self, trial: Any) -> None:
        ids = release_trial_resources(Path(self.study_dir) / TRIALS_DIR / trial.trial_id)
        if ids:
            self.released.setdefault(trial.trial_id, []).extend(ids)
            with open(Path(self.study_dir) / TRIALS_DIR / trial.trial_id / "released_placement_groups.txt", "a",
                      encoding="utf-8") as fh:
                fh.write("".join(f"{i}\n" for i in ids))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._release(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._release(trial)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        for t in trials:
            self._release(t)


# --- the searcher -------------------------------------------------------------------------

class PrunedAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna an early-stopped trial as PRUNED.

    Ray's on_trial_complete tells every trial that returned a value COMPLETE, so TPE
    would treat a trial ASHA stopped after ``grace_period`` epochs as a finished one
    with that (low, early) value.  A trial that ends without error before ``max_t``
    iterations was stopped by the scheduler: told PRUNED, Optuna keeps its per-epoch
    values (``on_trial_result`` reported them) and TPE ranks it below finished trials."""

    def __init__(self, *args: Any, max_t: int, pruned_as: str = "pruned", first_points: Optional[list] = None,
                 **kwargs: Any) -> None:
        self._first_points = list(first_points or [])
        super().__init__(*args, **kwargs)
        self._max_t = int(max_t)
        self._pruned_as = pruned_as

    def _setup_study(self, mode: Any) -> None:
        # Ray's points_to_evaluate must name every search key; Optuna's enqueue_trial takes a
        # partial point and lets the sampler draw the rest, which is what the study file allows.
        super()._setup_study(mode)
        for point in self._first_points:
            self._ot_study.enqueue_trial(point)

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        if (self._pruned_as == "pruned" and not error and result and trial_id in self._ot_trials
                and trial_id not in self._completed_trials
                and int(result.get("training_iteration", 0)) < self._max_t):
            import optuna

            try:
                self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.PRUNED)
            except Exception as exc:  # noqa: BLE001 - as Ray does: a refused tell is a warning
                log.warning("optuna refused a pruned trial: %s", exc)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result=result, error=error)



def make_searcher(study: Study):
    space = {k: d.to_optuna() for k, d in study.space.items()}
    # metric/mode go to the searcher and the scheduler (one place): OptunaSearch given a space
    # does not take them from TuneConfig.
    return PrunedAwareOptunaSearch(space=space, metric=OBJECTIVE, mode="max", first_points=list(study.points),
                                   seed=study.settings.seed, max_t=study.max_t, pruned_as=study.settings.pruned_as)


def make_scheduler(study: Study):
    if study.settings.scheduler == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="training_iteration", metric=OBJECTIVE, mode="max", max_t=study.max_t, grace_period=study.settings.grace_period,
                         reduction_factor=study.settings.reduction_factor)


# --- the tuner ------------------------------------------------------------------------------

def concurrency(study: Study, n_folds: int) -> tuple[int, dict[str, float]]:
    """``max_concurrent_trials`` (the study's, or what the cluster holds) and one trial's footprint."""
    import ray

    cluster = ray.cluster_resources()
    use_gpu = cluster.get("GPU", 0) > 0
    foot = trial_footprint(n_folds, study.base["cv"], study.settings.trial_cpus, use_gpu)
    for k, v in foot.items():
        if v > cluster.get(k, 0) + 1e-9:
            from distmsfa.config import ConfigError

            raise ConfigError(f"one trial needs {v:g} {k} (trial actor + {n_folds} folds x cv resources) but the "
                              f"cluster has {cluster.get(k, 0):g}; use fewer cv.folds or lower cv.cpus_per_fold / gpus_per_fold")
    auto = default_concurrency(cluster, foot)
    n = study.settings.max_concurrent_trials or auto
    return max(1, min(n, study.settings.num_samples)), foot


def run_tune(study: Study, setup: dict[str, Any], experiment_path: str, storage_path: str, *, resume: bool,
             callbacks: list, max_concurrent: int):
    """Fit the study into ``storage_path/tune`` (or restore the experiment at ``experiment_path``);
    return the ResultGrid."""
    from ray import tune

    trainable = tune.with_resources(tune.with_parameters(trial_fn, setup=setup), {"CPU": study.settings.trial_cpus})
    if resume:
        tuner = tune.Tuner.restore(experiment_path, trainable, resume_unfinished=True, resume_errored=False,
                                   restart_errored=False)
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=make_searcher(study),
                                        scheduler=make_scheduler(study), num_samples=study.settings.num_samples,
                                        max_concurrent_trials=max_concurrent),
            run_config=tune.RunConfig(
                name=EXPERIMENT, storage_path=storage_path, verbose=0, callbacks=callbacks,
                # A trial's folds recover from worker failures themselves (cv.max_failures); a trial
                # that raises (a refused configuration, every fold failed) is recorded, not retried.
                failure_config=tune.FailureConfig(max_failures=0),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
        )
    return tuner.fit()
