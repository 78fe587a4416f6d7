"""benchmarks/bench_gpu.py (issue 14) runs end to end with --smoke on CPU and writes every
section's figures; the figures of a smoke run mean nothing (see tests/test_benchmarks.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_bench_gpu_smoke_writes_every_section(tmp_path):
    out = tmp_path / "gpu.json"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_gpu.py"), "--smoke", "--device", "cpu",
                           "--out", str(out)], env=env, cwd=tmp_path, capture_output=True, encoding="utf-8",
                          errors="replace", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text(encoding="utf-8"))
    assert r["smoke"] is True and r["complete"] is True and r["machine"]["device"] == "cpu"
    assert set(r["goals"]) == {"msfanet_compiled_samples_per_s", "ray_over_plain", "data_wait_share"}

    m = r["models"]
    assert [(x["model"], x["mode"]) for x in m["results"]] == [
        ("msfanet", "eager"), ("msfanet", "compiled"), ("reference", "eager"), ("reference", "compiled")]
    for x in m["results"]:
        assert x["samples_per_s"] > 0 and x["peak_mem_mib"] >= 0 and x["optimizer"] == "default", x
        assert (x["compile_s"] > 0) == (x["mode"] == "compiled"), x
    assert set(m["compiled_over_eager"]) == {"msfanet", "reference"} and all(m["compiled_over_eager"].values())

    t = r["training"]
    for path in ("plain", "ray"):
        assert t[path]["samples_per_s"] > 0 and 0 <= t[path]["data_wait_share"] < 1
        assert len(t[path]["epoch_rates"]) == 2 and t[path]["compile_s"] == 0.0  # compile auto: off on CPU
    assert t["ray_over_plain"] == pytest.approx(t["ray"]["samples_per_s"] / t["plain"]["samples_per_s"], abs=1e-3)
    assert t["fold_startup"]["submit_to_first_batch_s"] > 0

    f = r["four_folds"]
    assert f["one_fold_samples_per_s"] > 0 and set(f["epochs_in_window"]) == {"0", "1", "2", "3"}
    assert set(f["four_folds_samples_per_s"]) <= {"0", "1", "2", "3"}
    if f["four_folds_summed_samples_per_s"] is not None:  # tiny folds on 2 cores rarely overlap
        assert f["four_folds_summed_samples_per_s"] == pytest.approx(sum(f["four_folds_samples_per_s"].values()))

    e = r["ensemble"]
    if (REPO / "benchmarks" / "bench_ensemble.py").exists():
        assert e["run"] is True and isinstance(e["result"], dict)
    else:
        assert e == {"run": False, "reason": "benchmarks/bench_ensemble.py is not in this checkout",
                     "section_wall_s": e["section_wall_s"]}
