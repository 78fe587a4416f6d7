"""Training/model variants of one demo model against a reference setting, over seeds (issue 15).

Each variant is one ``bench_demo_models.py`` output (``--out`` JSON and ``--oof-csv``, one
``--train`` setting, i.e. one ``--tag``).  Per variant and seed: the honest estimate (mean ±
sd over the folds, pooled out-of-fold AUC), the OPTIMISTIC best-validation-epoch AUC,
last minus best, and the external fold ensemble; against the reference variant, a paired
DeLong test on the pooled out-of-fold predictions of the honest estimate (the same 96 cases,
the same seed, only the setting differs).  Per variant: the means over its seeds, and how
many seeds it is ahead of the reference.

    python benchmarks/bench_demo_variants.py --model msfanet --ref demo \\
        --variant demo=/tmp/v/demo.json,/tmp/v/demo_oof.csv \\
        --variant ema=/tmp/v/ema.json,/tmp/v/ema_oof.csv --out benchmarks/results/demo_variants.json
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import pandas as pd


def figures(run: dict) -> dict:
    return {"honest_mean_auc": run["honest"]["mean_auc"], "honest_std_auc": run["honest"]["std_auc"],
            "honest_pooled_auc": run["honest"]["pooled_auc"],
            "best_val_mean_auc_OPTIMISTIC": run["estimates"]["best_val"]["mean_auc"],
            "last_minus_best_val": run.get("last_minus_best_val"),
            "external_ensemble_auc": run["external"]["ensemble_auc"], "external_mean_auc": run["external"]["mean_auc"],
            "mean_epoch_s": run.get("mean_epoch_s")}


def paired(oof: pd.DataFrame, ref: pd.DataFrame, model: str, seed: int) -> dict:
    from distmsfa.evaluation.stats import delong_paired_test

    a = oof[(oof.seed == seed) & (oof.model == model)]
    b = ref[(ref.seed == seed) & (ref.model == model)]
    m = a[["case_id", "label", "prob"]].merge(b[["case_id", "label", "prob"]], on="case_id", suffixes=("_a", "_b"))
    if not len(m) or not (m.label_a == m.label_b).all():
        raise SystemExit(f"{model} seed {seed}: the variant and the reference share no cases or disagree on labels")
    auc_a, auc_b, z, p = delong_paired_test(m["label_a"], m["prob_a"].to_numpy(), m["prob_b"].to_numpy())
    return {"auc_variant": auc_a, "auc_ref": auc_b, "z": z, "p": p, "n": int(len(m))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="msfanet")
    ap.add_argument("--ref", required=True, help="the variant name every other one is compared with")
    ap.add_argument("--variant", action="append", required=True, help="NAME=BENCH_JSON,OOF_CSV (repeat)")
    ap.add_argument("--seeds", default=None, help="only these seeds (e.g. 0,1,2: the ones every variant ran)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    variants = {}
    for v in args.variant:
        name, paths = v.split("=", 1)
        js, csv = paths.split(",")
        variants[name] = (json.loads(Path(js).read_text()), pd.read_csv(csv))
    if args.ref not in variants:
        raise SystemExit(f"--ref {args.ref!r} is not one of the --variant names {sorted(variants)}")
    ref_bench, ref_oof = variants[args.ref]
    out = {"what": __doc__.splitlines()[0], "model": args.model, "reference": args.ref, "variants": {}, "note": args.note,
           "seeds_filter": args.seeds,
           "machine": {"cpu_count": __import__("os").cpu_count(), "platform": platform.platform()}}
    for name, (bench, oof) in variants.items():
        seeds, per_seed = [], {}
        for s, ps in bench["per_seed"].items():
            run = ps["runs"].get(args.model)
            if args.seeds is not None and s not in args.seeds.split(","):
                continue
            if not run or len(run.get("folds_done", [])) < 4:
                continue
            row = figures(run)
            ref_run = ref_bench["per_seed"].get(s, {}).get("runs", {}).get(args.model)
            if name != args.ref and ref_run and len(ref_run.get("folds_done", [])) == 4:
                row["vs_ref_delong_pooled_oof"] = paired(oof, ref_oof, args.model, int(s))
            per_seed[s] = row
            seeds.append(s)
        keys = ("honest_mean_auc", "honest_pooled_auc", "best_val_mean_auc_OPTIMISTIC", "last_minus_best_val",
                "external_ensemble_auc")
        mean = {k: float(np.mean([per_seed[s][k] for s in seeds])) for k in keys} if seeds else {}
        ahead = [s for s in seeds if "vs_ref_delong_pooled_oof" in per_seed[s]
                 and per_seed[s]["honest_mean_auc"] > ref_bench["per_seed"][s]["runs"][args.model]["honest"]["mean_auc"]]
        out["variants"][name] = {"overrides": bench.get("overrides"), "seeds": seeds, "per_seed": per_seed,
                                 "mean_over_seeds": mean,
                                 "seeds_ahead_of_ref_honest_mean": None if name == args.ref else len(ahead)}
    Path(args.out).write_text(json.dumps(out, indent=1))
    for name, v in out["variants"].items():
        m = v["mean_over_seeds"]
        print(f"{name:10s} seeds {','.join(v['seeds']):10s} honest {m.get('honest_mean_auc', float('nan')):.3f} "
              f"pooled {m.get('honest_pooled_auc', float('nan')):.3f} l-b {m.get('last_minus_best_val', float('nan')):+.3f} "
              f"ext {m.get('external_ensemble_auc', float('nan')):.3f} ahead {v['seeds_ahead_of_ref_honest_mean']}")


if __name__ == "__main__":
    main()
