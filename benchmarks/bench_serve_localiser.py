"""The cost of serving without an ROI (issue 13): the Preprocess stage's work per case with the
ROI given (label map) vs predicted by the bundle's localiser (vs predicted + the label map
returned on the T1 grid), and the Grad-CAM rendering with and without the per-joint evidence.
Also, per case, how far the crop centred on the predicted ROI lies from the crop centred on the
manual one (mm), and the probability change.

In process, the exact functions the deployments run (``prepare_upload``, ``gradcam_outputs``);
Serve's own per-request cost is the same for both and is measured by ``bench_serve.py``.
Rounds alternate given / predicted on the same cases so a shared machine's drifting load hits
both alike; ratios are medians within this one run.  A tiny bundle (1-epoch plain CV, crop
8 x 32 x 32 at 4 mm) and a localiser trained here (default config grid, 30 epochs, on
``--n-train`` synthetic cases of another seed than the scored ones).

    python benchmarks/bench_serve_localiser.py [--n 8] [--rounds 3] [--out benchmarks/out/serve_localiser.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "serving"))


def _upload(row: dict, with_roi: bool):
    from distmsfa.serving.uploads import MultipartCollector, encode_multipart

    parts = {"t1": ("t1.nii.gz", Path(row["t1"]).read_bytes()), "fs": ("fs.nii.gz", Path(row["fs"]).read_bytes()),
             "case_id": row["case_id"]}
    if with_roi:
        parts["roi"] = ("roi.nii.gz", Path(row["roi"]).read_bytes())
    body, ctype = encode_multipart(parts)
    c = MultipartCollector(ctype)
    c.feed(body)
    return c.finish()


def _crop_centre(facts: dict) -> np.ndarray:
    d = np.asarray(facts["crop_direction"], float).reshape(3, 3)
    size_xyz = np.asarray(facts["crop_size_dhw"], float)[::-1]
    sp_xyz = np.asarray(facts["spacing_dhw_mm"], float)[::-1]
    return np.asarray(facts["crop_origin_mm"], float) + d @ ((size_xyz - 1) / 2 * sp_xyz)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8, help="scored cases")
    ap.add_argument("--n-train", type=int, default=12, help="localiser training cases (another seed)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "serve_localiser.json"))
    args = ap.parse_args()

    import pandas as pd
    import torch

    from _bundle import make_bundle
    from distmsfa.bundle import load_bundle
    from distmsfa.data.synthetic import generate_cohort
    from distmsfa.io.manifest import load_manifest
    from distmsfa.localiser import (LocaliserConfig, LocaliserTrainConfig, attach_localiser, bundle_localiser, fit,
                                    load_cases, save_localiser)
    from distmsfa.serving.heatmaps import gradcam_outputs, render_gradcam
    from distmsfa.serving.service import prepare_upload

    torch.set_num_threads(1)  # a Preprocess replica has 1 CPU
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-loc-"))
    t0 = time.perf_counter()
    bundle = make_bundle(tmp / "b")
    train_m = generate_cohort(tmp / "train", n=args.n_train, seed=21, progress=False)
    cfg = LocaliserConfig()
    cases, _ = load_cases(load_manifest(train_m).cases, cfg)
    loc, _ = fit(cases, cfg, LocaliserTrainConfig(epochs=args.epochs, seed=0))
    attach_localiser(bundle, save_localiser(loc, tmp / "L"))
    setup_s = time.perf_counter() - t0
    loc = bundle_localiser(bundle)
    pred = load_bundle(bundle, device="cpu")
    m = generate_cohort(tmp / "score", n=args.n, seed=5, progress=False)
    rows = pd.read_csv(m).to_dict("records")
    for r in rows:
        for k in ("t1", "fs", "roi"):
            r[k] = str(Path(m).parent / r[k])

    def prep(row, mode):
        up = _upload(row, mode == "given")
        return prepare_upload(pred, up, max_unzipped_bytes=1 << 30, max_entries=5000, localiser=loc,
                              return_roi=mode == "predicted+return_roi")

    modes = ("given", "predicted", "predicted+return_roi")
    times: dict[str, list[float]] = {k: [] for k in modes}
    for r in rows[:2]:  # warm-up
        for mode in modes:
            prep(r, mode)
    refused = []
    for _ in range(args.rounds):
        for mode in modes:
            for r in rows:
                t = time.perf_counter()
                try:
                    prep(r, mode)
                except Exception as exc:  # noqa: BLE001 - an implausible prediction is recorded
                    refused.append({"case_id": r["case_id"], "mode": mode, "error": str(exc)[:200]})
                    continue
                times[mode].append((time.perf_counter() - t) * 1000.0)

    per_case = []
    cam_plain, cam_ev = [], []
    for r in rows:
        try:
            g, p = prep(r, "given"), prep(r, "predicted")
        except Exception:  # noqa: BLE001
            continue
        probs = [float(pred.predict(x["pair"][None].astype(np.float32))["prob"][0]) for x in (g, p)]
        per_case.append({"case_id": r["case_id"], "crop_centre_shift_mm": float(np.linalg.norm(
            _crop_centre(g["facts"]) - _crop_centre(p["facts"]))), "prob_given": probs[0], "prob_predicted": probs[1]})
        maps = {k: v[0] for k, v in pred.gradcam(p["pair"][None].astype(np.float32)).items()}
        for _ in range(args.rounds):
            t = time.perf_counter()
            render_gradcam(maps, p["pair"], p["facts"], p["t1_geometry"])
            cam_plain.append((time.perf_counter() - t) * 1000.0)
            t = time.perf_counter()
            gradcam_outputs(maps, p["pair"], p["facts"], p["t1_geometry"], p["roi_crop"], p["evidence_note"])
            cam_ev.append((time.perf_counter() - t) * 1000.0)

    med = {k: float(np.median(v)) if v else None for k, v in times.items()}
    shifts = [c["crop_centre_shift_mm"] for c in per_case]
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_avg": os.getloadavg(),
                    "torch_threads": 1},
        "how": "in process, the Preprocess deployment's functions; rounds alternate modes over the same cases; "
               "medians in ms; tiny bundle (crop 8x32x32 at 4 mm), default LocaliserConfig grid (8x32x32 at 10x8x8 mm)",
        "n_cases": len(rows), "rounds": args.rounds, "localiser_epochs": args.epochs, "n_train": args.n_train,
        "setup_s": setup_s,
        "prepare_ms_median": med,
        "predicted_over_given": (med["predicted"] / med["given"]) if med["given"] and med["predicted"] else None,
        "return_roi_extra_ms": (med["predicted+return_roi"] - med["predicted"])
        if med["predicted+return_roi"] and med["predicted"] else None,
        "render_ms_median": {"gradcam": float(np.median(cam_plain)) if cam_plain else None,
                             "gradcam+joint_evidence": float(np.median(cam_ev)) if cam_ev else None},
        "crop_centre_shift_mm": {"mean": float(np.mean(shifts)) if shifts else None,
                                 "max": float(np.max(shifts)) if shifts else None},
        "per_case": per_case, "refused": refused,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("prepare_ms_median", "predicted_over_given", "return_roi_extra_ms",
                                             "render_ms_median", "crop_centre_shift_mm")}, indent=1))
    print(f"written {out}")


if __name__ == "__main__":
    main()
