"""Fixtures for the evaluation tests: the tiny dataset of the training tests and two tiny
finished CV runs on it (msfanet and baseline, 2 epochs, plain path)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "training"))
from _tiny import make_tiny_dataset  # noqa: E402


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny-eval") / "data", n=24, n_external=6)


@pytest.fixture(scope="session")
def two_runs(tiny_data, tmp_path_factory) -> list[Path]:
    from distmsfa.training import run_cv

    base = tmp_path_factory.mktemp("runs")
    out = []
    for model in ("msfanet", "baseline"):
        run_cv(tiny_data, model, profile="cpu", out=base / model, plain=True, progress=False,
               overrides={"epochs": 2, "num_threads": 1, "inner_fraction": 0.25})
        out.append(base / model)
    return out
