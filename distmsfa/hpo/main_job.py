"""The README's main job: ``distmsfa tune`` without ``--data``.

Synthetic two-site cohort -> preprocessing (Ray Data) -> the quickstart study (Ray Tune +
Optuna, each trial a parallel-fold CV) -> the best trial's model bundle -> the bundle's fold
ensemble scoring the held-out external site (NHH), ending with a short table and the paths.
Every step is a library call; the folder layout::

    OUT/cohort/   the generated scans + manifest      OUT/data/   the preprocessed dataset
    OUT/study/    the study (trials, plots, best.yaml, bundle/)
    OUT/external_predictions.csv, OUT/external_metrics.json
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class MainJobResult:
    out: Path
    data: Path
    study_dir: Path
    bundle: Optional[Path]
    external: dict[str, Any]
    wall_s: float
    stages_s: dict[str, float]
    served: dict[str, Any] | None = None  # the external site scored over HTTP (serve=True)


def score_external(bundle: str | Path, data: str | Path, batch_size: int = 8) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Score the dataset's external cases with the bundle's fold ensemble (``load_bundle``):
    the per-case predictions and the metrics at the bundle's threshold."""
    from distmsfa.bundle import load_bundle
    from distmsfa.data.index import load_pair, read_index
    from distmsfa.evaluation.metrics import binary_metrics

    pred = load_bundle(bundle)
    index = read_index(data)
    ext = index[index["is_external"].astype(bool) & index["label"].notna()].reset_index(drop=True)
    if ext.empty:
        raise ValueError(f"the dataset at {data} has no labelled external cases")
    probs: list[np.ndarray] = []
    for i in range(0, len(ext), batch_size):
        rows = ext.iloc[i:i + batch_size]
        x = np.stack([load_pair(data, r, verify=True).astype(np.float32) for _, r in rows.iterrows()])
        probs.append(np.asarray(pred.predict(x)["prob"], dtype=float))
    prob = np.concatenate(probs)
    df = pd.DataFrame({"case_id": ext["case_id"], "site": ext["site"], "label": ext["label"].astype(int), "prob": prob,
                       "pred": (prob >= pred.threshold).astype(int)})
    m = binary_metrics(df["label"], df["prob"], pred.threshold)
    return df, {"n": int(len(df)), "site": sorted(set(df["site"])), "threshold": float(pred.threshold),
                "threshold_policy": pred.threshold_policy, "metrics": m,
                "how": "bundle fold ensemble (mean of the folds' probabilities), threshold chosen on the "
                       "study's pooled out-of-fold predictions; external site never seen in training or search"}


def run_main_job(out: str | Path = "runs/quickstart", *, n: int = 120, seed: int = 0, config: Any = "quickstart",
                 address: Optional[str] = None, resume: bool = False, verbose: bool = False,
                 overrides: Optional[dict] = None, console: Any = None, serve: bool = True) -> MainJobResult:
    from rich.console import Console

    from distmsfa.data import PreprocessConfig, build_dataset
    from distmsfa.data.synthetic import generate_cohort
    from distmsfa.demo import DEMO_CROP, DEMO_ROI_MASK_MM, DEMO_SPACING_MM
    from distmsfa.hpo.ray_tune import quiet_ray
    from distmsfa.hpo.runner import tune_study
    from distmsfa.training.outputs import write_json

    console = console or Console(stderr=True)
    quiet_ray(verbose)
    t0 = time.time()
    out = Path(out).resolve()
    stages: dict[str, float] = {}
    k = 5 if serve else 4
    console.print(f"[1/{k}] synthetic cohort: {n} cases, two sites (NHH held out as the external site)", highlight=False)
    manifest = generate_cohort(out / "cohort", n=n, seed=seed, workers=min(2, os.cpu_count() or 1), progress=False)
    stages["cohort_s"] = time.time() - t0
    console.print(f"[2/{k}] preprocessing to {DEMO_CROP} voxels at {DEMO_SPACING_MM} mm", highlight=False)
    data = out / "data"
    t = time.time()
    pre = PreprocessConfig(target_spacing_mm=DEMO_SPACING_MM, crop_size=DEMO_CROP, roi_mask_mm=DEMO_ROI_MASK_MM, seed=seed)
    # serial preprocessing: on a small machine starting Ray Data's workers costs more than it saves
    # for ~100 small cases, and the study starts its own Ray right after (docs/tuning.md).
    report = build_dataset(manifest, data, pre, address=address or "serial", external_sites=("NHH",), progress=False)
    if report.failures:
        console.print(f"warning: {len(report.failures)} case(s) failed preprocessing (see {data})", highlight=False)
    stages["preprocess_s"] = time.time() - t
    console.print(f"[3/{k}] the quickstart study (Ray Tune + Optuna, each trial a k-fold CV with folds in parallel)",
                  highlight=False)
    t = time.time()
    res = tune_study(data, out / "study", config, address=address, resume=resume, verbose=verbose,
                     overrides=overrides, console=console)
    stages["study_s"] = time.time() - t
    external: dict[str, Any] = {}
    if res.bundle is not None:
        console.print(f"[4/{k}] the bundle's fold ensemble scores the external site", highlight=False)
        t = time.time()
        df, external = score_external(res.bundle, data)
        df.to_csv(out / "external_predictions.csv", index=False)
        write_json(str(out / "external_metrics.json"), external)
        stages["external_s"] = time.time() - t
    served = None
    if serve and res.bundle is not None and external:
        console.print(f"[5/{k}] the bundle served on 127.0.0.1 (Ray Serve) scores the external site over HTTP",
                      highlight=False)
        t = time.time()
        served = serve_external(res.bundle, manifest, out / "served", df, address=address)
        stages["serve_s"] = time.time() - t
    wall = time.time() - t0
    result = MainJobResult(out, data, res.study_dir, res.bundle, external, wall, stages, served)
    console.print(summary_table(result, res))
    return result


