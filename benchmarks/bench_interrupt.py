"""Time from SIGINT/SIGTERM to exit of long CLI commands, and Ray processes left (issue 16).

For each case: start the command through the CLI in a process group of its own with its own
RAY_TMPDIR, wait until it is mid-run (cv: a fold reported its first epoch; preprocess: 3
pairs written), send the signal (SIGINT to the group, as a terminal's Ctrl-C; SIGTERM to the
process, as a scheduler), and record the exit code, the seconds to exit, and how many
processes whose command line names the run's Ray temp dir are alive 1 s later.

    python benchmarks/bench_interrupt.py --out benchmarks/out/interrupt.json [--repeats 2]

Records the 1-minute load average at each signal: on a shared machine it explains the spread.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def _procs(mark: str) -> list:
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if mark in " ".join(p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            pass
    return out


def measure(name: str, cmd: list[str], ready, sig: int, group: bool, tag: str) -> dict:
    mark = f"/tmp/rbi{os.getpid()}-{tag}"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), RAY_TMPDIR=mark)
    env.pop("RAY_ADDRESS", None)
    t_start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    while proc.poll() is None and not ready() and time.monotonic() - t_start < 900:
        time.sleep(0.05)
    if proc.poll() is not None:
        return {"case": name, "error": "ended before the signal", "stderr": proc.stderr.read()[-2000:]}
    n_before = len(_procs(mark))
    load = os.getloadavg()[0]
    t0 = time.monotonic()
    os.killpg(proc.pid, sig) if group else os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=120)
    exit_s = time.monotonic() - t0
    time.sleep(1.0)
    left = len(_procs(mark))
    line = next((x for x in err.splitlines() if x.startswith("interrupted (")), "")
    return {"case": name, "signal": signal.Signals(sig).name, "to": "process group" if group else "process",
            "exit_code": proc.returncode, "exit_s": round(exit_s, 2), "startup_to_signal_s": round(t0 - t_start, 1),
            "ray_processes_before": n_before, "ray_processes_left_after_1s": left, "load_avg_1min": round(load, 1),
            "resume_line": line}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/out/interrupt.json")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from distmsfa.data import PreprocessConfig, build_dataset
    from distmsfa.data.synthetic import generate_cohort

    base = Path(tempfile.mkdtemp(prefix="bench-intr-"))
    manifest = generate_cohort(base / "cohort", n=20, seed=0, progress=False)
    cfg = PreprocessConfig(target_spacing_mm=(5.0, 2.5, 2.5), crop_size=(8, 48, 64), n_folds=2, seed=0)
    build_dataset(manifest, base / "data", cfg, address="serial", external_sites=("NHH",), progress=False)
    (base / "cv.yaml").write_text("train:\n  epochs: 30\n  num_threads: 1\n", encoding="utf-8")
    (base / "pre.yaml").write_text("preprocess:\n  target_spacing_mm: [5.0, 2.5, 2.5]\n  crop_size: [8, 48, 64]\n"
                                   "  n_folds: 2\n  seed: 0\n")
    py = [sys.executable, "-m", "distmsfa"]
    results = []
    for r in range(args.repeats):
        for sig, group in ((signal.SIGINT, True), (signal.SIGTERM, False)):
            run = base / f"cv-{r}-{sig}"
            cmd = py + ["cv", "--data", str(base / "data"), "--model", "msfanet", "--profile", "cpu",
                        "--config", str(base / "cv.yaml"), "--out", str(run)]
            ready = lambda run=run: any((run / "folds" / f"fold{f}" / "metrics.jsonl").exists() for f in (0, 1))  # noqa: E731
            results.append(measure("cv (Ray path, 2 folds)", cmd, ready, sig, group, f"cv{r}{int(sig)}"))
            print(results[-1], flush=True)
        out = base / f"pre-{r}"
        cmd = py + ["preprocess", str(manifest), "--out", str(out), "--config", str(base / "pre.yaml"),
                    "--external-site", "NHH", "--workers", "1", "--no-progress"]
        ready = lambda out=out: len(list((out / "pairs").glob("*.npy"))) >= 3  # noqa: E731
        results.append(measure("preprocess (Ray Data, 1 worker)", cmd, ready, signal.SIGINT, True, f"pre{r}"))
        print(results[-1], flush=True)
    doc = {"benchmark": "interrupt_exit", "issue": 16, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                       "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)},
           "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
