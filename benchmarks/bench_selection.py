"""How optimistic is best-validation-epoch selection? (docs/evaluation.md)

On the demo cohort (``distmsfa demo`` settings: 120 synthetic cases, TAH internal in 4
patient-grouped folds, NHH external; crops 8 x 48 x 64 at 5 x 2.5 x 2.5 mm), MSFANet (tiny,
``cpu`` profile) is cross-validated twice:

* ``selection: val`` (the paper's procedure): reports (a) best validation epoch;
* ``selection: inner`` (default): reports (c) the inner-split choice, and (a), (b) too.

Also measured: epoch time of both (the inner split's cost), and the Grad-CAM localisation of
the inner run against the cohort's lesion masks.  Writes ``--out`` (JSON).

    python benchmarks/bench_selection.py --work benchmarks/out/selection --epochs 40 \
        --out benchmarks/results/selection_cpu_2core.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="benchmarks/out/selection")
    ap.add_argument("--n", type=int, default=120)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--folds", default="0,1,2,3")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/out/bench_selection.json")
    ap.add_argument("--selections", default="val,inner",
                    help="run only these (e.g. one per process, then a last call without training collects)")
    ap.add_argument("--train-only", action="store_true", help="train the --selections runs, no JSON or report")
    args = ap.parse_args()

    import numpy as np
    import torch

    from distmsfa.data import PreprocessConfig, build_dataset
    from distmsfa.data.synthetic import generate_cohort
    from distmsfa.demo import DEMO_CROP, DEMO_SPACING_MM
    from distmsfa.evaluation.paper import run_state
    from distmsfa.evaluation.report import make_report
    from distmsfa.training import run_cv

    work = Path(args.work).resolve()
    t0 = time.time()
    manifest = work / "cohort" / "manifest.csv"
    if not manifest.exists():
        generate_cohort(work / "cohort", n=args.n, seed=0, workers=2, progress=False)
    data = work / "data"
    if not (data / "index.parquet").exists():
        build_dataset(manifest, data, PreprocessConfig(target_spacing_mm=DEMO_SPACING_MM, crop_size=DEMO_CROP, seed=0),
                      address="serial", external_sites=("NHH",), progress=False)
    t_data = time.time() - t0
    folds = [int(f) for f in args.folds.split(",")]
    result: dict = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                                "load_avg_start": os.getloadavg()},
                    "settings": vars(args) | {"model": "msfanet", "profile": "cpu", "crop": DEMO_CROP,
                                              "spacing_mm": DEMO_SPACING_MM, "path": "plain"},
                    "data_s": t_data, "runs": {}}
    runs = {}
    if args.train_only:
        for sel in [s for s in args.selections.split(",") if s in ("val", "inner", "last")]:
            rd = work / "runs" / f"msfanet-{sel}-e{args.epochs}"
            if run_state(rd) != "done":
                run_cv(data, "msfanet", profile="cpu", folds=folds, out=rd, plain=True, progress=False,
                       resume=(rd / "run.json").exists(),
                       overrides={"epochs": args.epochs, "selection": sel, "num_threads": args.threads})
        return
    for sel in ("val", "inner"):
        rd = work / "runs" / f"msfanet-{sel}-e{args.epochs}"
        t = time.time()
        if run_state(rd) != "done":
            run_cv(data, "msfanet", profile="cpu", folds=folds, out=rd, plain=True, progress=False,
                   resume=(rd / "run.json").exists(),
                   overrides={"epochs": args.epochs, "selection": sel, "num_threads": args.threads})
        s = json.loads((rd / "summary.json").read_text(encoding="utf-8"))
        hist = [json.loads(x) for f in folds for x in (rd / "folds" / f"fold{f}" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
        result["runs"][sel] = {
            "run_dir": str(rd), "collect_wall_s": time.time() - t,
            "fold_wall_s_sum": float(sum(h["epoch_time_s"] for h in hist)), "median_epoch_s": float(np.median([h["epoch_time_s"] for h in hist])),
            "estimates": {k: {"label": v["label"], "mean": v["mean"], "std": v["std"],
                              "pooled_auc": v["pooled_oof"].get("auc"),
                              "epochs": {f: d["best_epoch"] for f, d in v["folds"].items()}}
                          for k, v in s["estimates"].items()},
            "external": s.get("external")}
        runs[sel] = rd
    r = result["runs"]
    result["optimism_auc"] = {
        "a_val_run_minus_c_inner_run": r["val"]["estimates"]["best_val"]["mean"]["auc"] - r["inner"]["estimates"]["inner"]["mean"]["auc"],
        "a_minus_c_same_inner_run": r["inner"]["estimates"]["best_val"]["mean"]["auc"] - r["inner"]["estimates"]["inner"]["mean"]["auc"],
        "a_minus_b_val_run": r["val"]["estimates"]["best_val"]["mean"]["auc"] - r["val"]["estimates"]["last"]["mean"]["auc"]}
    result["inner_cost_epoch_ratio"] = r["inner"]["median_epoch_s"] / r["val"]["median_epoch_s"]
    t = time.time()
    rep = make_report([runs["val"], runs["inner"]], work / "report", lesions=str(manifest), loc_cases=16)
    result["report_s"] = time.time() - t
    result["report"] = str(rep.out / "report.html")
    result["localisation"] = rep.localisation
    result["machine"]["load_avg_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=float))
    print(json.dumps({k: result[k] for k in ("optimism_auc", "inner_cost_epoch_ratio")}, indent=2))


if __name__ == "__main__":
    main()
