"""A model bundle carries a localiser: attached, verified, loaded; a bundle without one says so."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent.parent / "training"))


def _write_fingerprint(root: Path, shape) -> None:
    """The fingerprint.json a build of the tiny dataset would write (as tests/bundle/conftest.py)."""
    from distmsfa.data.fingerprint import params_fingerprint, params_payload
    from distmsfa.data.preprocess import PreprocessConfig

    sp = (4.0, 0.5, 0.5)
    cfg = PreprocessConfig(target_spacing_mm=sp, crop_size=shape[1:], n_folds=2, seed=0)
    stats = {"n": 18, "median_spacing_dhw": [4.0, 0.5, 0.5], "min_spacing_dhw": [3.5, 0.45, 0.45],
             "max_spacing_dhw": [4.5, 0.55, 0.55], "median_size_dhw": [20, 256, 256]}
    meta = {"dataset": {"orientation": "LIP", "headers_skipped": 0, "t1": stats, "fs": stats},
            "params": params_payload(cfg, sp), "fingerprint": params_fingerprint(cfg, sp),
            "folds": {"n_folds": 2, "seed": 0, "external_sites": ["EXT"]}}
    (root / "fingerprint.json").write_text(json.dumps(meta, indent=2))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from _tiny import SHAPE, make_tiny_dataset

    from distmsfa.bundle import export_bundle
    from distmsfa.training.cv import run_cv

    base = tmp_path_factory.mktemp("lb")
    data = make_tiny_dataset(base / "data")
    _write_fingerprint(data, SHAPE)
    run_cv(data, "msfanet", profile="cpu", plain=True, out=base / "run", progress=False,
           overrides={"epochs": 1, "batch_size": 4, "num_threads": 1})
    return export_bundle(base / "run", base / "bundle")


@pytest.mark.slow
def test_preprocess_takes_a_bundle_that_carries_a_localiser(bundle, trained, cohort, tmp_path):
    """`preprocess --localiser BUNDLE`: the bundle's localiser (verified with the bundle's checksums)
    predicts the ROI of a case without one; a bundle without a localiser is refused in one line.
    (Runs before the test below, which alters the module bundle; works on a copy.)"""
    import shutil

    import pandas as pd

    from distmsfa.cli.main import app
    from distmsfa.data import PreprocessConfig, build_dataset
    from distmsfa.data.index import read_index
    from distmsfa.localiser import attach_localiser, localiser_folder

    folder, _, held_out = trained
    plain = shutil.copytree(bundle, tmp_path / "plain")
    assert not (plain / "localiser").exists()
    m = pd.read_csv(cohort)
    m = m[m["case_id"] == held_out[0].case_id].copy()
    m["t1"] = [str(cohort.parent / v) for v in m["t1"]]
    m["fs"] = [str(cohort.parent / v) for v in m["fs"]]
    m["roi"] = ""
    man = tmp_path / "manifest.csv"
    m[["case_id", "patient_id", "label", "site", "t1", "fs", "roi"]].to_csv(man, index=False)
    res = CliRunner().invoke(app, ["preprocess", str(man), "--out", str(tmp_path / "ds0"), "--serial",
                                   "--localiser", str(plain)])
    assert res.exit_code == 2 and "carries no localiser" in res.output and res.output.count("\n") == 1, res.output
    withloc = shutil.copytree(plain, tmp_path / "withloc")
    attach_localiser(withloc, folder)
    assert localiser_folder(withloc) == withloc / "localiser"
    cfg = PreprocessConfig(target_spacing_mm=(5.0, 2.5, 2.5), crop_size=(8, 48, 64), n_folds=2)
    rep = build_dataset(man, tmp_path / "ds", cfg, address="serial", progress=False, localiser=withloc)
    assert rep.n_done == 1 and not rep.failures, rep.failures
    assert read_index(tmp_path / "ds").iloc[0]["roi_source"] == "predicted"


@pytest.mark.slow
def test_bundle_carries_a_verified_localiser(bundle, trained):
    from distmsfa.bundle.layout import BundleError, verify_bundle
    from distmsfa.cli.main import app
    from distmsfa.localiser import bundle_localiser

    folder, loc, held_out = trained
    assert bundle_localiser(bundle) is None  # exported without one: a request without ROI is refused
    res = CliRunner().invoke(app, ["localiser", "attach", "--bundle", str(bundle), "--localiser", str(folder)])
    assert res.exit_code == 0, res.output
    meta = verify_bundle(bundle)
    assert meta["localiser"]["path"] == "localiser" and meta["localiser"]["weights_sha256"] == loc.meta["weights_sha256"]
    again = bundle_localiser(bundle)
    x = held_out[0].coarse.x
    np.testing.assert_allclose(again.probabilities(x), loc.probabilities(x), atol=1e-6)
    res = CliRunner().invoke(app, ["localiser", "attach", "--bundle", str(bundle), "--localiser", str(folder)])
    assert res.exit_code == 2 and "already carries a localiser" in res.output
    w = bundle / "localiser" / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:-1] + b"\0")
    with pytest.raises(BundleError, match="localiser/weights.safetensors: altered"):
        bundle_localiser(bundle)
