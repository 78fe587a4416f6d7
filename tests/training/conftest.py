"""Datasets for the training tests: a tiny one written through the index contract
(independent of preprocessing) and a small synthetic cohort built by `build_dataset`."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.training._tiny import make_tiny_dataset


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny") / "data")


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    """20 synthetic cases (2 sites, NHH external), preprocessed at a small crop into 2 folds."""
    from distmsfa.data import PreprocessConfig, build_dataset
    from distmsfa.data.synthetic import generate_cohort

    base = tmp_path_factory.mktemp("syn")
    manifest = generate_cohort(base / "cohort", n=20, seed=0, progress=False)
    cfg = PreprocessConfig(target_spacing_mm=(5.0, 2.5, 2.5), crop_size=(8, 48, 64), n_folds=2, seed=0)
    report = build_dataset(manifest, base / "data", cfg, address="serial", external_sites=("NHH",), progress=False)
    assert not report.failures, report.failures
    return base / "data"
