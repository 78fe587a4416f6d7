"""`distmsfa paper` on the tiny dataset (two models, plain path): runs, reuse, report."""
from __future__ import annotations

import json

import pytest

from distmsfa.evaluation.paper import PAPER_MODELS, run_paper, run_state

pytestmark = pytest.mark.slow


def test_paper_runs_each_model_reuses_finished_runs_and_reports(tiny_data, tmp_path):
    assert PAPER_MODELS[0] == "msfanet" and len(PAPER_MODELS) == 14
    ov = {"epochs": 1, "num_threads": 1, "inner_fraction": 0.25}
    logs: list[str] = []
    rec = run_paper(tiny_data, tmp_path / "p", profile="cpu", models=["msfanet", "baseline_t1"], overrides=ov,
                    plain=True, gradcam=False, log=logs.append)
    assert rec["finished"] == ["msfanet", "baseline_t1"]
    assert all(run_state(tmp_path / "p" / "runs" / m) == "done" for m in rec["finished"])
    t6 = (tmp_path / "p" / "report" / "tables" / "table6.csv").read_text(encoding="utf-8")
    assert "baseline_t1" in t6 and "msfanet" in t6
    summary = json.loads((tmp_path / "p" / "runs" / "baseline_t1" / "summary.json").read_text(encoding="utf-8"))
    assert summary["external"]["n_cases"] == 6
    # a second call reuses both runs (no training) and rewrites the report
    mtime = (tmp_path / "p" / "runs" / "msfanet" / "summary.json").stat().st_mtime
    logs.clear()
    again = run_paper(tiny_data, tmp_path / "p", profile="cpu", models=["msfanet", "baseline_t1"], overrides=ov,
                      plain=True, gradcam=False, log=logs.append)
    assert all(v["state_before"] == "done" for v in again["models"].values())
    assert (tmp_path / "p" / "runs" / "msfanet" / "summary.json").stat().st_mtime == mtime
    assert all("reused" in line for line in logs)
    with pytest.raises(ValueError, match="unknown model"):
        run_paper(tiny_data, tmp_path / "q", models=["msfanett"], plain=True)
