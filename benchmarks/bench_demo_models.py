"""Does the demo show the paper's ordering?  MSFANet > concat Baseline > one sequence (issue 15).

On the demo cohort (``distmsfa demo`` settings: 120 synthetic cases, TAH internal in 4
patient-grouped folds, NHH external; crops 8 x 48 x 64 at 5 x 2.5 x 2.5 mm) each model
(``msfanet``, ``baseline``, ``baseline_t1``, ``baseline_fs``) is cross-validated with the
``cpu`` profile (plus ``--train`` overrides) for every ``--seeds`` training seed, on the
plain path (no Ray: the figures are the model's, not the cluster's).  Per run: the honest
estimate (the profile's selection rule, ``inner`` unless overridden), the last-epoch and
the optimistic best-validation-epoch estimates, the external-site AUC (each fold model and
the fold ensemble), wall time.  Per seed: paired DeLong tests on the pooled out-of-fold
predictions of the honest estimate (MSFANet vs Baseline, Baseline vs the better single
sequence) and whether the ordering holds.

The per-joint MIL models (``msfanet_mil``, ``baseline_mil``; docs/models.md, "Per-joint
model (MIL)") run the same way (``--models msfanet_mil,baseline_mil,...``): the ``--train``
overrides (``model_cfg.preset`` included) apply to every model in ``--models``.  Their extra
paired tests: MIL vs its whole-crop counterpart (``msfanet_mil`` vs ``msfanet``,
``baseline_mil`` vs ``baseline``) and ``msfanet_mil`` vs ``baseline_mil``.

A run whose folder already holds ``summary.json`` is reused, so runs can be split over
processes (``--models``/``--seeds``/``--folds``, ``--train-only``) and one last call
(``--collect-only``: trains nothing, lists unfinished folds as in progress) collects.  Runs
of another work folder made with the same data and ``--train`` can be copied into
``--work/runs/<tag>/`` to pair new models with them (the result records every run's
settings; ``pairing`` lists any setting other than the model that differs)::

    python benchmarks/bench_demo_models.py --work benchmarks/out/demo_models \\
        --seeds 0 --out benchmarks/results/demo_models_cpu_2core.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

MODELS = ("msfanet", "baseline", "baseline_t1", "baseline_fs")
#: Extra paired tests when both models ran (a, b): MIL vs whole crop, MSFANet vs Baseline per joint.
PAIRS = (("msfanet_mil", "msfanet"), ("baseline_mil", "baseline"), ("msfanet_mil", "baseline_mil"))


def build_data(work: Path, n: int) -> Path:
    from distmsfa.data import PreprocessConfig, build_dataset
    from distmsfa.data.synthetic import generate_cohort
    from distmsfa.demo import DEMO_CROP, DEMO_ROI_MASK_MM, DEMO_SPACING_MM

    manifest = work / "cohort" / "manifest.csv"
    if not manifest.exists():
        generate_cohort(work / "cohort", n=n, seed=0, workers=2, progress=False)
    data = work / "data"
    if not (data / "index.parquet").exists():
        build_dataset(manifest, data, PreprocessConfig(target_spacing_mm=DEMO_SPACING_MM, crop_size=DEMO_CROP, roi_mask_mm=DEMO_ROI_MASK_MM, seed=0),
                      address="serial", external_sites=("NHH",), progress=False)
    return data


def run_one(data: Path, run_dir: Path, model: str, seed: int, fold: int, train: dict, threads: int) -> None:
    """One fold of one model's CV in its own run folder (folds of a model can run in parallel processes)."""
    from distmsfa.training import run_cv

    if (run_dir / "summary.json").exists():
        return
    import torch

    torch.set_num_threads(threads)
    t0 = time.time()
    run_cv(data, model, profile="cpu", out=run_dir, plain=True, progress=False, resume=(run_dir / "run.json").exists(),
           folds=[fold], overrides={"train": {**train, "seed": seed}})
    (run_dir / "timing.json").write_text(json.dumps({"wall_s": time.time() - t0, "load_avg": os.getloadavg()}))


