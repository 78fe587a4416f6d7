"""Fixtures of the bundle tests: a real tiny CV run (``run_cv(..., plain=True)``) on the tiny
dataset of the training tests, given the ``fingerprint.json`` that ``build_dataset`` writes,
and its exported bundle."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "training"))
from _tiny import SHAPE, make_tiny_dataset  # noqa: E402

TINY_SPACING = (4.0, 0.5, 0.5)


def write_tiny_fingerprint(root: Path) -> None:
    """The fingerprint.json a build with this crop and spacing would write (the tiny dataset is
    written through the index contract, without preprocessing)."""
    from distmsfa.data.fingerprint import params_fingerprint, params_payload
    from distmsfa.data.preprocess import PreprocessConfig

    cfg = PreprocessConfig(target_spacing_mm=TINY_SPACING, crop_size=SHAPE[1:], n_folds=2, seed=0)
    stats = {"n": 18, "median_spacing_dhw": [4.0, 0.5, 0.5], "min_spacing_dhw": [3.5, 0.45, 0.45],
             "max_spacing_dhw": [4.5, 0.55, 0.55], "median_size_dhw": [20, 256, 256]}
    meta = {"dataset": {"orientation": "LIP", "headers_skipped": 0, "t1": stats, "fs": stats},
            "params": params_payload(cfg, TINY_SPACING), "fingerprint": params_fingerprint(cfg, TINY_SPACING),
            "folds": {"n_folds": 2, "seed": 0, "external_sites": ["EXT"]}}
    (root / "fingerprint.json").write_text(json.dumps(meta, indent=2))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    root = make_tiny_dataset(tmp_path_factory.mktemp("btiny") / "data")
    write_tiny_fingerprint(root)
    return root


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory) -> Path:
    from distmsfa.training.cv import run_cv

    out = tmp_path_factory.mktemp("brun") / "run"
    run_cv(tiny_data, "msfanet", profile="cpu", plain=True, out=out, progress=False,
           overrides={"epochs": 2, "batch_size": 4, "num_threads": 1, "threshold": "youden"})
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run, tmp_path_factory) -> Path:
    from distmsfa.bundle import export_bundle

    return export_bundle(tiny_run, tmp_path_factory.mktemp("bb") / "bundle")


@pytest.fixture(scope="session")
def syn(tmp_path_factory):
    """A small synthetic cohort built by `build_dataset` (as tests/training's `synthetic_dataset`),
    a 1-epoch plain CV run on it and its bundle: (manifest, data, run, bundle)."""
    from distmsfa.bundle import export_bundle
    from distmsfa.data import PreprocessConfig, build_dataset
    from distmsfa.data.synthetic import generate_cohort
    from distmsfa.training.cv import run_cv

    base = tmp_path_factory.mktemp("bsyn")
    manifest = generate_cohort(base / "cohort", n=20, seed=0, progress=False)
    cfg = PreprocessConfig(target_spacing_mm=(5.0, 2.5, 2.5), crop_size=(8, 48, 64), n_folds=2, seed=0)
    report = build_dataset(manifest, base / "data", cfg, address="serial", external_sites=("NHH",), progress=False)
    assert not report.failures, report.failures
    run_cv(base / "data", "msfanet", profile="cpu", plain=True, out=base / "run", progress=False,
           overrides={"epochs": 1, "batch_size": 4, "num_threads": 1})
    return manifest, base / "data", base / "run", export_bundle(base / "run", base / "bundle")
