"""Which inductive bias learns the demo cohort's sign from 72 cases? (issue 15 probes)

On the masked demo dataset (``distmsfa demo`` settings: 120 synthetic cases, cohort seed 0,
TAH internal in 4 patient-grouped folds, NHH external; crops 8 x 48 x 64 at 5 x 2.5 x 2.5 mm
masked to 7.5 mm around the ROI):

1. the feature ceiling: a logistic regression on the hand-made ROI features of
   tests/data/test_synthetic_complementarity.py (T1, FS, both + co-located), computed on the
   preprocessed crops and cross-validated on exactly the dataset's 4 folds (labels as
   recorded, i.e. the ones the nets train on; also the cohort's true class where truth.csv
   is found), plus the external site (fit on all internal cases);
2. probe nets (``voxel_fusion`` with config variants, or any registered model), each a
   4-fold CV with the ``demo`` profile (+ the probe's model config) on the plain path:
   honest (the profile's selection, ``last``), the optimistic best-validation-epoch AUC,
   the external fold-ensemble AUC, seconds per epoch.

Each probe's run folder is reused when its summary exists (``--probes`` picks a subset, so
probes can run in separate processes); the JSON collects whatever is finished::

    nice -n 10 python benchmarks/bench_demo_probe.py --data /tmp/probe15/data \\
        --work benchmarks/out/demo_probe --out benchmarks/results/demo_probe_cpu_2core.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

# name -> (registered model, model_cfg on top of the profile's, train overrides, what it tests)
NO_INTENSITY = {"augment": {"intensity_scale": 0.0, "intensity_shift": 0.0}}
PROBES: dict[str, tuple[str, dict, dict, str]] = {
    "early": ("voxel_fusion", {}, {}, "(a) per-voxel MLP over (T1, FS), masked mean+max pooling"),
    "t1_only": ("voxel_fusion", {"sequences": ["t1"]}, {}, "(b) T1 channel only"),
    "fs_only": ("voxel_fusion", {"sequences": ["fs"]}, {}, "(b) FS channel only"),
    "late": ("voxel_fusion", {"fusion": "late"}, {}, "(c) one per-voxel MLP per sequence, fused after pooling"),
    "early_conv3": ("voxel_fusion", {"conv3": 16}, {}, "(a) + one 3x3x3 conv after the per-voxel MLP"),
    "early_morph": ("voxel_fusion", {"morph": 3}, {}, "(a) + fixed in-plane grey closing (T1) / opening (FS), 3x3"),
    "early_topk": ("voxel_fusion", {"pool": "topk"}, {}, "(a) with top-5% mean pooling"),
    # The morphology's controls: does the closing/opening help fusion, or FS alone?
    "fs_only_morph": ("voxel_fusion", {"sequences": ["fs"], "morph": 3}, {}, "(b) FS only + the 3x3 opening"),
    "late_morph": ("voxel_fusion", {"fusion": "late", "morph": 3}, {}, "(c) late fusion + the 3x3 closing/opening"),
    "early_morph_conv3": ("voxel_fusion", {"morph": 3, "conv3": 16}, {}, "(a) + morphology + one 3x3x3 conv"),
    # The demo augmentation's intensity affine is clipped to [0, 1]: the brightest FS voxels
    # (the lesions) saturate.  The same probes without it (geometry augmentation kept):
    "early_noint": ("voxel_fusion", {}, NO_INTENSITY, "(a), no intensity augmentation"),
    "t1_only_noint": ("voxel_fusion", {"sequences": ["t1"]}, NO_INTENSITY, "(b) T1 only, no intensity augmentation"),
    "fs_only_noint": ("voxel_fusion", {"sequences": ["fs"]}, NO_INTENSITY, "(b) FS only, no intensity augmentation"),
    "late_noint": ("voxel_fusion", {"fusion": "late"}, NO_INTENSITY, "(c) late fusion, no intensity augmentation"),
}


def build_data(work: Path, n: int) -> Path:
    """The masked demo dataset, as benchmarks/bench_demo_models.py builds it."""
    from distmsfa.data import PreprocessConfig, build_dataset
    from distmsfa.data.synthetic import generate_cohort
    from distmsfa.demo import DEMO_CROP, DEMO_ROI_MASK_MM, DEMO_SPACING_MM

    manifest = work / "cohort" / "manifest.csv"
    if not manifest.exists():
        generate_cohort(work / "cohort", n=n, seed=0, workers=2, progress=False)
    data = work / "data"
    if not (data / "index.parquet").exists():
        build_dataset(manifest, data, PreprocessConfig(target_spacing_mm=DEMO_SPACING_MM, crop_size=DEMO_CROP,
                                                       roi_mask_mm=DEMO_ROI_MASK_MM, seed=0),
                      address="serial", external_sites=("NHH",), progress=False)
    return data


def crop_features(t1: np.ndarray, fs: np.ndarray, roi: np.ndarray) -> tuple[list, list, list]:
    """tests/data/test_synthetic_complementarity.py's features, on one preprocessed crop (D, H, W)."""
    from scipy import ndimage

    a = ndimage.grey_closing(ndimage.median_filter(t1, size=(1, 3, 3)), size=(1, 5, 5))
    b = ndimage.grey_opening(ndimage.median_filter(fs, size=(1, 3, 3)), size=(1, 5, 5))
    ta = a[roi] / max(np.median(a[roi]), 1e-3)
    tb = b[roi] / max(np.median(b[roi]), 1e-3)
    dark, bright = ta < 0.65, tb > 2.5
    f_t1 = [dark.mean(), np.percentile(ta, 0.5), np.percentile(ta, 5)]
    f_fs = [bright.mean(), np.percentile(tb, 99.5), np.percentile(tb, 95)]
    both = np.minimum((1 - ta) / 0.4, (tb - 1) / 1.5)
    return f_t1, f_fs, [(dark & bright).mean(), np.percentile(both, 99.5)]


