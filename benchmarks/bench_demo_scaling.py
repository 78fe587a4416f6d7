"""Is the demo data-limited?  The same CV on a larger synthetic cohort (issue 15).

Builds (or reuses) a masked demo dataset of ``--n`` cases with the cohort generator's
defaults other than ``n`` (seed 0; sites TAH internal / NHH external in the default 0.8 / 0.2
shares; the demo crop, spacing and ROI mask), computes the hand-feature ceiling on its CV
folds (``bench_demo_probe.feature_ceiling``: a standardized logistic regression on ROI
features, the same as for the 120-case cohort), and trains ``--models`` with the ``--train``
overrides through ``bench_demo_models.py`` (same run layout, so runs can be split over
processes and collected).  The JSON puts next to it the 120-case figures of the same
settings when ``--ref-bench`` (a ``bench_demo_models.py`` output) and ``--ref-ceiling`` (a
``bench_demo_probe.py`` output, ``feature_ceiling``) are given.

    python benchmarks/bench_demo_scaling.py --work /tmp/scale --n 360 --models msfanet --seeds 0 \\
        --train "$T" --out benchmarks/results/demo_scaling_cpu_2core.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("--n", type=int, default=360)
    ap.add_argument("--models", default="msfanet")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--train", default="{}")
    ap.add_argument("--tag", default="demo")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--collect-only", action="store_true", help="train nothing; summarise the finished runs")
    ap.add_argument("--ref-bench", default=None)
    ap.add_argument("--ref-ceiling", default=None)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    from bench_demo_models import build_data
    from bench_demo_probe import feature_ceiling

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    data = build_data(work, args.n)
    build_s = time.time() - t0
    ceiling_file = work / "ceiling.json"
    if not ceiling_file.exists():
        ceiling_file.write_text(json.dumps(feature_ceiling(data, work / "cohort" / "truth.csv")))
    ceiling = json.loads(ceiling_file.read_text())
    bench_out = work / f"bench-{args.tag}.json"
    cmd = [sys.executable, str(HERE / "bench_demo_models.py"), "--work", str(work), "--data", str(data), "--tag", args.tag,
           "--models", args.models, "--seeds", args.seeds, "--train", args.train, "--threads", str(args.threads),
           "--out", str(bench_out), "--oof-csv", str(work / f"oof-{args.tag}.csv")]
    if args.collect_only:
        cmd.append("--collect-only")
    subprocess.run(cmd, check=True)
    bench = json.loads(bench_out.read_text())
    import pandas as pd

    idx = pd.read_parquet(data / "index.parquet")
    out = {"what": __doc__.splitlines()[0], "n_cases": int(len(idx)),
           "cases_by_site_label": {f"{s}/{lab}": int(c) for (s, lab), c in idx.groupby(["site", "label"]).size().items()},
           "preprocess_params_fingerprint": json.loads((data / "fingerprint.json").read_text()).get("fingerprint"),
           "build_s": build_s, "feature_ceiling": ceiling, "bench": bench,
           "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()}}
    # paired DeLong between every two models of a seed (pooled out-of-fold, same cases)
    from itertools import combinations

    from distmsfa.evaluation.stats import delong_paired_test

    oof = pd.read_csv(work / f"oof-{args.tag}.csv")
    out["paired_delong_pooled_oof"] = {}
    for s, g in oof.groupby("seed"):
        for a, b in combinations(sorted(g.model.unique()), 2):
            m = g[g.model == a].merge(g[g.model == b], on=["case_id", "label"], suffixes=("_a", "_b"))
            auc_a, auc_b, z, p = delong_paired_test(m["label"], m["prob_a"].to_numpy(), m["prob_b"].to_numpy())
            out["paired_delong_pooled_oof"][f"s{s}:{a}_vs_{b}"] = {"auc_a": auc_a, "auc_b": auc_b, "z": z, "p": p,
                                                                   "n": int(len(m))}
    if args.ref_bench:
        out["reference_120_bench"] = json.loads(Path(args.ref_bench).read_text())
    if args.ref_ceiling:
        out["reference_120_feature_ceiling"] = json.loads(Path(args.ref_ceiling).read_text())["feature_ceiling"]
    Path(args.out).write_text(json.dumps(out, indent=1))
    both = ceiling["both/recorded"]
    print(f"n={out['n_cases']} ceiling both/recorded {both['mean_auc']:.3f} (external {both['external_auc']:.3f})")
    for s, ps in bench["per_seed"].items():
        for m, r in ps["runs"].items():
            if r.get("honest"):
                print(f"  {m} s{s} honest {r['honest']['mean_auc']:.3f} pooled {r['honest']['pooled_auc']:.3f} "
                      f"ext {r['external']['ensemble_auc']:.3f}")


if __name__ == "__main__":
    main()
