"""Synthetic-cohort generation throughput (cases/s), demo and clinical profiles, 1 and 2
worker processes, measured in one run on this machine.

    python benchmarks/bench_synthetic.py [--out benchmarks/out/bench_synthetic.json] [--n-demo 24] [--n-clinical 4]

Writes JSON: per (profile, workers): cases, seconds, cases/s, mean bytes written per case;
the 2-worker/1-worker ratio per profile; machine info (CPU, cores, load average, library
versions).  Load from other processes on a shared machine lowers the figures: the load
average before and after each measurement is recorded with it, and so is the CPU time
(this process and its worker processes), whose cases per CPU-second does not depend on load.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

# Run from a checkout without installing: make the repository root importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def machine() -> dict:
    import numpy
    import scipy
    import SimpleITK

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform(),
            "numpy": numpy.__version__, "scipy": scipy.__version__, "SimpleITK": SimpleITK.Version_VersionString()}


def measure(profile: str, n: int, workers: int, seed: int = 0) -> dict:
    from distmsfa.data.synthetic import CohortConfig, generate_cohort

    out = Path(tempfile.mkdtemp(prefix=f"bench_syn_{profile}_"))
    try:
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        generate_cohort(out, n=n, seed=seed, config=CohortConfig(profile=profile), progress=False, workers=workers)
        dt = time.perf_counter() - t0
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = time.process_time() - cpu0 + (kids.ru_utime - kids0.ru_utime) + (kids.ru_stime - kids0.ru_stime)
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        return {"profile": profile, "workers": workers, "cases": n, "seconds": round(dt, 3),
                "cases_per_s": round(n / dt, 3), "mb_per_case": round(size / n / 1e6, 3),
                "cpu_s": round(cpu, 3), "cpu_s_per_case": round(cpu / n, 3),
                # load-independent: what one core renders per second when it is not shared
                "cases_per_cpu_s": round(n / cpu, 3),
                "loadavg_1min_before": round(load0, 2), "loadavg_1min_after": round(os.getloadavg()[0], 2)}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/out/bench_synthetic.json")
    ap.add_argument("--n-demo", type=int, default=24)
    ap.add_argument("--n-clinical", type=int, default=4)
    ap.add_argument("--profiles", default="demo,clinical",
                    help="comma-separated cohort profiles to measure (a smoke run: --profiles demo --n-demo 2)")
    args = ap.parse_args()
    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    unknown = sorted(set(profiles) - {"demo", "clinical"})
    if unknown or not profiles:
        ap.error(f"--profiles takes demo and/or clinical, got {args.profiles!r}")
    measure("demo", 2, 1)  # warm-up: imports, page cache
    runs = []
    sizes = {"demo": args.n_demo, "clinical": args.n_clinical}
    for profile, n in ((p, sizes[p]) for p in profiles):
        for workers in (1, 2):
            r = measure(profile, n, workers)
            print(json.dumps(r), flush=True)
            runs.append(r)
    ratios = {}
    for profile in profiles:
        one = next(r for r in runs if r["profile"] == profile and r["workers"] == 1)
        two = next(r for r in runs if r["profile"] == profile and r["workers"] == 2)
        ratios[profile] = round(two["cases_per_s"] / one["cases_per_s"], 3)
    result = {"benchmark": "synthetic_cohort_generation", "unit": "cases/s",
              "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": machine(), "runs": runs, "speedup_2_workers_over_1": ratios}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