def collect(model_dir: Path, folds: list[int]) -> tuple[dict, "object"]:
    """The CV summary of a model's fold runs (``f<k>/``), merged as one run would summarise them."""
    from distmsfa.training import outputs as out_files
    from distmsfa.training.config import TrainConfig
    from distmsfa.training.report import summarize_run

    fold_dir = {k: model_dir / f"f{k}" / "folds" / f"fold{k}" for k in folds}
    finished = [k for k in folds if out_files.fold_done(str(fold_dir[k]))]
    # Folds still training (the time ran out): how far they got, from their epoch log.
    in_progress = {}
    for k in folds:
        log = fold_dir[k] / "metrics.jsonl"
        if k not in finished and log.exists():
            rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
            if rows:
                last = rows[-1]
                in_progress[str(k)] = {"epochs_done": len(rows), "train_loss_first": rows[0]["train_loss"],
                                       "train_loss_last": last["train_loss"], "val_auc_last": last["val_auc"],
                                       "inner_auc_last": last.get("inner_auc"),
                                       "mean_epoch_s": sum(r["epoch_time_s"] for r in rows) / len(rows)}
    if not finished:
        return {"folds_done": [], "in_progress": in_progress}, None
    done = {k: out_files.read_fold(str(fold_dir[k])) for k in finished}
    tcfg = TrainConfig.from_dict(json.loads((model_dir / f"f{finished[0]}" / "run.json").read_text())["train"])
    s, oof, _ = summarize_run(done, tcfg.threshold, tcfg.threshold_value, tcfg.selection)
    walls = [json.loads((model_dir / f"f{k}" / "timing.json").read_text())["wall_s"] for k in finished
             if (model_dir / f"f{k}" / "timing.json").exists()]
    epoch_s = [h["epoch_time_s"] for d in done.values() for h in d["history"].to_dict("records")]
    timing = {"wall_s": sum(walls), "mean_epoch_s": sum(epoch_s) / max(1, len(epoch_s))}
    est = {k: {"mean_auc": v["mean"]["auc"], "std_auc": v["std"]["auc"], "pooled_auc": v["pooled_oof"]["auc"],
               "epochs": {f: m["best_epoch"] for f, m in v["folds"].items()}}
           for k, v in s["estimates"].items()}
    ext = s.get("external", {})
    gap = est["last"]["mean_auc"] - est["best_val"]["mean_auc"] if {"last", "best_val"} <= set(est) else None
    out = {"folds_done": finished, "in_progress": in_progress, "selection": s["selection"], "estimate": s["estimate"], "honest": est.get(s["estimate"]), "estimates": est,
           "last_minus_best_val": gap, "train": tcfg.to_dict(),
           "external": {"mean_auc": ext.get("mean", {}).get("auc"), "std_auc": ext.get("std", {}).get("auc"),
                        "ensemble_auc": ext.get("ensemble", {}).get("auc"), "n_cases": ext.get("n_cases")},
           "wall_s_sum_of_folds": timing["wall_s"], "mean_epoch_s": timing["mean_epoch_s"], "run_dir": str(model_dir)}
    return out, oof


def compare(runs: dict, oofs: dict) -> dict:
    """Paired DeLong tests on the pooled OOF predictions of the honest estimate."""
    from distmsfa.evaluation.stats import delong_paired_test

    def test(a: str, b: str) -> dict:
        m = oofs[a][["case_id", "label", "prob"]].merge(oofs[b][["case_id", "prob"]], on="case_id", suffixes=("_a", "_b"))
        auc_a, auc_b, z, p = delong_paired_test(m["label"], m["prob_a"].to_numpy(), m["prob_b"].to_numpy())
        return {"a": a, "b": b, "auc_a": auc_a, "auc_b": auc_b, "z": z, "p": p, "n": int(len(m))}

    oofs = {k: v for k, v in oofs.items() if v is not None}
    out = {}
    if {"baseline_t1", "baseline_fs"} <= set(oofs):
        single = max(("baseline_t1", "baseline_fs"), key=lambda k: runs[k]["honest"]["pooled_auc"])
        out["better_single"] = single
        if "baseline" in oofs:
            out["baseline_vs_single"] = test("baseline", single)
    if {"msfanet", "baseline"} <= set(oofs):
        out["msfanet_vs_baseline"] = test("msfanet", "baseline")
    if {"better_single", "baseline_vs_single", "msfanet_vs_baseline"} <= set(out):
        out["ordering_holds"] = bool(out["msfanet_vs_baseline"]["auc_a"] > out["msfanet_vs_baseline"]["auc_b"]
                                     > out["baseline_vs_single"]["auc_b"])
    for a, b in PAIRS:
        if {a, b} <= set(oofs):
            out[f"{a}_vs_{b}"] = test(a, b)
    return out