def feature_ceiling(data: Path, truth_csv: Path | None) -> dict:
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    index = pd.read_parquet(data / "index.parquet")
    feats = []
    for row in index.itertuples():
        pair = np.load(data / row.pair_path).astype(np.float32)
        roi = np.load(data / row.roi_path) > 0
        feats.append(crop_features(pair[0], pair[1], roi))
    x = {"t1": np.array([f[0] for f in feats]), "fs": np.array([f[1] for f in feats])}
    x["both"] = np.hstack([x["t1"], x["fs"], np.array([f[2] for f in feats])])
    labels = {"recorded": index.label.to_numpy()}
    if truth_csv is not None and truth_csv.exists():
        truth = pd.read_csv(truth_csv).set_index("case_id")
        if "true_label" in truth and set(index.case_id) <= set(truth.index):
            labels["true"] = truth.loc[index.case_id, "true_label"].to_numpy()
    internal = ~index.is_external.to_numpy()
    folds = index.fold.to_numpy()
    out: dict = {}
    for lname, y in labels.items():
        for fname, xx in x.items():
            def clf():
                return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
            oof = np.full(len(y), np.nan)
            per_fold = []
            for k in sorted(set(folds[internal])):
                te = internal & (folds == k)
                tr = internal & (folds != k)
                oof[te] = clf().fit(xx[tr], y[tr]).predict_proba(xx[te])[:, 1]
                per_fold.append(float(roc_auc_score(y[te], oof[te])))
            ext = ~internal
            p_ext = clf().fit(xx[internal], y[internal]).predict_proba(xx[ext])[:, 1]
            out[f"{fname}/{lname}"] = {"mean_auc": float(np.mean(per_fold)), "std_auc": float(np.std(per_fold)),
                                       "per_fold": per_fold,
                                       "pooled_auc": float(roc_auc_score(y[internal], oof[internal])),
                                       "external_auc": float(roc_auc_score(y[ext], p_ext))}
    return out


