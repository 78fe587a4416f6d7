"""MSFANet's patient AUC with predicted ROIs against manual ROIs (issue 13), on the demo cohort.

Uses the fold models that ``bench_joints.py --phase train`` trained on manual-ROI crops
(``WORK/runs/msfanet/f<k>``).  For each fold k:

1. ``fit``: a localiser trained on the internal (TAH) cases of the *other* folds only
   (``distmsfa.localiser.cv.train_localiser`` keeps only its final localiser, trained on every
   internal case, which has seen fold k: so the per-fold localisers are trained here with the
   same ``fit`` and the default ``LocaliserConfig``), saved to ``WORK/localiser/f<k>``;
2. ``preprocess``: fold k's validation cases again, from a manifest copy whose ``roi`` cells
   are empty, with ``build_dataset(..., localiser=WORK/localiser/f<k>)`` (the same
   preprocessing config) into ``WORK/pred/f<k>``;
3. ``score``: the fold's selected MSFANet checkpoint on both crops of the same OOF cases.

Reports the AUC on manual and on predicted crops (pooled OOF, per fold), the paired DeLong
test, the crop-centre shift (mm) between the two crops, and the cases the localiser refused.

    python benchmarks/bench_localiser_auc.py --out benchmarks/results/localiser_auc_cpu_2core.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: best = the fold's inner-selected epoch (best.pt), last = its last epoch (last.pt); both honest
CHECKPOINTS = ("best", "last")


def fit_fold_localisers(cohort: Path, data: Path, work: Path, folds: list[int], epochs: int) -> dict:
    import pandas as pd

    from distmsfa.io.manifest import load_manifest
    from distmsfa.localiser import LocaliserConfig, LocaliserTrainConfig, load_cases
    from distmsfa.localiser.store import save_localiser
    from distmsfa.localiser.train import fit

    cfg, tcfg = LocaliserConfig(), LocaliserTrainConfig(epochs=epochs, threads=1)
    todo = [k for k in folds if not (work / "localiser" / f"f{k}" / "localiser.json").exists()]
    seconds = {}
    if todo:
        ft = pd.read_parquet(data / "folds.parquet").set_index("case_id")
        cases, failures = load_cases(load_manifest(cohort / "manifest.csv").cases, cfg)
        if failures:
            print(f"localiser: {len(failures)} cases unreadable: {failures[:3]}")
        internal = [c for c in cases if c.case_id in ft.index and not bool(ft.loc[c.case_id, "is_external"])]
        for k in todo:
            t0 = time.time()
            train = [c for c in internal if int(ft.loc[c.case_id, "fold"]) != k]
            loc, hist = fit(train, cfg, tcfg)
            loc.meta.update({"bench": f"fold {k} localiser: trained on folds != {k} ({len(train)} internal cases)",
                             "loss_history": [round(v, 4) for v in hist]})
            save_localiser(loc, work / "localiser" / f"f{k}")
            seconds[k] = round(time.time() - t0, 1)
    return {"config": cfg.to_dict(), "train_config": tcfg.to_dict(), "fit_seconds": seconds}


def preprocess_fold(cohort: Path, data: Path, work: Path, fold: int) -> Path:
    import pandas as pd

    from bench_joints import demo_params
    from distmsfa.data import build_dataset

    out = work / "pred" / f"f{fold}"
    if (out / "index.parquet").exists():
        return out
    ft = pd.read_parquet(data / "folds.parquet")
    ids = set(ft[(ft["fold"] == fold) & (~ft["is_external"].astype(bool))]["case_id"])
    m = pd.read_csv(cohort / "manifest.csv", dtype={"case_id": str})
    m = m[m["case_id"].isin(ids)].copy()
    for col in ("t1", "fs", "roi", "lesion"):  # paths relative to the copy's folder
        m[col] = [str((cohort / v).resolve()) for v in m[col]]
    m["roi"] = ""
    mp = work / "pred" / f"manifest_f{fold}.csv"
    mp.parent.mkdir(parents=True, exist_ok=True)
    m.to_csv(mp, index=False)
    build_dataset(mp, out, demo_params()["cfg"], address="serial", localiser=work / "localiser" / f"f{fold}",
                  progress=False)
    return out


def score(data: Path, model_dir: Path, fold: int, case_ids: list[str], checkpoint: str = "best") -> dict[str, float]:
    import numpy as np
    import torch

    from bench_joints import _fold_model
    from distmsfa.data.index import load_array, read_index

    m, _ = _fold_model(model_dir, "msfanet", fold, checkpoint)
    idx = read_index(data).set_index("case_id").loc[case_ids]
    x = torch.from_numpy(np.stack([load_array(data, p) for p in idx["pair_path"]])).float()
    with torch.no_grad():
        prob = m.predict_proba(m(x)).numpy()
    return dict(zip(case_ids, (float(p) for p in prob)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/mil")
    ap.add_argument("--data", default="/tmp/demo15/data")
    ap.add_argument("--cohort", default="/tmp/demo15/cohort")
    ap.add_argument("--folds", default="0,1,2,3")
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--phase", choices=("fit", "all"), default="all")
    ap.add_argument("--out", default="benchmarks/results/localiser_auc_cpu_2core.json")
    args = ap.parse_args()

    import numpy as np
    import pandas as pd
    import torch
    from sklearn.metrics import roc_auc_score

    from bench_joints import check_reuse
    from distmsfa.data.index import read_index
    from distmsfa.evaluation.stats import delong_paired_test

    torch.set_num_threads(1)
    work, data, cohort = Path(args.work), Path(args.data), Path(args.cohort)
    why = check_reuse(data, cohort)
    if why:
        raise SystemExit(f"{data}: {why}")
    folds = [int(f) for f in args.folds.split(",")]
    loc = fit_fold_localisers(cohort, data, work, folds, args.epochs)
    if args.phase == "fit":
        return
    rows, refused, per_fold = [], {}, {}
    manual_index = read_index(data).set_index("case_id")
    for k in folds:
        pred = preprocess_fold(cohort, data, work, k)
        failed = pred / "failed.csv"
        refused[k] = pd.read_csv(failed).to_dict("records") if failed.exists() and failed.stat().st_size else []
        pidx = read_index(pred).set_index("case_id")
        ids = sorted(pidx.index)
        md = work / "runs" / "msfanet" / f"f{k}"
        rec = {c: {"case_id": c, "fold": k, "label": int(manual_index.loc[c, "label"]),
                   "crop_shift_mm": float(np.linalg.norm(np.subtract(pidx.loc[c, "crop_origin_mm"],
                                                                     manual_index.loc[c, "crop_origin_mm"])))}
               for c in ids}
        for ckpt in CHECKPOINTS:
            pm, pp = score(data, md, k, ids, ckpt), score(pred, md, k, ids, ckpt)
            for c in ids:
                rec[c][f"prob_manual_{ckpt}"], rec[c][f"prob_predicted_{ckpt}"] = pm[c], pp[c]
        rows += list(rec.values())
    df = pd.DataFrame(rows)
    df.to_csv(work / "localiser_auc_cases.csv", index=False)
    pooled = {"n": int(len(df)), "crop_shift_mm_mean": float(df["crop_shift_mm"].mean()),
              "crop_shift_mm_max": float(df["crop_shift_mm"].max())}
    for ckpt in CHECKPOINTS:
        a, b, z, p = delong_paired_test(df["label"], df[f"prob_manual_{ckpt}"].to_numpy(),
                                        df[f"prob_predicted_{ckpt}"].to_numpy())
        pooled[ckpt] = {"auc_manual": a, "auc_predicted": b, "auc_difference": b - a, "delong_z": z, "delong_p": p}
    for k, g in df.groupby("fold"):
        per_fold[str(k)] = {"n": int(len(g)), "crop_shift_mm_mean": float(g["crop_shift_mm"].mean()), **{
            ckpt: {"auc_manual": float(roc_auc_score(g["label"], g[f"prob_manual_{ckpt}"])),
                   "auc_predicted": float(roc_auc_score(g["label"], g[f"prob_predicted_{ckpt}"]))}
            for ckpt in CHECKPOINTS}}
    res = {
        "what": "MSFANet (demo preset, bench_joints.py training, honest inner selection) fold models scored on the "
                "same OOF cases cropped around manual ROIs and around ROIs predicted by a localiser trained on the "
                "other folds only; pooled OOF AUC (recorded labels) and paired DeLong, for the inner-selected (best) "
                "and the last-epoch (last) checkpoint; crop_shift_mm = distance "
                "between the two crops' origins (same size and direction: the crop-centre shift)",
        "folds": folds, "localiser": loc, "pooled": pooled,
        "per_fold": per_fold, "refused": {str(k): v for k, v in refused.items()},
        "goal": "AUC within 0.02 of the manual-ROI AUC (issue 13)",
        "machine": {"cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg(), "torch": torch.__version__},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res["pooled"], indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
