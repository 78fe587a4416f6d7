"""The demo's data curve: honest CV AUC against the number of cases, next to the feature ceiling.

Puts together, per cohort size, the seed summary of the models (``bench_seed_summary.py``
output: each model's fold-mean AUC per training seed) and the hand-feature ceiling of the same
folds (the ``feature_ceiling`` of a ``bench_demo_probe.py`` or ``bench_demo_scaling.py`` output:
a standardized logistic regression on ROI features designed with knowledge of the generator's
sign). Writes the table as JSON and, with ``--png``, the picture (mean ± standard deviation over
seeds per model, the ceilings dashed, the issue-15 goal dotted).

    python benchmarks/bench_data_curve.py \\
        --point 120=benchmarks/results/demo_seed_summary_120_cpu_2core.json,benchmarks/results/demo_probe_cpu_2core.json \\
        --point 360=benchmarks/results/demo_seed_summary_360_cpu_2core.json,benchmarks/results/demo_scaling_morph_cpu_2core.json \\
        --out benchmarks/results/demo_data_curve_cpu_2core.json --png docs/img/demo_data_curve.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

GOAL = 0.85  # issue 15: MSFANet's honest CV AUC on the demo cohort


def curve(points: dict[int, tuple[dict, dict]]) -> dict:
    """``points``: cohort size -> (seed summary, feature ceiling) as the module docstring says."""
    out = {}
    for n in sorted(points):
        summary, ceiling = points[n]
        models = {}
        for m, r in summary["models"].items():
            vals = [v["fold_mean_auc"] for v in r["per_seed"].values()]
            models[m] = {"seeds": r["seeds"], "fold_mean_auc": vals, "mean": float(np.mean(vals)),
                         "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                         "seed_ensemble_fold_mean_auc": r["seed_ensemble"]["fold_mean_auc"]}
        out[str(n)] = {"models": models,
                       "feature_ceiling": {k: ceiling[f"{k}/recorded"]["mean_auc"] for k in ("both", "fs", "t1")
                                           if f"{k}/recorded" in ceiling}}
    return out


def plot(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [int(n) for n in table]
    names = {"msfanet": "MSFANet", "baseline": "Baseline (concatenation)", "baseline_fs": "FS alone",
             "baseline_t1": "T1 alone"}
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for m, label in names.items():
        xs = [n for n in ns if m in table[str(n)]["models"]]
        if not xs:
            continue
        mu = np.array([table[str(n)]["models"][m]["mean"] for n in xs])
        sd = np.array([table[str(n)]["models"][m]["sd"] for n in xs])
        k = [len(table[str(n)]["models"][m]["seeds"]) for n in xs]
        ax.errorbar(xs, mu, yerr=sd, marker="o", capsize=3, label=f"{label} (seeds: {', '.join(map(str, k))})")
    for key, style, label in (("both", "--", "feature ceiling, both sequences"), ("fs", ":", "feature ceiling, FS")):
        xs = [n for n in ns if key in table[str(n)]["feature_ceiling"]]
        ax.plot(xs, [table[str(n)]["feature_ceiling"][key] for n in xs], style, color="grey", label=label)
    ax.axhline(GOAL, color="red", lw=0.8, ls="-.", label=f"issue-15 goal ({GOAL})")
    ax.set_xlabel("cases in the cohort (80% internal in 4 CV folds, 20% external)")
    ax.set_ylabel("honest CV AUC (last epoch, mean of folds)")
    ax.set_xticks(ns)
    ax.set_title("Synthetic demo cohort: AUC against data (mean ± sd over seeds)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--point", action="append", required=True, help="N=SEED_SUMMARY.json,CEILING_SOURCE.json (repeatable)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--png", default=None)
    args = ap.parse_args()
    points = {}
    for p in args.point:
        n, _, files = p.partition("=")
        summary, ceiling_src = files.split(",")
        points[int(n)] = (json.loads(Path(summary).read_text()), json.loads(Path(ceiling_src).read_text())["feature_ceiling"])
    table = curve(points)
    Path(args.out).write_text(json.dumps({"what": __doc__.splitlines()[0], "points": args.point, "curve": table}, indent=1))
    if args.png:
        plot(table, Path(args.png))
    for n, r in table.items():
        ms = ", ".join(f"{m} {v['mean']:.3f}" for m, v in r["models"].items())
        print(f"n={n}: ceiling {r['feature_ceiling'].get('both', float('nan')):.3f}; {ms}")


if __name__ == "__main__":
    main()
