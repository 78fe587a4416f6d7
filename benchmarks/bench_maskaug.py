"""Mask-aware augmentation on the masked demo dataset (issue 15, ``AugmentConfig.masked``).

Takes the output of ``bench_demo_models.py`` for a run with the mask-aware augmentation
(``masked`` resolved to ``on`` from the dataset's ``roi_mask_mm``) and adds:

* ``comparison``: each (model, seed) run against the stored run of that model and seed with the plain augmentation
  (``--ref-json``/``--ref-oof``): honest, optimistic and external AUCs side by side, and a
  paired DeLong test on the pooled out-of-fold predictions of the honest estimate (same cases);
* ``mask_indicator_check``: on every case of ``--data``, the inside indicator that
  :func:`distmsfa.training.augment.inside_mask` reads from the data (non-zero in T1 or FS)
  against the preprocessing's ROI neighbourhood recomputed from the stored ROI;
* ``rim_check_mask_aware`` (``--rim-check``): ``bench_demo_probe.rim_check`` (fold 0, bare
  loop, the per-voxel probe with the rim pooled) with the demo geometry and ``masked: on``,
  next to the stored plain-augmentation figures (``--ref-probe``).

    python benchmarks/bench_maskaug.py --bench /tmp/maskaug15/demo_models_maskaug.json \\
        --oof /tmp/maskaug15/maskaug_oof.csv --data /tmp/mil15/data --rim-check \\
        --out benchmarks/results/demo_models_maskaug_cpu_2core.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

RES = Path(__file__).resolve().parent / "results"


def indicator_check(data: Path) -> dict:
    from distmsfa.data.preprocess import roi_neighbourhood

    params = json.loads((data / "fingerprint.json").read_text())["params"]
    idx = pd.read_parquet(data / "index.parquet")
    n_mask = n_missed = n_extra = 0
    for pair, roi in zip(idx.pair_path, idx.roi_path):
        x = np.load(data / pair)
        nb = roi_neighbourhood(np.load(data / roi), params["resolved_spacing_dhw"], params["roi_mask_mm"])
        inside = (x != 0).any(0)
        n_mask += int(nb.sum())
        n_missed += int((nb & ~inside).sum())
        n_extra += int((inside & ~nb).sum())
    return {"cases": int(len(idx)), "roi_mask_mm": params["roi_mask_mm"], "neighbourhood_voxels": n_mask,
            "neighbourhood_voxels_read_as_outside": n_missed, "outside_voxels_read_as_inside": n_extra}


def compare(model: str, seed: int, run: dict, ref: dict, oof: pd.DataFrame, ref_oof: pd.DataFrame) -> dict:
    from distmsfa.evaluation.stats import delong_paired_test

    a = oof[(oof.seed == seed) & (oof.model == model)]
    b = ref_oof[(ref_oof.seed == seed) & (ref_oof.model == model)]
    m = a[["case_id", "label", "prob"]].merge(b[["case_id", "label", "prob"]], on="case_id", suffixes=("_a", "_b"))
    assert len(m) and (m.label_a == m.label_b).all(), f"{model} seed {seed}: no common cases or other labels"
    auc_a, auc_b, z, p = delong_paired_test(m["label_a"], m["prob_a"].to_numpy(), m["prob_b"].to_numpy())

    def fig(r: dict) -> dict:
        return {"honest_mean_auc": r["honest"]["mean_auc"], "honest_std_auc": r["honest"]["std_auc"],
                "honest_pooled_auc": r["honest"]["pooled_auc"],
                "best_val_mean_auc_OPTIMISTIC": r["estimates"]["best_val"]["mean_auc"],
                "external_mean_auc": r["external"]["mean_auc"], "external_ensemble_auc": r["external"]["ensemble_auc"],
                "last_minus_best_val": r.get("last_minus_best_val")}

    return {"model": model, "seed": seed, "mask_aware": fig(run), "plain_stored": fig(ref),
            "delong_pooled_oof_honest": {"a": "mask_aware", "b": "plain_stored", "auc_a": auc_a, "auc_b": auc_b,
                                         "z": z, "p": p, "n": int(len(m))}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", required=True, help="bench_demo_models.py output of the mask-aware run")
    ap.add_argument("--oof", required=True, help="its --oof-csv")
    ap.add_argument("--ref-json", default=str(RES / "demo_models_mil_masked_cpu_2core.json"),
                    help="the plain-augmentation runs (seed 0 = demo_models_masked_cpu_2core.json's)")
    ap.add_argument("--ref-oof", default=str(RES / "demo_models_mil_masked_oof.csv"))
    ap.add_argument("--ref-probe", default=str(RES / "demo_probe_cpu_2core.json"))
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default="msfanet", help="the model whose seeds are averaged")
    ap.add_argument("--rim-check", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.time()
    data = Path(args.data).resolve()
    res = json.loads(Path(args.bench).read_text())
    ref = json.loads(Path(args.ref_json).read_text())
    res["augment_masked"] = {f"{m}-s{s}": r.get("train", {}).get("augment", {}).get("masked")
                             for s, v in res["per_seed"].items() for m, r in v["runs"].items()}
    oof, ref_oof = pd.read_csv(args.oof), pd.read_csv(args.ref_oof)
    def both(s: str, m: str) -> bool:
        mine = res["per_seed"][s]["runs"].get(m) or {}
        theirs = ref.get("per_seed", {}).get(s, {}).get("runs", {}).get(m) or {}
        return len(mine.get("folds_done", [])) == 4 and len(theirs.get("folds_done", [])) == 4

    pairs = [(s, m) for s in res["per_seed"] for m in res["per_seed"][s]["runs"] if both(s, m)]
    per = {f"{m}-s{s}": compare(m, int(s), res["per_seed"][s]["runs"][m], ref["per_seed"][s]["runs"][m], oof, ref_oof)
           for s, m in pairs}
    seeds = [s for s, m in pairs if m == args.model]
    mine = [per[f"{args.model}-s{s}"] for s in seeds]
    mean = {side: {k: float(np.mean([c[side][k] for c in mine])) for k in mine[0][side]
                   if isinstance(mine[0][side][k], float)} for side in ("mask_aware", "plain_stored")}
    res["comparison"] = {"per_run": per, f"{args.model}_mean_over_seeds": mean, f"{args.model}_seeds": [int(s) for s in seeds],
                         "pooled_oof_ahead_in": sum(c["delong_pooled_oof_honest"]["auc_a"] > c["delong_pooled_oof_honest"]["auc_b"]
                                                    for c in mine),
                         "fold_mean_ahead_in": sum(c["mask_aware"]["honest_mean_auc"] > c["plain_stored"]["honest_mean_auc"]
                                                   for c in mine),
                         "reference": {"json": Path(args.ref_json).name, "oof": Path(args.ref_oof).name,
                                       "note": ref.get("note")}}
    res["mask_indicator_check"] = indicator_check(data)
    if args.rim_check:
        from bench_demo_probe import rim_check

        geometry = {"translate": 0.1, "rotate_deg": 15.0, "scale": 0.15, "intensity_scale": 0.0, "intensity_shift": 0.0}
        rim = rim_check(data, cases={"geometry_mask_aware_rim_pooled": ({**geometry, "masked": "on"}, 0)})
        stored = json.loads(Path(args.ref_probe).read_text()).get("rim_check") or {}
        rim["stored_plain"] = {"file": Path(args.ref_probe).name, "runs": {
            k: v["last_epoch_auc"] for k, v in (stored.get("runs") or {}).items()}}
        res["rim_check_mask_aware"] = rim
    res["maskaug_machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                              "load_avg_at_end": os.getloadavg(), "wall_s": time.time() - t0}
    Path(args.out).write_text(json.dumps(res, indent=2, default=float))
    print(json.dumps(res["comparison"], indent=1, default=float))
    print(json.dumps(res["mask_indicator_check"]))
    if args.rim_check:
        print(json.dumps({k: v["last_epoch_auc"] for k, v in res["rim_check_mask_aware"]["runs"].items()}))


if __name__ == "__main__":
    main()