def pairing(runs: dict) -> dict:
    """Training settings (other than the model) that differ between a seed's runs: pairs are fair when empty."""
    cfgs = {m: {k: v for k, v in r["train"].items() if k != "model"} for m, r in runs.items() if r.get("train")}
    keys = sorted({k for c in cfgs.values() for k in c})
    return {k: {m: c.get(k) for m, c in cfgs.items()} for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in cfgs.values()}) > 1}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="benchmarks/out/demo_models")
    ap.add_argument("--data", default=None, help="a preprocessed demo dataset to reuse (default: build one in --work)")
    ap.add_argument("--n", type=int, default=120)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--folds", default="0,1,2,3", help="folds to train in this process (collect uses all four)")
    ap.add_argument("--train", default="{}", help="JSON TrainConfig overrides on top of the cpu profile")
    ap.add_argument("--tag", default="cpu", help="run-folder group under --work/runs (one per --train setting)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-only", action="store_true")
    ap.add_argument("--collect-only", action="store_true",
                    help="train nothing: summarise the finished folds (others are listed as in progress)")
    ap.add_argument("--out", default="benchmarks/out/bench_demo_models.json")
    ap.add_argument("--oof-csv", default=None,
                    help="also write the pooled out-of-fold predictions of the honest estimate (seed, model, case_id, "
                         "fold, label, prob), so later runs can be paired with these without their run folders")
    ap.add_argument("--note", default="", help="recorded in the JSON (e.g. where reused runs came from)")
    args = ap.parse_args()

    import torch

    from distmsfa.training.profiles import get_profile

    work = Path(args.work).resolve()
    t0 = time.time()
    data = Path(args.data).resolve() if args.data else build_data(work, args.n)
    models = [m for m in args.models.split(",") if m]
    seeds = [int(s) for s in args.seeds.split(",")]
    train = json.loads(args.train)
    folds = [int(f) for f in args.folds.split(",")]
    for seed in seeds if not args.collect_only else []:
        for model in models:
            for fold in folds:
                run_one(data, work / "runs" / args.tag / f"{model}-s{seed}" / f"f{fold}", model, seed, fold, train,
                        args.threads)
    if args.train_only:
        return
    per_seed, oof_rows = {}, []
    for seed in seeds:
        runs, oofs = {}, {}
        for model in models:
            runs[model], oofs[model] = collect(work / "runs" / args.tag / f"{model}-s{seed}", folds)
        per_seed[str(seed)] = {"runs": runs, "tests": compare(runs, oofs), "pairing": pairing(runs)}
        oof_rows += [o[["case_id", "fold", "label", "prob"]].assign(seed=seed, model=m) for m, o in oofs.items() if o is not None]
    profile = get_profile("cpu")["train"]
    fp = json.loads((data / "fingerprint.json").read_text()) if (data / "fingerprint.json").exists() else {}
    result = {
        "what": "demo cohort (120 cases, TAH 4-fold CV + NHH external, 8x48x64 at 5x2.5x2.5 mm); cpu profile + overrides; "
                "plain path; AUCs of the honest estimate (selection rule), last epoch, best val epoch (optimistic); "
                "paired DeLong on pooled OOF predictions of the honest estimate",
        "data": {"path": str(data), **{k: fp.get("params", {}).get(k) for k in ("crop_size", "target_spacing_mm", "roi_mask_mm")},
                 "fingerprint": fp.get("fingerprint")},
        "profile_train": profile, "overrides": train, "models": models, "seeds": seeds, "per_seed": per_seed,
        "complete": all(len(r["folds_done"]) == 4 for v in per_seed.values() for r in v["runs"].values()),
        "ordering_holds_in": sum(bool(v["tests"].get("ordering_holds")) for v in per_seed.values()),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "threads": args.threads, "load_avg_at_end": os.getloadavg(),
                    "note": "2-core machine shared with other jobs: wall times are pessimistic"},
        "collect_wall_s": time.time() - t0, "note": args.note,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    if args.oof_csv and oof_rows:
        import pandas as pd

        pd.concat(oof_rows)[["seed", "model", "case_id", "fold", "label", "prob"]].to_csv(args.oof_csv, index=False)
        result["oof_csv"] = args.oof_csv
        Path(args.out).write_text(json.dumps(result, indent=2))
    for seed, v in per_seed.items():
        for m, r in v["runs"].items():
            if not r["folds_done"]:
                print(f"seed {seed} {m:12s} no fold finished; in progress: {json.dumps(r['in_progress'])}")
                continue
            h = r["honest"]
            print(f"seed {seed} {m:12s} honest {h['mean_auc']:.3f}±{h['std_auc']:.3f} pooled {h['pooled_auc']:.3f} "
                  f"last {r['estimates']['last']['mean_auc']:.3f} best {r['estimates']['best_val']['mean_auc']:.3f} "
                  f"ext {r['external']['ensemble_auc']:.3f} epoch {r['mean_epoch_s']:.1f}s wall {r['wall_s_sum_of_folds']:.0f}s "
                  f"folds {r['folds_done']}")
        print(f"seed {seed} tests {json.dumps(v['tests'])}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
