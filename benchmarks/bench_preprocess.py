"""Preprocessing throughput (cases/s) for clinical-size pairs: serial vs Ray Data, one run.

Cases: T1 512x512x20 at 0.45x0.45x4 mm and FS 448x448x24 at 0.35x0.35x3 mm (coronal
slabs, FS on its own grid and centre), an ROI label map on the T1 grid, written as
.nii.gz with SimpleITK (geometric phantom, distmsfa.io.phantom).  The same manifest is
preprocessed (default PreprocessConfig: paper crop, cohort-median spacing) by
``build_dataset(address="serial")`` (one process, ITK's own threads) and through Ray
Data on a local Ray (one case per task, one CPU each); the ratio is measured in one run.

    python benchmarks/bench_preprocess.py [--cases 8] [--out benchmarks/out/bench_preprocess.json]
    (run inside tests/isolated.sh to keep the local Ray on loopback)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: Case sizes: "clinical" is the benchmark; "tiny" (small grids and crop) only checks that the
#: script runs end to end and writes its JSON (tests/test_benchmarks.py), its figures mean nothing.
SIZES = {
    "clinical": {"t1": dict(size=(512, 512, 20), spacing=(0.45, 0.45, 4.0)),
                 "fs": dict(size=(448, 448, 24), spacing=(0.35, 0.35, 3.0)), "crop": None},
    "tiny": {"t1": dict(size=(64, 48, 12), spacing=(4.0, 4.0, 8.0)),
             "fs": dict(size=(72, 56, 14), spacing=(3.5, 3.5, 7.0)), "crop": (8, 16, 40)},
}
T1, FS = SIZES["clinical"]["t1"], SIZES["clinical"]["fs"]


def make_cases(folder: Path, n: int) -> Path:
    import pandas as pd

    from distmsfa.io.phantom import CORONAL, write_case

    rows = []
    for i in range(n):
        cid = f"b{i:02d}"
        write_case(folder, cid, t1_size=T1["size"], t1_spacing=T1["spacing"], t1_direction=CORONAL,
                   fs_size=FS["size"], fs_spacing=FS["spacing"], fs_direction=CORONAL,
                   fs_center_mm=(2.0, 3.0, -1.0), shift_mm=(i * 0.5, 0, 0), seed=i)
        rows.append(dict(case_id=cid, patient_id=f"p{i}", label=str(i % 2), site="B", t1=f"{cid}_t1.nii.gz",
                         fs=f"{cid}_fs.nii.gz", roi=f"{cid}_roi.nii.gz"))
    path = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "bench_preprocess.json"))
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a temp dir, removed)")
    ap.add_argument("--size", default="clinical", choices=sorted(SIZES),
                    help="case size: clinical (the benchmark) or tiny (a smoke run; figures not meaningful)")
    args = ap.parse_args()
    global T1, FS
    T1, FS = SIZES[args.size]["t1"], SIZES[args.size]["fs"]

    import numpy as np
    import ray
    import SimpleITK as sitk

    from distmsfa.data import PreprocessConfig, build_dataset

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-pre-"))
    try:
        t = time.perf_counter()
        manifest = make_cases(work / "src", args.cases)
        gen_s = time.perf_counter() - t
        src_mb = sum(f.stat().st_size for f in (work / "src").glob("*.nii.gz")) / 1e6
        crop = SIZES[args.size]["crop"]
        cfg = PreprocessConfig(crop_size=crop) if crop else PreprocessConfig()

        # serial twice: the first run also pays one-off imports (sklearn, pyarrow...)
        t = time.perf_counter()
        build_dataset(manifest, work / "serial_cold", cfg, address="serial", progress=False)
        serial_cold_s = time.perf_counter() - t
        t = time.perf_counter()
        serial = build_dataset(manifest, work / "serial", cfg, address="serial", progress=False)
        serial_s = time.perf_counter() - t
        assert serial.n_failed == 0, serial.failures

        t = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        ray_start_s = time.perf_counter() - t
        t = time.perf_counter()
        cold = build_dataset(manifest, work / "ray_cold", cfg, progress=False)
        cold_s = time.perf_counter() - t
        t = time.perf_counter()
        warm = build_dataset(manifest, work / "ray_warm", cfg, progress=False)
        warm_s = time.perf_counter() - t
        t = time.perf_counter()
        resumed = build_dataset(manifest, work / "ray_warm", cfg, progress=False)
        resume_s = time.perf_counter() - t
        ray.shutdown()
        assert cold.n_failed == warm.n_failed == 0 and resumed.n_skipped == args.cases

        # the two executors write identical arrays
        from distmsfa.data.index import read_index

        same = (read_index(work / "serial")["pair_sha256"].tolist() == read_index(work / "ray_warm")["pair_sha256"].tolist())
        n = args.cases
        result = {
            "benchmark": "preprocess throughput, serial vs Ray Data",
            "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
                        "python": platform.python_version(), "ray": ray.__version__, "SimpleITK": sitk.Version_VersionString(),
                        "numpy": np.__version__},
            "cases": n,
            "size": args.size,
            "t1": {"size_xyz": T1["size"], "spacing_xyz_mm": T1["spacing"]},
            "fs": {"size_xyz": FS["size"], "spacing_xyz_mm": FS["spacing"]},
            "source_mb": round(src_mb, 1),
            "config": {"crop_size_dhw": list(cfg.crop_size), "spacing_dhw_mm": list(serial.spacing_dhw)},
            "generate_s": round(gen_s, 2),
            "serial_cold": {"seconds": round(serial_cold_s, 2), "cases_per_s": round(n / serial_cold_s, 3)},
            "serial": {"seconds": round(serial_s, 2), "cases_per_s": round(n / serial_s, 3)},
            "ray_start_s": round(ray_start_s, 2),
            "ray_cold": {"seconds": round(cold_s, 2), "cases_per_s": round(n / cold_s, 3)},
            "ray_warm": {"seconds": round(warm_s, 2), "cases_per_s": round(n / warm_s, 3)},
            "ray_resume_all_skipped": {"seconds": round(resume_s, 2), "cases_per_s": round(n / resume_s, 3)},
            "ratio_ray_warm_over_serial": round(serial_s / warm_s, 3),
            "ratio_ray_cold_over_serial_cold": round(serial_cold_s / cold_s, 3),
            "note": "ratio = Ray throughput / serial throughput; 'cold' runs include one-off imports and "
                    "Ray worker start-up (ray.init itself is ray_start_s, not included)",
            "identical_arrays_serial_vs_ray": bool(same),
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
        print(f"written to {args.out}")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
