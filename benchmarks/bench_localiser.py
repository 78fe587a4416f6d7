"""The sacroiliac ROI localiser on synthetic cohorts: Dice per joint and centroid error (mm)
with patient-grouped CV on the internal site, on the external site (NHH) and on a site the
localiser never trained on (SZH), against the centre-of-image baseline.

    python benchmarks/bench_localiser.py [--n 60] [--n-unseen 16] [--n-folds 2] [--epochs 40]
        [--out benchmarks/results/localiser_synthetic.json]

Writes JSON: configs, per-fold / pooled out-of-fold / external / unseen-site summaries
(means over cases), training seconds, machine load.  Default LocaliserConfig.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--n-unseen", type=int, default=16)
    ap.add_argument("--n-folds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--out", default="benchmarks/results/localiser_synthetic.json")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args()

    import torch

    from distmsfa.data.synthetic import generate_cohort
    from distmsfa.io.manifest import load_manifest
    from distmsfa.localiser import LocaliserConfig, LocaliserTrainConfig, load_cases, load_localiser, train_localiser
    from distmsfa.localiser.train import evaluate, summarise

    torch.set_num_threads(2)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-loc-"))
    t0 = time.perf_counter()
    demo = generate_cohort(work / "demo", n=args.n, sites=("TAH", "NHH"), external_site="NHH", seed=0,
                           progress=False, workers=2)
    unseen = generate_cohort(work / "szh", n=args.n_unseen, sites=("SZH",), external_site=None, seed=7,
                             progress=False, workers=2)
    t_gen = time.perf_counter() - t0
    cfg, tcfg = LocaliserConfig(), LocaliserTrainConfig(epochs=args.epochs)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    rep = train_localiser(str(demo), work / "L", cfg=cfg, tcfg=tcfg, n_folds=args.n_folds, seed=0,
                          external_sites=("NHH",), progress=False)
    t_train = time.perf_counter() - t0
    loc = load_localiser(work / "L")
    cases, failures = load_cases(load_manifest(unseen).cases, cfg)
    rows = evaluate(loc, cases)
    res = {
        "what": "localiser on synthetic cohorts (demo acquisition profile): Dice per joint on the coarse grid, "
                "centroid errors (mm, LPS) against the manual label map at its own resolution; baseline = ROI "
                "centre guessed at the T1's physical centre. Means over cases; fixed epochs, no epoch selection.",
        "cohort": {"n": args.n, "sites": ["TAH", "NHH"], "external": "NHH", "seed": 0,
                   "unseen_site": {"site": "SZH", "n": args.n_unseen, "seed": 7}},
        "localiser_config": cfg.to_dict(), "train_config": tcfg.to_dict(), "n_folds": args.n_folds,
        "cv_folds": {str(k): v for k, v in rep.folds.items()}, "cv_pooled": rep.pooled,
        "external_NHH_final_model": rep.external, "unseen_site_SZH_final_model": summarise(rows),
        "failures": rep.failures + failures,
        "seconds": {"generate": round(t_gen, 1), "cv_and_final_training": round(t_train, 1)},
        "machine": {"cpus": os.cpu_count(), "loadavg_before": load0, "loadavg_after": os.getloadavg(),
                    "torch": torch.__version__, "note": "shared 2-core machine; seconds are load-dependent"},
        "table": rep.table,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(rep.table)
    print("unseen SZH:", json.dumps(summarise(rows)))


if __name__ == "__main__":
    main()
