"""Fixtures for the evaluation tests: the tiny dataset of the training tests and two tiny
finished CV runs on it (msfanet and baseline, 2 epochs, plain path)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "training"))
from _tiny import make_tiny_dataset  # noqa: E402


def write_fingerprint(root: Path, clip=(0.5, 99.5)) -> None:
    """The fingerprint.json a build at the tiny crop would write (the tiny dataset is written
    through the index contract, without preprocessing)."""
    import json

    from _tiny import SHAPE

    from distmsfa.data.fingerprint import params_fingerprint, params_payload
    from distmsfa.data.preprocess import PreprocessConfig

    sp = (4.0, 0.5, 0.5)
    cfg = PreprocessConfig(target_spacing_mm=sp, crop_size=SHAPE[1:], n_folds=2, seed=0, clip_percentiles=clip)
    st = {"n": 24, "median_spacing_dhw": list(sp), "min_spacing_dhw": list(sp), "max_spacing_dhw": list(sp),
          "median_size_dhw": [20, 64, 64]}
    meta = {"dataset": {"orientation": "LIP", "headers_skipped": 0, "t1": st, "fs": st},
            "params": params_payload(cfg, sp), "fingerprint": params_fingerprint(cfg, sp),
            "folds": {"n_folds": 2, "seed": 0, "external_sites": ["EXT"]}}
    (root / "fingerprint.json").write_text(json.dumps(meta, indent=2))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    root = make_tiny_dataset(tmp_path_factory.mktemp("tiny-eval") / "data", n=24, n_external=6)
    write_fingerprint(root)
    return root


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