def run_probe(data: Path, run_dir: Path, model: str, model_cfg: dict, train_over: dict, seed: int,
              epochs: int | None) -> dict:
    from distmsfa.training import run_cv

    if not (run_dir / "probe.json").exists():
        train = {**train_over, "model_cfg": model_cfg, "seed": seed}
        if epochs:  # a short run shortens the profile's warm-up, as `distmsfa demo --epochs` does
            from distmsfa.training.profiles import get_profile

            warmup = int(get_profile("demo")["train"].get("warmup_epochs", 0))
            train.update(epochs=epochs, warmup_epochs=min(warmup, epochs - 1))
        t0 = time.time()
        res = run_cv(data, model, profile="demo", out=run_dir, plain=True, progress=False,
                     resume=(run_dir / "run.json").exists(), overrides={"train": train})
        s = res.summary
        est = {k: {"mean_auc": v["mean"]["auc"], "std_auc": v["std"]["auc"], "pooled_auc": v["pooled_oof"]["auc"],
                   "label": v.get("label")} for k, v in s["estimates"].items()}
        epoch_s = [h for d in res.histories.values() for h in d["epoch_time_s"].tolist()]
        ext = s.get("external", {})
        rec = {"model": model, "model_cfg": model_cfg, "train_overrides": train_over, "selection": s["selection"], "estimate": s["estimate"],
               "honest": est[s["estimate"]], "estimates": est,
               "external_ensemble_auc": ext.get("ensemble", {}).get("auc"),
               "external_mean_auc": ext.get("mean", {}).get("auc"),
               "mean_epoch_s": float(np.mean(epoch_s)), "epochs": int(max(len(d) for d in res.histories.values())),
               "wall_s": time.time() - t0, "load_avg_at_end": os.getloadavg(), "run_dir": str(run_dir)}
        (run_dir / "probe.json").write_text(json.dumps(rec, indent=2))
    return json.loads((run_dir / "probe.json").read_text())


