"""Tuning benchmarks (issue 8), JSON out; each pair is measured in one run on one machine.

(a) Tune's overhead: one trial's wall time (``time_total_s`` of a 1-trial study) against the
    same configuration through ``run_cv`` directly on a local Ray of the same size; ratio =
    run_cv wall / trial wall (goal >= 0.9).
(b) ``distmsfa tune`` start (Ray not yet started) -> the first trial's first training batch
    (earliest ``first_batch`` in its folds' timeline.jsonl), goal < 20 s on the 2-core machine.
(c) With ``--main-job``: the README's main job (``distmsfa tune`` without --data: cohort,
    preprocessing, the quickstart study, bundle, external scoring) with its stage times, and
    the quickstart's trials per hour.

    python benchmarks/bench_tune.py --out benchmarks/out/bench_tune.json [--main-job]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def machine() -> dict:
    import ray
    import torch

    return {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__, "ray": ray.__version__,
            "loadavg_1min": os.getloadavg()[0]}


def one_trial_study(data: Path, tmp: Path, epochs: int) -> dict:
    """A 1-trial study (the search space is one point) so the trial is the run_cv config below."""
    return {"train": {"model_cfg": {"preset": "tiny"}, "epochs": epochs, "batch_size": 4, "lr": 1e-3,
                      "precision": "fp32", "num_threads": 1, "seed": 0},
            "cv": {"folds": [0, 1], "cpus_per_fold": 1.0, "data_cpus": 0.25, "max_failures": 0},
            "search": {"train.lr": {"choice": [1e-3]}},
            "tune": {"num_samples": 1, "scheduler": "none", "seed": 0, "trial_cpus": 0.5}}


def first_batch(run_dir: Path) -> float:
    ts = []
    for tl in run_dir.glob("folds/fold*/timeline.jsonl"):
        for line in tl.read_text().splitlines():
            e = json.loads(line)
            if e["event"] == "first_batch":
                ts.append(e["t"])
    return min(ts)


def bench_overhead(data: Path, tmp: Path, epochs: int) -> dict:
    import pandas as pd
    import ray

    from distmsfa.hpo.runner import tune_study
    from distmsfa.training import run_cv

    study = one_trial_study(data, tmp, epochs)
    t0 = time.time()
    res = tune_study(data, tmp / "study", study, profile="cpu", progress=False, bundle=False)
    tune_wall = time.time() - t0
    row = res.trials.iloc[0]
    fb = first_batch(Path(row["run_dir"])) - t0
    # the same configuration, straight through run_cv, on a local Ray of the same size
    ray.init(num_cpus=max(os.cpu_count() or 1, 6), include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        t1 = time.time()
        cv = run_cv(data, "msfanet", {"train": study["train"], "cv": study["cv"]}, profile="cpu", out=tmp / "cv",
                    progress=False)
        cv_wall = time.time() - t1
    finally:
        ray.shutdown()
    trial_wall = float(row["wall_s"])
    same = bool(pd.Series(cv.histories[0]["val_auc"]).round(6).tolist()
                == pd.read_csv(Path(row["run_dir"]) / "folds" / "fold0" / "history.csv")["val_auc"].round(6).tolist())
    return {"a_overhead": {"trial_wall_s": trial_wall, "run_cv_wall_s": cv_wall, "ratio": cv_wall / trial_wall,
                           "goal_ratio": 0.9, "tune_study_wall_s": tune_wall, "same_metrics": same},
            "b_start_to_first_batch": {"seconds": fb, "goal_s": 20.0,
                                       "ray_ready_s": res.timeline.get("ray_ready_s")}}


def bench_main_job(tmp: Path, n: int) -> dict:
    from distmsfa.hpo.main_job import run_main_job

    r = run_main_job(tmp / "quickstart", n=n)
    import pandas as pd

    trials = pd.read_csv(r.study_dir / "trials.csv")
    return {"c_main_job": {"wall_s": r.wall_s, "stages_s": r.stages_s, "n_cases": n, "trials": int(len(trials)),
                           "statuses": trials["status"].value_counts().to_dict(),
                           "trials_per_hour": len(trials) / r.stages_s["study_s"] * 3600,
                           "external": r.external, "bundle": str(r.bundle)}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/out/bench_tune.json")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--n", type=int, default=120, help="main job: synthetic cases")
    ap.add_argument("--main-job", action="store_true")
    ap.add_argument("--skip-overhead", action="store_true")
    args = ap.parse_args()
    from distmsfa.hpo.ray_tune import quiet_ray

    quiet_ray(False)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "training"))
    out: dict = {"machine": machine(), "settings": vars(args)}
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp:
        tmp = Path(tmp)
        if not args.skip_overhead:
            from _tiny import make_tiny_dataset

            data = make_tiny_dataset(tmp / "data", n=48)
            out.update(bench_overhead(data, tmp, args.epochs))
        if args.main_job:
            out.update(bench_main_job(tmp, args.n))
    out["machine"]["loadavg_1min_after"] = os.getloadavg()[0]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, default=str))
    print(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
