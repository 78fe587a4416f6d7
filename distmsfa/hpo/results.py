"""What a study leaves in its folder (core: no Ray; the Tune results come in as plain records).

    STUDY/trials.parquet, trials.csv   one row per trial: id, status, epochs run, objective,
                                       fold-mean and per-fold AUCs, the sampled parameters,
                                       wall time, error, the trial's CV run folder
    STUDY/best.yaml                    the best trial's full config (`distmsfa cv --config`)
    STUDY/plots/*.png                  Optuna's optimisation history, parallel coordinates,
                                       parameter importances, per-epoch objective (intermediate values)
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from distmsfa.hpo.space import Dist, encode_choice

TRIALS_CSV = "trials.csv"
TRIALS_PARQUET = "trials.parquet"
BEST_YAML = "best.yaml"
PLOTS_DIR = "plots"
STATUS_ORDER = {"COMPLETE": 0, "STOPPED": 1, "RUNNING": 2, "PENDING": 3, "ERROR": 4}


def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return f


def trials_table(records: Sequence[Mapping[str, Any]], space: Mapping[str, Dist]) -> pd.DataFrame:
    """One row per trial, best first (finished trials by objective, then stopped, then failed).

    A record: ``trial_id, status, epochs_run, objective, cv_auc, cv_auc_best, fold_aucs {fold: auc},
    params {key: value}, wall_s, error, run_dir, curve [objective per epoch]`` (+ optional
    ``pooled_oof_auc``, ``mean_auc_selected`` from the trial's CV summary)."""
    rows = []
    for r in records:
        row = {"trial_id": r["trial_id"], "status": r["status"], "epochs_run": int(r.get("epochs_run") or 0),
               "objective": _num(r.get("objective")), "cv_auc_last": _num(r.get("cv_auc")),
               "cv_auc_best": _num(r.get("cv_auc_best"))}
        for f, auc in sorted((r.get("fold_aucs") or {}).items()):
            row[f"fold{f}_auc"] = _num(auc)
        for k in space:
            v = (r.get("params") or {}).get(k)
            row[k] = str(list(v)) if isinstance(v, (list, tuple)) else v
        row.update(mean_auc_selected=_num(r.get("mean_auc_selected")), pooled_oof_auc=_num(r.get("pooled_oof_auc")),
                   wall_s=_num(r.get("wall_s")), error=r.get("error") or "", run_dir=str(r.get("run_dir") or ""))
        rows.append(row)
    df = pd.DataFrame(rows)
    if len(df):
        df["_o"] = df["status"].map(STATUS_ORDER).fillna(9)
        df["_v"] = -df["objective"].fillna(-math.inf)
        df = df.sort_values(["_o", "_v", "trial_id"]).drop(columns=["_o", "_v"]).reset_index(drop=True)
    return df


def best_trial(df: pd.DataFrame) -> Mapping[str, Any] | None:
    """The best trial: the highest objective among trials that ran the whole schedule
    (a stopped trial's value comes from fewer epochs and is not comparable); among the
    stopped ones only when none finished."""
    for status in ("COMPLETE", "STOPPED"):
        ok = df[(df["status"] == status) & df["objective"].notna()] if len(df) else df
        if len(ok):
            return ok.sort_values("objective", ascending=False).iloc[0].to_dict()
    return None


def write_tables(df: pd.DataFrame, study_dir: Path) -> None:
    df.to_csv(study_dir / TRIALS_CSV, index=False)
    out = df.copy()
    for c in out.columns:  # mixed-type parameter columns (e.g. choices of lists) as text for Arrow
        if out[c].dtype == object:
            out[c] = out[c].map(lambda v: v if v is None or isinstance(v, str) else str(v))
    out.to_parquet(study_dir / TRIALS_PARQUET, index=False)


def write_best_yaml(best: Mapping[str, Any], study_dir: Path, rank_by: str) -> Path:
    """Copy the best trial's resolved config (its CV run's config.yaml) with a header."""
    import yaml

    cfg = yaml.safe_load((Path(best["run_dir"]) / "config.yaml").read_text(encoding="utf-8"))
    path = study_dir / BEST_YAML
    header = (f"# Best trial {best['trial_id']} of the study in {study_dir}\n"
              f"# objective ({rank_by} fold-mean validation AUC): {best['objective']:.4f} after {best['epochs_run']} epochs;\n"
              f"# chosen on the same validation folds it is scored on: an optimistic estimate. Re-run it with\n"
              f"#   distmsfa cv --config {path} --data DATA\n")
    path.write_text(header + yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def optuna_study(records: Sequence[Mapping[str, Any]], space: Mapping[str, Dist]):
    """An in-memory Optuna study rebuilt from the records (for Optuna's plots): finished trials
    COMPLETE with their objective, stopped ones PRUNED with their per-epoch values."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    dists = {k: d.to_optuna() for k, d in space.items()}
    study = optuna.create_study(direction="maximize")
    for r in records:
        params = r.get("params") or {}
        if set(params) != set(dists) or r["status"] not in ("COMPLETE", "STOPPED"):
            continue
        curve = [v for v in (r.get("curve") or [])]
        inter = {i + 1: float(v) for i, v in enumerate(curve) if v is not None and math.isfinite(float(v))}
        value = _num(r.get("objective"))
        if r["status"] == "COMPLETE" and math.isfinite(value):
            state, vals = optuna.trial.TrialState.COMPLETE, value
        elif inter:
            state, vals = optuna.trial.TrialState.PRUNED, None
        else:
            continue
        study.add_trial(optuna.trial.create_trial(
            params={k: encode_choice(list(v) if isinstance(v, tuple) else v) for k, v in params.items()},
            distributions=dists, value=vals, state=state, intermediate_values=inter))
    return study


def write_plots(records: Sequence[Mapping[str, Any]], space: Mapping[str, Dist], study_dir: Path) -> dict[str, str]:
    """Optuna's matplotlib plots as PNG; ``{name: path or 'skipped: reason'}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm

    out_dir = study_dir / PLOTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    study = optuna_study(records, space)
    done: dict[str, str] = {}
    plots = {"optimization_history": ovm.plot_optimization_history, "parallel_coordinate": ovm.plot_parallel_coordinate,
             "param_importances": ovm.plot_param_importances, "intermediate_values": ovm.plot_intermediate_values}
    n_complete = sum(t.state.name == "COMPLETE" for t in study.trials)
    for name, fn in plots.items():
        if name == "param_importances" and (n_complete < 2 or len(space) < 2):
            done[name] = "skipped: needs 2 finished trials and 2 parameters"
            continue
        if not study.trials:
            done[name] = "skipped: no finished or stopped trial"
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = fn(study)
            fig = (ax[0] if hasattr(ax, "__len__") and not hasattr(ax, "figure") else ax).figure
            fig.set_size_inches(8, 5)
            fig.tight_layout()
            path = out_dir / f"{name}.png"
            fig.savefig(path, dpi=100)
            plt.close(fig)
            done[name] = str(path)
        except Exception as exc:  # noqa: BLE001 - a plot Optuna cannot draw (e.g. zero variance) is noted, not fatal
            done[name] = f"skipped: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            plt.close("all")
    return done
