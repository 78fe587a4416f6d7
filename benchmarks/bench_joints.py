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

Phases (one process each, so the two models can train in parallel)::

    python benchmarks/bench_joints.py --phase train --models msfanet --folds 0,1
    python benchmarks/bench_joints.py --phase train --models msfanet_mil --folds 0,1
    python benchmarks/bench_joints.py --phase collect --folds 0,1 \\
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
DEFAULT_TRAIN = {"model_cfg": {"preset": "demo"}, "lr_schedule": "cosine", "warmup_epochs": 2, "epochs": 8}


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phase", choices=("train", "collect"), required=True)
    ap.add_argument("--work", default="/tmp/mil")
    ap.add_argument("--data", default="/tmp/demo15/data")
    ap.add_argument("--cohort", default="/tmp/demo15/cohort")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--folds", default="0,1")
    ap.add_argument("--train", default=json.dumps(DEFAULT_TRAIN), help="JSON TrainConfig overrides on the cpu profile")
    ap.add_argument("--threads", type=int, default=1)
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
    from joints_collect import collect  # noqa: E402  (benchmarks/joints_collect.py)

    t0 = time.time()
    result = collect(data, cohort, work, models, folds)
    import torch

    result.update({
        "train_overrides": train_cfg, "folds": folds, "data": str(data), "cohort": str(cohort),
        "reused_data_check": "fingerprint params, external site and cohort n/seed/profile match the demo settings"
        if str(data) != str(work / "data") else "built here",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "threads": args.threads, "load_avg_at_end": os.getloadavg(),
                    "note": "2-core machine shared with other jobs: wall times are pessimistic"},
        "collect_wall_s": round(time.time() - t0, 1),
    })
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("patient", "joint") if k in result}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