def rim_check(data: Path, fold: int = 0, epochs: int = 40, cases: dict | None = None) -> dict:
    """Fold ``fold`` of the early probe in a bare loop (Adam 1e-3, batch 4, no schedule): no
    augmentation, the demo profile's geometry augmentation with the ROI rim pooled
    (``erode=0``), and with it excluded (``erode=1``): the warp's rim artefact, isolated.
    ``cases``: ``{name: (AugmentConfig mapping, erode)}`` to run instead of these three."""
    import pandas as pd
    import torch
    from sklearn.metrics import roc_auc_score

    from distmsfa.models import create_model
    from distmsfa.training.augment import augment_batch
    from distmsfa.training.config import AugmentConfig

    idx = pd.read_parquet(data / "index.parquet")
    idx = idx[~idx.is_external]
    x = torch.tensor(np.stack([np.load(data / p).astype(np.float32) for p in idx.pair_path]))
    y = torch.tensor(idx.label.to_numpy()).float()
    tr = torch.tensor((idx.fold != fold).to_numpy())
    geometry = {"translate": 0.1, "rotate_deg": 15.0, "scale": 0.15, "intensity_scale": 0.0, "intensity_shift": 0.0}
    cases = cases or {"no_augmentation": ({"enabled": False}, 1), "geometry_rim_pooled": (geometry, 0),
                      "geometry_rim_excluded": (geometry, 1)}
    out = {}
    for name, (aug, erode) in cases.items():
        torch.manual_seed(0)
        acfg = AugmentConfig.from_dict(aug)
        m = create_model("voxel_fusion", erode=erode)
        opt = torch.optim.Adam(m.parameters(), lr=1e-3, weight_decay=1e-4)
        xt, yt = x[tr], y[tr]
        for ep in range(epochs):
            m.train()
            perm = torch.randperm(len(xt))
            for step, i in enumerate(range(0, len(xt), 4)):
                b = perm[i:i + 4]
                loss, _ = m.loss(m(augment_batch(xt[b], acfg, 0, ep, step)), yt[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
        m.eval()
        with torch.no_grad():
            p = m.predict_proba(m(x[~tr])).numpy()
        out[name] = {"last_epoch_auc": float(roc_auc_score(y[~tr].numpy(), p)), "augment": aug, "erode": erode}
        print(f"rim check fold {fold} {name:22s} AUC {out[name]['last_epoch_auc']:.3f}", flush=True)
    return {"fold": fold, "epochs": epochs, "what": rim_check.__doc__.split(chr(10))[0], "runs": out}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="benchmarks/out/demo_probe")
    ap.add_argument("--data", default=None, help="a preprocessed masked demo dataset to reuse (default: build one in --work)")
    ap.add_argument("--truth", default=None, help="the cohort's truth.csv (default: --work/cohort/truth.csv)")
    ap.add_argument("--n", type=int, default=120)
    ap.add_argument("--probes", default=",".join(PROBES), help=f"subset of {', '.join(PROBES)}")
    ap.add_argument("--extra", default="{}",
                    help='JSON {"name": ["model", {model_cfg}, {train overrides}]} probes beyond the built-in ones')
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=None, help="override the demo profile's epochs (default: the profile's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-ceiling", action="store_true")
    ap.add_argument("--rim-check", default=None, help="a JSON file: run rim_check (fold 0) into it, or reuse it")
    ap.add_argument("--train-only", action="store_true")
    ap.add_argument("--out", default="benchmarks/out/bench_demo_probe.json")
    args = ap.parse_args()

    import torch

    from distmsfa.training.profiles import get_profile

    torch.set_num_threads(args.threads)
    work = Path(args.work).resolve()
    t0 = time.time()
    data = Path(args.data).resolve() if args.data else build_data(work, args.n)
    probes = dict(PROBES)
    probes.update({k: (v[0], v[1], v[2] if len(v) > 2 else {}, "extra") for k, v in json.loads(args.extra).items()})
    tag = f"s{args.seed}" + (f"-e{args.epochs}" if args.epochs else "")
    names = [p for p in args.probes.split(",") if p]
    results = {}
    for name in names:
        model, cfg, train_over, _ = probes[name]
        results[name] = run_probe(data, work / "runs" / tag / name, model, cfg, train_over, args.seed, args.epochs)
        r = results[name]
        print(f"{name:14s} honest {r['honest']['mean_auc']:.3f}±{r['honest']['std_auc']:.3f} "
              f"best-epoch(optimistic) {r['estimates']['best_val']['mean_auc']:.3f} ext {r['external_ensemble_auc']:.3f} "
              f"{r['mean_epoch_s']:.2f}s/epoch", flush=True)
    if args.train_only:
        return
    # Collect every finished probe of this tag (also those run by other processes).
    for d in sorted((work / "runs" / tag).glob("*/probe.json")):
        results.setdefault(d.parent.name, json.loads(d.read_text()))
    truth = Path(args.truth) if args.truth else work / "cohort" / "truth.csv"
    ceiling = None if args.skip_ceiling else feature_ceiling(data, truth)
    rim = None
    if args.rim_check:
        rp = Path(args.rim_check)
        if not rp.exists():
            rp.write_text(json.dumps(rim_check(data), indent=2))
        rim = json.loads(rp.read_text())
    result = {
        "what": "issue 15 probes on the masked demo dataset (120 cases, cohort seed 0, TAH 4-fold CV + NHH external, "
                "8x48x64 at 5x2.5x2.5 mm, roi_mask_mm 7.5): logistic-regression feature ceiling on the CV folds; "
                "probe nets cross-validated with the demo profile (plain path): honest = the profile's selection "
                "(last epoch), best_val = best validation epoch (OPTIMISTIC: chosen on the scored cases)",
        "data": str(data), "data_fingerprint": json.loads((data / "fingerprint.json").read_text()).get("fingerprint"),
        "profile_train": get_profile("demo")["train"], "seed": args.seed, "epochs_override": args.epochs,
        "feature_ceiling": ceiling, "rim_check": rim,
        "probes": {k: {**v, "what": probes.get(k, ("", {}, {}, "extra"))[3]} for k, v in results.items()},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "threads": args.threads, "load_avg_at_end": os.getloadavg(),
                    "note": "2-core machine shared with other jobs under nice 10: wall times are pessimistic"},
        "wall_s_this_call": time.time() - t0,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=float))
    if ceiling:
        for k, v in ceiling.items():
            print(f"ceiling {k:14s} CV {v['mean_auc']:.3f}±{v['std_auc']:.3f} pooled {v['pooled_auc']:.3f} ext {v['external_auc']:.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
