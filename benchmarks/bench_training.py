"""Training benchmarks (issue 5), JSON out; each pair is measured in one run on one machine.

(a) Ray path vs plain loop: per-worker training samples/s of the same model, data and
    settings (median over epochs >= 1), and their ratio (goal >= 0.95).
(b) Fixed cost of starting a fold on Ray: submit -> first training batch in the worker
    (goal < 15 s), with its breakdown from the fold's timeline.jsonl.
(c) The data path alone: samples/s and MB/s that Ray Data delivers to one worker with no
    model (materialized in the object store, and streamed from disk), against what the
    model consumes (from (a)); plus the plain loader alone for reference.

    python benchmarks/bench_training.py --out bench_training.json            # CPU here
    python benchmarks/bench_training.py --device cuda --preset default \
        --shape 24,224,320 --batch-size 6 --out bench_training_gpu.json      # a GPU machine
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_dataset(root: Path, n: int, shape: tuple[int, int, int], seed: int = 0) -> Path:
    """n random cases (2, D, H, W) float16 through the dataset contract, 2 folds, no external site."""
    from distmsfa.data.index import save_array, write_index

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        x = rng.random((2, *shape), dtype=np.float32).astype(np.float16)
        case = f"b{i:04d}"
        sha = save_array(root, f"pairs/{case}.npy", x)
        rows.append({"case_id": case, "patient_id": f"p{i}", "label": i % 2, "site": "A", "fold": (i // 2) % 2,
                     "is_external": False, "shape": [2, *shape], "spacing_mm": [1.0, 1.0, 1.0],
                     "crop_origin_mm": [0.0, 0.0, 0.0], "crop_size_mm": [float(s) for s in shape],
                     "crop_direction": [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0], "source_sha256": "{}", "fingerprint": "bench",
                     "pair_path": f"pairs/{case}.npy", "roi_path": "", "pair_sha256": sha})
    write_index(root, pd.DataFrame(rows))
    return root


def data_only(root: str, train_rows: list[dict], val_rows: list[dict], batch_size: int, epochs: int,
              materialize: bool) -> list[dict]:
    """Iterate the Ray Data training batches of ``epochs`` epochs in a worker, no model."""
    from distmsfa.training.ray_data import RaySource

    t0 = time.perf_counter()
    src = RaySource(root, pd.DataFrame(train_rows), pd.DataFrame(val_rows), batch_size, seed=0,
                    materialize_train=materialize, concurrency=2)
    out = [{"epoch": -1, "setup_s": time.perf_counter() - t0}]
    for e in range(epochs):
        t, n, nbytes, first = time.perf_counter(), 0, 0, None
        for b in src.train_batches(e):
            first = first if first is not None else time.perf_counter() - t
            n += len(b["case_id"])
            nbytes += b["x"].numel() * b["x"].element_size()
        dt = time.perf_counter() - t
        out.append({"epoch": e, "samples": n, "seconds": dt, "first_batch_s": first, "samples_per_s": n / dt,
                    "MB_per_s": nbytes / dt / 1e6})
    return out


def plain_data_only(root: str, train: pd.DataFrame, val: pd.DataFrame, batch_size: int, epochs: int) -> list[dict]:
    from distmsfa.training.batches import PlainSource

    src = PlainSource(root, train, val, batch_size, seed=0)
    out = []
    for e in range(epochs):
        t, n, nbytes = time.perf_counter(), 0, 0
        for b in src.train_batches(e):
            n += len(b["case_id"])
            nbytes += b["x"].nbytes
        dt = time.perf_counter() - t
        out.append({"epoch": e, "samples": n, "seconds": dt, "samples_per_s": n / dt, "MB_per_s": nbytes / dt / 1e6})
    return out


def _median_rate(hist: pd.DataFrame) -> float:
    h = hist[hist["epoch"] >= 1] if len(hist) > 1 else hist
    return float(statistics.median(h["train_samples_per_s"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--model", default="msfanet")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--shape", default="8,48,64", help="D,H,W of the cases the model trains on")
    ap.add_argument("--data-shape", default="24,224,320", help="D,H,W of the cases for the data-only benchmark (c)")
    ap.add_argument("--n", type=int, default=48, help="cases (2 folds: half train, half validation per fold)")
    ap.add_argument("--batch-size", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads in both paths (1: a fold's worker reserves one CPU; more oversubscribes a small box)")
    ap.add_argument("--address", default=None)
    ap.add_argument("--out", default="benchmarks/out/bench_training.json")
    args = ap.parse_args()

    import ray
    import torch

    from distmsfa.training.batches import training_rows
    from distmsfa.training.cv import _rows, run_cv
    from distmsfa.data.index import read_index

    shape = tuple(int(v) for v in args.shape.split(","))
    dshape = tuple(int(v) for v in args.data_shape.split(","))
    threads = args.threads
    tmp = Path(tempfile.mkdtemp(prefix="bench-training-"))
    model_data = write_dataset(tmp / "model_data", args.n, shape)
    ov = {"train": {"epochs": args.epochs, "batch_size": args.batch_size, "num_threads": threads,
                    "model_cfg": {"preset": args.preset}, "precision": "auto" if args.device == "cuda" else "fp32"},
          "cv": {"gpus_per_fold": 1.0, "cpus_per_fold": 1.0}}
    result: dict = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                                "ray": ray.__version__, "device": args.device,
                                "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
                    "settings": vars(args) | {"threads": threads}}

    if args.address:
        ray.init(address=args.address, log_to_driver=False)
    else:
        ray.init(num_cpus=max(4, os.cpu_count() or 1), log_to_driver=False)

    # (a) + (b): the same fold, plain then Ray
    plain = run_cv(model_data, args.model, profile="cpu", folds=[0], out=tmp / "plain", plain=True, overrides=ov,
                   progress=False)
    t_submit = time.time()
    viaray = run_cv(model_data, args.model, profile="cpu", folds=[0], out=tmp / "ray", overrides=ov, progress=False)
    r_plain, r_ray = _median_rate(plain.histories[0]), _median_rate(viaray.histories[0])
    result["a_throughput"] = {"plain_samples_per_s": r_plain, "ray_samples_per_s": r_ray, "ratio": r_ray / r_plain,
                              "goal_ratio": 0.95,
                              "plain_epoch_rates": list(plain.histories[0]["train_samples_per_s"]),
                              "ray_epoch_rates": list(viaray.histories[0]["train_samples_per_s"])}
    tl = [json.loads(x) for x in (tmp / "ray" / "folds" / "fold0" / "timeline.jsonl").read_text(encoding="utf-8").splitlines()]
    ev = {}
    for e in tl:
        ev.setdefault(e["event"], e["t"])
    result["b_fold_start"] = {"submit_to_first_batch_s": ev["first_batch"] - ev["submit"], "goal_s": 15.0,
                              "breakdown_s": {k: round(v - ev["submit"], 2) for k, v in ev.items()},
                              "run_cv_wall_s": time.time() - t_submit}

    # (c): the data path alone at the data shape
    data_root = write_dataset(tmp / "data_only", args.n, dshape, seed=1)
    train, val = training_rows(read_index(data_root), 0)
    task = ray.remote(num_cpus=1)(data_only)
    per_case_mb = 2 * int(np.prod(dshape)) * 2 / 1e6
    c = {"case_MB": per_case_mb, "cases_per_epoch": len(train)}
    for mode, mat in (("materialized", True), ("streamed", False)):
        runs = ray.get(task.remote(str(data_root), _rows(train), _rows(val), args.batch_size, 3, mat))
        steady = [r for r in runs if r["epoch"] >= 1]
        c[mode] = {"setup_s": runs[0]["setup_s"], "epochs": runs[1:],
                   "samples_per_s": statistics.median(r["samples_per_s"] for r in steady),
                   "MB_per_s": statistics.median(r["MB_per_s"] for r in steady)}
    pl = plain_data_only(str(data_root), train, val, args.batch_size, 3)
    c["plain_loader"] = {"samples_per_s": statistics.median(r["samples_per_s"] for r in pl[1:]),
                         "MB_per_s": statistics.median(r["MB_per_s"] for r in pl[1:])}
    model_case_mb = 2 * int(np.prod(shape)) * 2 / 1e6
    c["model_consumes"] = {"samples_per_s": r_ray, "MB_per_s_at_model_shape": r_ray * model_case_mb,
                           "note": "the model's rate is at --shape; compare MB/s (GPU reference: about 2 GB/s)"}
    result["c_data_path"] = c
    ray.shutdown()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({"a_ratio": result["a_throughput"]["ratio"],
                      "b_submit_to_first_batch_s": result["b_fold_start"]["submit_to_first_batch_s"],
                      "c_materialized_MB_per_s": c["materialized"]["MB_per_s"],
                      "c_streamed_MB_per_s": c["streamed"]["MB_per_s"]}, indent=2))


if __name__ == "__main__":
    main()
