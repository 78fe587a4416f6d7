"""The per-joint MIL model through the whole bundle path: a real tiny CV run, export, load
(no pickles), the ensemble predictor's probabilities and Grad-CAM maps."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from distmsfa.bundle import export_bundle, load_bundle
from distmsfa.data.index import load_pair, read_index


@pytest.fixture(scope="module")
def mil_run(tiny_data, tmp_path_factory):
    from distmsfa.training.cv import run_cv

    out = tmp_path_factory.mktemp("milrun") / "run"
    run_cv(tiny_data, "msfanet_mil", profile="cpu", plain=True, out=out, progress=False,
           overrides={"epochs": 2, "batch_size": 4, "num_threads": 1, "model_cfg": {"preset": "tiny", "mil_pool": "max"}})
    return out


def test_mil_bundle_reproduces_the_runs_oof_predictions_and_explains_in_crop_space(mil_run, tiny_data, tmp_path):
    pred = load_bundle(export_bundle(mil_run, tmp_path / "bundle"), device="cpu")
    assert pred.model_name == "msfanet_mil" and pred.models[0].mil_cfg.mil_pool == "max"
    idx = read_index(tiny_data)
    x = np.stack([load_pair(tiny_data, r).astype(np.float32) for r in idx.to_dict("records")])
    out = pred.predict(x, batch_size=3)
    oof = pd.read_csv(mil_run / "oof_predictions.csv", dtype={"case_id": str})
    pos = {c: i for i, c in enumerate(idx["case_id"])}
    got = [out["fold_probs"][pos[c], f] for c, f in zip(oof["case_id"], oof["fold"])]
    np.testing.assert_allclose(got, oof["prob"], atol=1e-5)
    maps = pred.gradcam(x[:1])
    assert set(maps) == {"t1", "fs", "fuse"} and all(v.shape == (1, *pred.crop_size) for v in maps.values())