def serve_external(bundle: Path, manifest: Path, out: Path, in_process: pd.DataFrame,
                   address: Optional[str] = None) -> dict[str, Any]:
    """Serve ``bundle`` on loopback (one-off API key), score the manifest's external-site cases
    over HTTP with ``distmsfa score``'s client, stop the server; compare with ``in_process``."""
    from distmsfa.runtime import ray_session
    from distmsfa.serving.runner import serve_and_score

    ext_ids = set(in_process["case_id"].astype(str))
    cohort = pd.read_csv(manifest, dtype={"case_id": str})
    # next to the cohort's manifest: its relative paths resolve from that folder
    ext_manifest = manifest.with_name("manifest_external.csv")
    cohort[cohort["case_id"].isin(ext_ids)].to_csv(ext_manifest, index=False)
    with ray_session(address, num_cpus=max(4, os.cpu_count() or 1)):
        report = serve_and_score(str(bundle), str(ext_manifest), str(out), progress=False)
    pred = pd.read_csv(out / "predictions.csv", dtype={"case_id": str})
    both = pred[["case_id", "probability"]].merge(in_process[["case_id", "prob"]], on="case_id")
    diff = float(np.abs(both["probability"] - both["prob"]).max()) if len(both) else float("nan")
    auc = float((report.metrics or {}).get("metrics", {}).get("auc", {}).get("value", float("nan")))
    return {"n_scored": int(len(pred)), "n_failed": int(report.n_failed), "auc": float(auc), "max_abs_diff": diff,
            "out": str(out)}


def summary_table(r: MainJobResult, study: Any):
    from rich.table import Table

    t = Table(title=f"distmsfa tune: the whole loop in {r.wall_s / 60:.1f} min", show_header=False)
    t.add_column("what")
    t.add_column("value")
    best = study.best or {}
    if best:
        t.add_row("best trial", f"{best['trial_id']}: objective {best['objective']:.3f} "
                                f"(smoothed fold-mean val AUC, optimistic: chosen on these folds)")
    if study.bundle is not None and study.best:
        t.add_row("CV of the best trial", f"mean AUC {best.get('mean_auc_selected', float('nan')):.3f} over folds, "
                                          f"pooled out-of-fold AUC {best.get('pooled_oof_auc', float('nan')):.3f}")
    if r.external:
        m = r.external["metrics"]
        t.add_row(f"external site {', '.join(r.external['site'])} (n={r.external['n']})",
                  f"AUC {m['auc']:.3f}  ACC {m['acc']:.3f}  SEN {m['sen']:.3f}  SPEC {m['spec']:.3f}  F1 {m['f1']:.3f} "
                  f"at threshold {r.external['threshold']:.3f} ({r.external['threshold_policy']})")
    if r.served:
        t.add_row("external site over HTTP", f"AUC {r.served['auc']:.3f} from {r.served['n_scored']} answers of the "
                                             f"served bundle; largest difference from in-process "
                                             f"{r.served['max_abs_diff']:.1e} ({r.served['out']})")
    t.add_row("study", str(r.study_dir))
    t.add_row("trials", str(r.study_dir / "trials.csv"))
    t.add_row("best config", str(r.study_dir / "best.yaml"))
    t.add_row("bundle", str(r.bundle) if r.bundle else "-")
    t.add_row("plots", str(r.study_dir / "plots"))
    t.add_row("time per stage", ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in r.stages_s.items()))
    return t
