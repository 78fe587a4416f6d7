"""Each benchmark script runs end to end at a tiny size and writes the JSON its docs quote.

The figures of a tiny run mean nothing; what is checked is that the script runs, measures
every figure it reports and writes it (bench_models.py: tests/models/test_models_device_gradcam.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _run(script: str, out: Path, *args: str, timeout: int = 600) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--out", str(out), *args], env=env,
                          cwd=out.parent, capture_output=True, encoding="utf-8", errors="replace", timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text(encoding="utf-8"))


def test_bench_synthetic_tiny(tmp_path):
    r = _run("bench_synthetic.py", tmp_path / "syn.json", "--profiles", "demo", "--n-demo", "2")
    assert r["unit"] == "cases/s" and r["machine"]["cores"] == os.cpu_count()
    assert [(x["profile"], x["workers"], x["cases"]) for x in r["runs"]] == [("demo", 1, 2), ("demo", 2, 2)]
    for x in r["runs"]:
        assert x["cases_per_s"] > 0 and x["cpu_s_per_case"] > 0 and x["mb_per_case"] > 0
    assert set(r["speedup_2_workers_over_1"]) == {"demo"} and r["speedup_2_workers_over_1"]["demo"] > 0


@pytest.mark.ray
def test_bench_preprocess_tiny(tmp_path):
    r = _run("bench_preprocess.py", tmp_path / "pre.json", "--size", "tiny", "--cases", "2")
    assert r["cases"] == 2 and r["size"] == "tiny" and r["config"]["crop_size_dhw"] == [8, 16, 40]
    for k in ("serial_cold", "serial", "ray_cold", "ray_warm", "ray_resume_all_skipped"):
        assert r[k]["seconds"] > 0 and r[k]["cases_per_s"] > 0, k
    # the seconds are rounded to 0.01 s and the ratio computed from the unrounded ones: allow
    # for that rounding (tiny runs take a few hundredths of a second)
    s, w = r["serial"]["seconds"], r["ray_warm"]["seconds"]
    lo, hi = (s - 0.005) / (w + 0.005), (s + 0.005) / max(w - 0.005, 1e-9)
    assert lo - 1e-3 <= r["ratio_ray_warm_over_serial"] <= hi + 1e-3, (r["ratio_ray_warm_over_serial"], s, w)
    assert r["identical_arrays_serial_vs_ray"] is True


@pytest.mark.ray
def test_bench_training_tiny(tmp_path):
    r = _run("bench_training.py", tmp_path / "train.json", "--n", "8", "--epochs", "2", "--batch-size", "2",
             "--shape", "4,16,16", "--data-shape", "4,16,16")
    a, b, c = r["a_throughput"], r["b_fold_start"], r["c_data_path"]
    assert a["plain_samples_per_s"] > 0 and a["ray_samples_per_s"] > 0
    assert a["ratio"] == pytest.approx(a["ray_samples_per_s"] / a["plain_samples_per_s"])
    assert len(a["plain_epoch_rates"]) == len(a["ray_epoch_rates"]) == 2
    assert b["submit_to_first_batch_s"] > 0 and {"submit", "worker_start", "first_batch"} <= set(b["breakdown_s"])
    for mode in ("materialized", "streamed", "plain_loader"):
        assert c[mode]["samples_per_s"] > 0 and c[mode]["MB_per_s"] > 0, mode


def test_bench_ensemble_tiny(tmp_path):
    r = _run("bench_ensemble.py", tmp_path / "ens.json", "--size", "tiny", "--device", "cpu", "--batch-sizes", "1,2",
             "--iters", "1", "--min-seconds", "0")
    assert r["folds"] == 4 and r["size"] == "tiny" and r["crop_dhw"] == [8, 48, 64]
    assert [x["batch"] for x in r["results"]] == [1, 2]
    for x in r["results"]:
        assert "error" not in x, x
        assert x["precision"] == "fp32" and x["compiled"] is False  # auto on CPU
        assert x["cases_per_s"] == pytest.approx(x["batch"] / x["batch_s"], rel=1e-2)
    assert r["results"][1]["short_batch"] == 1 and r["results"][1]["short_batch_s"] > 0
    sc = r["stack_check"]
    assert sc["max_abs_diff"] < 1e-5 and "1" in sc["by_threads"]
    for v in sc["by_threads"].values():
        assert v["loop_cases_per_s"] > 0 and v["vmap_cases_per_s"] > 0
        assert v["vmap_over_loop"] == pytest.approx(v["vmap_cases_per_s"] / v["loop_cases_per_s"], rel=2e-2)
