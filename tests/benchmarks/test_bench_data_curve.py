"""bench_data_curve.py on hand-made seed summaries and ceilings: the table and the picture."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _summary(per_model: dict[str, list[float]]) -> dict:
    return {"models": {m: {"seeds": list(range(len(v))), "per_seed": {str(i): {"fold_mean_auc": a} for i, a in enumerate(v)},
                           "seed_ensemble": {"fold_mean_auc": max(v)}} for m, v in per_model.items()}}


def _ceiling(both: float, fs: float) -> dict:
    return {"feature_ceiling": {"both/recorded": {"mean_auc": both}, "fs/recorded": {"mean_auc": fs},
                                "both/true": {"mean_auc": 0.99}}}


def test_the_curve_puts_each_sizes_seed_mean_next_to_its_ceiling(tmp_path):
    files = {}
    for n, (ms, bl, both) in {120: ([0.6, 0.7, 0.8], [0.5, 0.6], 0.85), 360: ([0.85, 0.87], [0.8, 0.82], 0.9)}.items():
        (tmp_path / f"s{n}.json").write_text(json.dumps(_summary({"msfanet": ms, "baseline": bl})))
        (tmp_path / f"c{n}.json").write_text(json.dumps(_ceiling(both, 0.75)))
        files[n] = f"{n}={tmp_path / f's{n}.json'},{tmp_path / f'c{n}.json'}"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out, png = tmp_path / "curve.json", tmp_path / "img" / "curve.png"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_data_curve.py"), "--point", files[360],
                           "--point", files[120], "--out", str(out), "--png", str(png)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    c = json.loads(out.read_text())["curve"]
    assert list(c) == ["120", "360"]  # sorted by size whatever the order given
    assert c["120"]["models"]["msfanet"]["mean"] == pytest.approx(0.7)
    assert c["120"]["models"]["msfanet"]["sd"] == pytest.approx(0.1)
    assert c["360"]["models"]["baseline"]["fold_mean_auc"] == [0.8, 0.82]
    assert c["120"]["feature_ceiling"] == {"both": 0.85, "fs": 0.75}  # recorded labels only
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
