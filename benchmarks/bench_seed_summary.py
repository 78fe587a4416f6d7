"""Over seeds: the issue-15 ordering check and the seed ensemble, from out-of-fold predictions.

Reads one or more out-of-fold CSVs as ``bench_demo_models.py --oof-csv`` writes them
(columns ``seed, model, case_id, fold, label, prob``; the honest estimate's predictions: each
case scored by the model of the fold that held it out, nothing chosen on it) and reports:

- per model and seed, the fold-mean AUC (the CV's "honest" figure) and the pooled AUC;
- the **ordering** of issue 15 per seed: fused model > concatenation > the better single
  sequence (the single model with the higher pooled AUC in that seed), each step with its paired
  DeLong test on the pooled out-of-fold predictions, and how many seeds hold each step and the
  whole ordering; the same counts on the fold-mean AUC (``fold_mean``), which can rank two close
  models the other way;
- the **seed ensemble**: each case's mean probability over the seeds (still honest: every
  member of a case's mean was trained without it), with its fold-mean and pooled AUC, i.e. how
  much of the gap to a goal is the variance of one training run rather than what the data allow.

    python benchmarks/bench_seed_summary.py --oof benchmarks/results/demo_models_5seeds_morph_oof.csv \\
        --out benchmarks/results/demo_seed_summary_120_cpu_2core.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd


def _fold_mean_auc(df: pd.DataFrame, col: str = "prob") -> float:
    from sklearn.metrics import roc_auc_score

    return float(np.mean([roc_auc_score(g["label"], g[col]) for _, g in df.groupby("fold")]))


def _pooled_auc(df: pd.DataFrame, col: str = "prob") -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(df["label"], df[col]))


def _ahead(a: float, b: float) -> bool:
    """``a`` beats ``b``; equal AUCs that differ only in float rounding (the same ranks summed in
    another order) are a tie, not a win."""
    return a - b > 1e-9


def _paired(a: pd.DataFrame, b: pd.DataFrame) -> dict:
    from distmsfa.evaluation.stats import delong_paired_test

    m = a.merge(b, on=["case_id", "label"], suffixes=("_a", "_b"))
    if len(m) != len(a) or len(m) != len(b):
        raise ValueError(f"paired test needs the same cases in both models: {len(a)}, {len(b)}, {len(m)} shared")
    auc_a, auc_b, z, p = delong_paired_test(m["label"], m["prob_a"].to_numpy(), m["prob_b"].to_numpy())
    return {"auc_a": auc_a, "auc_b": auc_b, "z": z, "p": p, "n": int(len(m))}


def summarise(oof: pd.DataFrame, fused: str = "msfanet", concat: str = "baseline",
              singles: tuple[str, ...] = ("baseline_fs", "baseline_t1"), alpha: float = 0.05) -> dict:
    """The summary above as a dict; ``oof`` as the module docstring says."""
    need = {"seed", "model", "case_id", "fold", "label", "prob"}
    if missing := need - set(oof.columns):
        raise ValueError(f"out-of-fold CSV lacks columns {sorted(missing)}")
    oof = oof.copy()
    oof["seed"] = oof["seed"].astype(int)
    models = sorted(oof["model"].unique())
    out: dict = {"models": {}, "ordering": {}, "alpha": alpha}
    for m in models:
        g = oof[oof.model == m]
        seeds = sorted(g.seed.unique())
        per_seed = {str(s): {"fold_mean_auc": _fold_mean_auc(x), "pooled_auc": _pooled_auc(x), "n": int(len(x))}
                    for s, x in g.groupby("seed")}
        fm = [v["fold_mean_auc"] for v in per_seed.values()]
        wide = g.pivot_table(index=["case_id", "fold", "label"], columns="seed", values="prob").dropna().reset_index()
        wide["ens"] = wide[seeds].mean(axis=1)
        out["models"][m] = {
            "seeds": [int(s) for s in seeds], "per_seed": per_seed,
            "fold_mean_auc_mean": float(np.mean(fm)), "fold_mean_auc_sd": float(np.std(fm, ddof=1)) if len(fm) > 1 else 0.0,
            "seed_ensemble": {"n_seeds": len(seeds), "n_cases": int(len(wide)),
                              "fold_mean_auc": _fold_mean_auc(wide, "ens"), "pooled_auc": _pooled_auc(wide, "ens")}}
    present = [s for s in singles if s in models]
    if fused in models and concat in models and present:
        # a seed counts where the fused, the concatenation and at least one single model ran; the
        # better single is chosen among the singles that ran in that seed
        has = {m: set(out["models"][m]["seeds"]) for m in (fused, concat, *present)}
        seeds = sorted((has[fused] & has[concat]) & set.union(*(has[m] for m in present)))
        per_seed = {}
        for s in seeds:
            singles_s = [m for m in present if s in has[m]]
            x = {m: oof[(oof.model == m) & (oof.seed == s)] for m in (fused, concat, *singles_s)}
            best_single = max(singles_s, key=lambda m: _pooled_auc(x[m]))
            f_c, c_s = _paired(x[fused], x[concat]), _paired(x[concat], x[best_single])
            per_seed[str(s)] = {"better_single": best_single, f"{fused}_vs_{concat}": f_c, f"{concat}_vs_single": c_s,
                                "step1_ahead": _ahead(f_c["auc_a"], f_c["auc_b"]), "step2_ahead": _ahead(c_s["auc_a"], c_s["auc_b"]),
                                "step1_significant": _ahead(f_c["auc_a"], f_c["auc_b"]) and f_c["p"] < alpha,
                                "step2_significant": _ahead(c_s["auc_a"], c_s["auc_b"]) and c_s["p"] < alpha}
            per_seed[str(s)]["ordering_holds"] = per_seed[str(s)]["step1_ahead"] and per_seed[str(s)]["step2_ahead"]
            # the same on the CV's own figure (mean of the per-fold AUCs), which can rank differently
            fm = {m: out["models"][m]["per_seed"][str(s)]["fold_mean_auc"] for m in (fused, concat, *singles_s)}
            best_fm = max(singles_s, key=fm.get)
            per_seed[str(s)]["fold_mean"] = {"better_single": best_fm, "auc": fm,
                                             "step1_ahead": _ahead(fm[fused], fm[concat]),
                                             "step2_ahead": _ahead(fm[concat], fm[best_fm])}
            per_seed[str(s)]["fold_mean"]["ordering_holds"] = (per_seed[str(s)]["fold_mean"]["step1_ahead"]
                                                               and per_seed[str(s)]["fold_mean"]["step2_ahead"])
        count = lambda k: int(sum(v[k] for v in per_seed.values()))  # noqa: E731
        out["ordering"] = {"fused": fused, "concat": concat, "singles": present, "singles_per_seed": {str(s): [m for m in present if s in has[m]] for s in seeds},
                           "seeds": [int(s) for s in seeds],
                           "per_seed": per_seed, "n_seeds": len(seeds),
                           "seeds_step1_ahead": count("step1_ahead"), "seeds_step2_ahead": count("step2_ahead"),
                           "seeds_step1_significant": count("step1_significant"),
                           "seeds_step2_significant": count("step2_significant"),
                           "seeds_ordering_holds": count("ordering_holds"),
                           "fold_mean": {k: int(sum(v["fold_mean"][k] for v in per_seed.values()))
                                         for k in ("step1_ahead", "step2_ahead", "ordering_holds")}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--oof", action="append", required=True, help="out-of-fold CSV (repeatable; rows are concatenated)")
    ap.add_argument("--fused", default="msfanet")
    ap.add_argument("--concat", default="baseline")
    ap.add_argument("--singles", default="baseline_fs,baseline_t1")
    ap.add_argument("--note", default="", help="free text stored in the JSON (which runs, which machine)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    oof = pd.concat([pd.read_csv(f) for f in args.oof], ignore_index=True)
    dup = oof.duplicated(["seed", "model", "case_id"])
    if dup.any():
        raise SystemExit(f"{int(dup.sum())} rows repeat a (seed, model, case_id): the CSVs overlap")
    res = summarise(oof, args.fused, args.concat, tuple(s for s in args.singles.split(",") if s))
    res.update(what=__doc__.splitlines()[0], oof_files=args.oof, note=args.note)
    Path(args.out).write_text(json.dumps(res, indent=1))
    for m, r in res["models"].items():
        e = r["seed_ensemble"]
        print(f"{m:12s} seeds {r['seeds']} fold-mean {r['fold_mean_auc_mean']:.3f} ± {r['fold_mean_auc_sd']:.3f}; "
              f"{e['n_seeds']}-seed ensemble fold-mean {e['fold_mean_auc']:.3f} pooled {e['pooled_auc']:.3f}")
    if o := res["ordering"]:
        print(f"ordering {o['fused']} > {o['concat']} > better single: holds in {o['seeds_ordering_holds']} of "
              f"{o['n_seeds']} seeds (step 1 ahead {o['seeds_step1_ahead']}, p<0.05 {o['seeds_step1_significant']}; "
              f"step 2 ahead {o['seeds_step2_ahead']}, p<0.05 {o['seeds_step2_significant']}); on the fold-mean AUC "
              f"in {o['fold_mean']['ordering_holds']} of {o['n_seeds']}")


if __name__ == "__main__":
    main()
