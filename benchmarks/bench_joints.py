"""Per-joint scores on the demo cohort (issue 13): whole-crop MSFANet vs per-joint MIL MSFANet.

For each model (``msfanet``: whole crop; ``msfanet_mil``: each joint's half, shared weights,
MIL-pooled) a patient-grouped CV on the demo dataset (plain path, ``cpu`` profile plus
``--train`` overrides, the honest ``inner`` selection).  Then, with each fold's selected
checkpoint (``best.pt``) on that fold's out-of-fold validation cases:

* patient AUC of each model (the CV's honest estimate, mean over folds and pooled OOF);
* per-joint AUC of the MIL model's joint scores (``joint_logits``: [right, left]) against the
  cohort's per-joint truth (``distmsfa.data.synthetic.joint_truth``), pooled over both joints
  of every OOF case;
* the whole-crop model's Grad-CAM left/right split (``distmsfa.localiser.evidence``) turned into
  per-joint scores ``p(patient) x share(joint)`` (share of the joint's energy among the two
  joints, per branch and averaged over the branches) and measured the same way;
* the same per-joint AUC restricted to the truly positive patients (which joint is it?).

Phases (one process each, so the two models can train in parallel; the kept results)::

    python benchmarks/bench_joints.py --phase train --models msfanet
    python benchmarks/bench_joints.py --phase train --models msfanet_mil
    python benchmarks/bench_joints.py --phase collect --checkpoints best,last \\
        --out benchmarks/results/joints_cpu_2core.json

``--data``/``--cohort`` reuse a preprocessed demo dataset and its cohort when their fingerprint
matches the demo settings (checked); otherwise both are built in ``--work``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

MODELS = ("msfanet", "msfanet_mil")
DEFAULT_TRAIN = {"model_cfg": {"preset": "demo"}, "lr_schedule": "cosine", "warmup_epochs": 2, "epochs": 60}


def demo_params() -> dict:
    from distmsfa.data import PreprocessConfig
    from distmsfa.demo import DEMO_CROP, DEMO_SPACING_MM

    return {"cfg": PreprocessConfig(target_spacing_mm=DEMO_SPACING_MM, crop_size=DEMO_CROP, seed=0),
            "n": 120, "seed": 0, "external_sites": ["NHH"]}


def check_reuse(data: Path, cohort: Path) -> str | None:
    """Why ``data``/``cohort`` are not the demo dataset (None: they are)."""
    p = demo_params()
    fp_file, co_file = data / "fingerprint.json", cohort / "cohort.json"
    if not fp_file.exists() or not co_file.exists():
        return "missing fingerprint.json / cohort.json"
    fp, co = json.loads(fp_file.read_text()), json.loads(co_file.read_text())
    cfg = p["cfg"]
    want = {"target_spacing_mm": list(cfg.target_spacing_mm), "crop_size": list(cfg.crop_size),
            "orientation": cfg.orientation, "seed": cfg.seed, "n_folds": cfg.n_folds}
    got = {k: fp["params"].get(k) for k in want}
    if got != want:
        return f"preprocessing params differ: {got} != {want}"
    if fp.get("folds", {}).get("external_sites") != p["external_sites"]:
        return f"external sites differ: {fp.get('folds')}"
    if (co.get("n"), co.get("seed"), co.get("config", {}).get("profile")) != (p["n"], p["seed"], "demo"):
        return f"cohort differs: n={co.get('n')} seed={co.get('seed')} profile={co.get('config', {}).get('profile')}"
    return None


def build_data(work: Path) -> tuple[Path, Path]:
    from distmsfa.data import build_dataset
    from distmsfa.data.synthetic import generate_cohort

    p = demo_params()
    cohort = work / "cohort"
    if not (cohort / "manifest.csv").exists():
        generate_cohort(cohort, n=p["n"], seed=p["seed"], workers=2, progress=False)
    data = work / "data"
    if not (data / "index.parquet").exists():
        build_dataset(cohort / "manifest.csv", data, p["cfg"], address="serial",
                      external_sites=tuple(p["external_sites"]), progress=False)
    return data, cohort


def train(data: Path, work: Path, model: str, folds: list[int], train_cfg: dict, threads: int) -> None:
    import torch

    from distmsfa.training import run_cv

    torch.set_num_threads(threads)
    for fold in folds:
        run_dir = work / "runs" / model / f"f{fold}"
        if (run_dir / "summary.json").exists():
            continue
        t0 = time.time()
        run_cv(data, model, profile="cpu", out=run_dir, plain=True, progress=False,
               resume=(run_dir / "run.json").exists(), folds=[fold], overrides={"train": train_cfg})
        (run_dir / "timing.json").write_text(json.dumps({"wall_s": time.time() - t0, "load_avg": os.getloadavg()}))


def _fold_model(run_dir: Path, model: str, fold: int, checkpoint: str = "best"):
    """A fold's checkpoint as an eval-mode model: ``best`` (best.pt, the selection rule's epoch)
    or ``last`` (last.pt, the last epoch: also honest, no selection)."""
    import torch

    from distmsfa.models import create_model
    from distmsfa.training.loop import load_state

    tcfg = json.loads((run_dir / "run.json").read_text())["train"]
    state = load_state(str(run_dir / "folds" / f"fold{fold}" / f"{checkpoint}.pt"))
    m = create_model(model, **dict(tcfg.get("model_cfg") or {}))
    m.load_state_dict(state["model"], strict=True)
    torch.manual_seed(0)
    return m.eval(), int(state["epoch"])


def score_fold(data: Path, run_dir: Path, model: str, fold: int, index, checkpoint: str = "best",
               batch: int = 8) -> list[dict]:
    """Per OOF case of ``fold``: patient probability and per-joint scores (right, left).

    MIL model: sigmoid of ``joint_logits``.  Whole-crop model: its Grad-CAM maps' joint shares
    (``joint_evidence``), per branch and averaged over branches, times the patient probability."""
    import numpy as np
    import torch

    from distmsfa.data.index import load_array
    from distmsfa.localiser.evidence import joint_evidence
    from distmsfa.models.gradcam import gradcam

    m, epoch = _fold_model(run_dir, model, fold, checkpoint)
    rows = index[(index["fold"] == fold) & (~index["is_external"].astype(bool))]
    out = []
    for i in range(0, len(rows), batch):
        part = rows.iloc[i:i + batch]
        x = torch.from_numpy(np.stack([load_array(data, r.pair_path) for r in part.itertuples()])).float()
        rois = np.stack([load_array(data, r.roi_path) for r in part.itertuples()])
        with torch.no_grad():
            prob = m.predict_proba(m(x)).numpy()
            joints = torch.sigmoid(m.joint_logits(x)).numpy() if hasattr(m, "joint_logits") else None
        ev = joint_evidence(gradcam(m, x), rois)
        for k, r in enumerate(part.itertuples()):
            rec = {"case_id": r.case_id, "label": int(r.label), "fold": fold, "epoch": epoch, "prob": float(prob[k])}
            if joints is not None:
                rec["mil_right"], rec["mil_left"] = (float(v) for v in joints[k])
            shares = {side: {b: e[side] for b, e in ev[k].items()} for side in ("left", "right")}
            for b in ev[k]:
                tot = shares["left"][b] + shares["right"][b]
                for side in ("left", "right"):
                    rec[f"cam_{b}_{side}"] = float(prob[k]) * (shares[side][b] / tot if tot > 0 else 0.5)
            for side in ("left", "right"):
                vals = [rec[f"cam_{b}_{side}"] for b in ev[k]]
                rec[f"cam_mean_{side}"] = float(np.mean(vals))
            out.append(rec)
    return out


def joint_aucs(df, truth, score: str) -> dict:
    """AUC of per-joint scores ``<score>_left`` / ``<score>_right`` against the per-joint truth:
    over all OOF joints, and within the truly axSpA patients (which joint?)."""
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    m = df.merge(truth, on="case_id")
    long = pd.concat([pd.DataFrame({"case_id": m["case_id"], "side": s, "score": m[f"{score}_{s}"],
                                    "truth": m[s], "axspa": m["true_label"]}) for s in ("left", "right")])
    res = {"n_joints": int(len(long)), "n_positive_joints": int(long["truth"].sum())}
    res["auc_all_joints"] = float(roc_auc_score(long["truth"], long["score"])) if long["truth"].nunique() == 2 else None
    pos = long[long["axspa"] == 1]
    res["auc_within_axspa_patients"] = (float(roc_auc_score(pos["truth"], pos["score"]))
                                        if pos["truth"].nunique() == 2 else None)
    res["n_joints_within_axspa"] = int(len(pos))
    return res


def _joint_block(scored: dict, truth, index, models: list[str], patient: dict | None) -> dict:
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from distmsfa.evaluation.stats import delong_paired_test

    joint, oof, tests = {}, {}, {}
    for model, df in scored.items():
        if df.empty:
            continue
        m = df.merge(truth, on="case_id")
        oof[model] = {"n": int(len(m)), "auc_recorded_label": float(roc_auc_score(m["label"], m["prob"])),
                      "auc_true_label": float(roc_auc_score(m["true_label"], m["prob"])),
                      "epochs": {str(k): int(v) for k, v in df.groupby("fold")["epoch"].first().items()}}
        branches = sorted({c[4:-5] for c in df.columns if c.startswith("cam_") and c.endswith("_left")})
        joint[model] = {f"gradcam_{b}": joint_aucs(df, truth, f"cam_{b}") for b in branches}
        if "mil_left" in df:
            joint[model]["mil_joint_logits"] = joint_aucs(df, truth, "mil")
        joint[model]["patient_prob_for_both_joints"] = joint_aucs(
            df.assign(p_left=df["prob"], p_right=df["prob"]), truth, "p")
    if len(oof) == 2:
        a, b = models
        m = scored[a][["case_id", "prob"]].merge(scored[b][["case_id", "prob"]], on="case_id", suffixes=("_a", "_b"))
        m = m.merge(index[["case_id", "label"]].astype({"label": int}), on="case_id")
        auc_a, auc_b, z, p = delong_paired_test(m["label"], m["prob_a"].to_numpy(), m["prob_b"].to_numpy())
        tests["patient_delong_recorded_label"] = {"a": a, "b": b, "auc_a": auc_a, "auc_b": auc_b, "z": z, "p": p,
                                                  "n": int(len(m))}
    return {"patient_oof": oof, "joint": joint, "tests": tests}


def collect(data: Path, cohort: Path, work: Path, models: list[str], folds: list[int],
            checkpoints: tuple[str, ...] = ("best",)) -> dict:
    import sys

    import pandas as pd

    from distmsfa.data.index import read_index
    from distmsfa.data.synthetic.joints import joint_truth

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_demo_models import collect as cv_summary  # the same CV summary as the demo benchmark

    index = read_index(data)
    truth = joint_truth(cohort)
    patient, done = {}, {}
    for model in models:
        summary, _ = cv_summary(work / "runs" / model, folds)
        patient[model] = summary
        done[model] = summary.get("folds_done", [])
    per_ckpt = {}
    for ckpt in checkpoints:
        scored = {}
        for model in models:
            parts = []
            for k in done[model]:  # cached per fold, so a collect while folds still train is not wasted
                cache = work / "scores" / f"{model}_f{k}_{ckpt}.csv"
                if not cache.exists():
                    cache.parent.mkdir(parents=True, exist_ok=True)
                    pd.DataFrame(score_fold(data, work / "runs" / model / f"f{k}", model, k, index, ckpt)).to_csv(
                        cache, index=False)
                parts.append(pd.read_csv(cache, dtype={"case_id": str}))
            scored[model] = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
            scored[model].to_csv(work / f"joint_scores_{model}_{ckpt}.csv", index=False)
        per_ckpt[ckpt] = _joint_block(scored, truth, index, models, patient)
    counts = {"cases": int(len(truth)), "axspa": int(truth["true_label"].sum()),
              "left_positive": int(truth["left"].sum()), "right_positive": int(truth["right"].sum()),
              "bilateral": int(((truth["left"] + truth["right"]) == 2).sum()),
              "axspa_without_joint": int(((truth["true_label"] == 1) & ((truth["left"] + truth["right"]) == 0)).sum())}
    return {
        "what": "demo cohort, patient-grouped CV (plain path, cpu profile + overrides). 'patient': the CV summary "
                "(honest = inner selection; best_val = optimistic). 'by_checkpoint': each fold's checkpoint "
                "(best = the inner-selected epoch, last = the last epoch; both honest) on its OOF cases: patient "
                "AUC and per-joint AUC against the synthetic per-joint truth (distmsfa.data.synthetic.joint_truth), "
                "over all OOF joints and within truly axSpA patients (which joint?). MIL: sigmoid(joint_logits). "
                "Grad-CAM: patient probability x the joint's share of the two joints' Grad-CAM energy (per branch; "
                "gradcam_mean = mean over branches). 'patient_prob_for_both_joints': the reference that knows no side.",
        "joint_truth_counts": counts, "patient": patient, "by_checkpoint": per_ckpt,
        "scores_csv": {m: [str(work / f"joint_scores_{m}_{c}.csv") for c in checkpoints] for m in models},
    }

def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phase", choices=("train", "collect"), required=True)
    ap.add_argument("--work", default="/tmp/mil")
    ap.add_argument("--data", default="/tmp/demo15/data")
    ap.add_argument("--cohort", default="/tmp/demo15/cohort")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--folds", default="0,1,2,3")
    ap.add_argument("--train", default=json.dumps(DEFAULT_TRAIN), help="JSON TrainConfig overrides on the cpu profile")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--checkpoints", default="best", help="collect: score these fold checkpoints (best,last)")
    ap.add_argument("--out", default="benchmarks/results/joints_cpu_2core.json")
    args = ap.parse_args()

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    data, cohort = Path(args.data), Path(args.cohort)
    why = check_reuse(data, cohort)
    if why is not None:
        print(f"not reusing {data}: {why}; building the demo dataset in {work}")
        data, cohort = build_data(work)
    folds = [int(f) for f in args.folds.split(",")]
    models = [m for m in args.models.split(",") if m]
    train_cfg = json.loads(args.train)
    if args.phase == "train":
        for m in models:
            train(data, work, m, folds, train_cfg, args.threads)
        return
    t0 = time.time()
    result = collect(data, cohort, work, models, folds, tuple(args.checkpoints.split(",")))
    import torch

    result.update({
        # what the folds were trained with (their run.json), not this call's --train
        "train_config": {m: json.loads((work / "runs" / m / f"f{folds[0]}" / "run.json").read_text())["train"]
                         for m in models if (work / "runs" / m / f"f{folds[0]}" / "run.json").exists()},
        "folds": folds, "data": str(data), "cohort": str(cohort),
        "reused_data_check": "fingerprint params, external site and cohort n/seed/profile match the demo settings"
        if str(data) != str(work / "data") else "built here",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "threads": args.threads, "load_avg_at_end": os.getloadavg(),
                    "note": "2-core machine shared with other jobs: wall times are pessimistic"},
        "collect_wall_s": round(time.time() - t0, 1),
    })
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    for ckpt, blk in result["by_checkpoint"].items():
        for model, v in blk["joint"].items():
            print(ckpt, model, json.dumps(blk["patient_oof"][model]),
                  {k: (round(x["auc_all_joints"], 3), round(x["auc_within_axspa_patients"], 3)) for k, x in v.items()})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
