"""Smoke tests of the commands no other test runs: `distmsfa models` and `distmsfa demo`."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from distmsfa.cli.main import app
from distmsfa.models import create_model, list_models

REPO = Path(__file__).resolve().parents[1]


def test_models_lists_every_registered_model_with_the_sizes_docs_quote():
    res = CliRunner().invoke(app, ["models"])
    assert res.exit_code == 0, res.output
    rows = {}
    for line in res.output.strip().splitlines():
        m = re.fullmatch(r"(\S+)\s+sequences=(\S+)\s+params=\s*([\d.]+)M", line.strip())
        assert m, line
        rows[m[1]] = (m[2], float(m[3]))
    assert list(rows) == list_models()
    assert rows["baseline_t1"][0] == "t1" and rows["baseline_fs"][0] == "fs" and rows["msfanet"][0] == "t1,fs"
    # docs/models.md's registry table quotes the same sizes
    table = re.findall(r"(?m)^\| `(\w+)` \|.*\| ([\d.]+) M \| ([\d.]+) k \|$", (REPO / "docs" / "models.md").read_text(encoding="utf-8"))
    assert sorted(n for n, _, _ in table) == sorted(rows)
    assert {n: float(v) for n, v, _ in table} == {n: round(v, 2) for n, (_, v) in rows.items()}
    tiny = {n: round(sum(p.numel() for p in create_model(n, preset="tiny").parameters()) / 1e3) for n in rows}
    assert {n: int(k) for n, _, k in table} == tiny
    for name in ("msfanet", "efficientnet_dual"):  # building every full-size model twice is slow
        n = sum(p.numel() for p in create_model(name).parameters())
        assert rows[name][1] == pytest.approx(n / 1e6, abs=0.006), name


@pytest.mark.slow
@pytest.mark.ray
def test_demo_runs_end_to_end_on_a_tiny_cohort(tmp_path):
    """The README's first command at a tiny size: cohort -> Ray Data preprocessing -> 2-fold
    Ray Train CV of MSFANet, one epoch, on a local Ray the command starts itself."""
    out = tmp_path / "demo"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "distmsfa", "demo", "--out", str(out), "--n", "12", "--epochs", "1",
                           "--folds", "2"], env=env, cwd=tmp_path, capture_output=True, encoding="utf-8",
                          errors="replace", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = dict(line.split(":", 1) for line in proc.stdout.strip().splitlines()[-3:])
    assert Path(lines["manifest"].strip()) == out / "cohort" / "manifest.csv"
    run = Path(lines["run"].strip())
    assert run.parent == out / "runs"
    manifest = pd.read_csv(out / "cohort" / "manifest.csv")
    index = pd.read_parquet(out / "data" / "index.parquet")
    assert len(manifest) == 12 and sorted(index["case_id"]) == sorted(manifest["case_id"])
    assert set(index.loc[index["site"] == "NHH", "is_external"]) <= {True}
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert summary["folds_done"] == [0, 1] and summary["epochs"] == 1
    for f in (0, 1):
        assert list(pd.read_csv(run / "folds" / f"fold{f}" / "history.csv")["epoch"]) == [0]
