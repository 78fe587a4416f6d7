"""MSFANet with the input front on (models/front.py) through the bundle path: a real tiny CV
run, export (config + safetensors), load (no pickles), the run's OOF predictions reproduced,
Grad-CAM maps."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from distmsfa.bundle import export_bundle, load_bundle, verify_bundle
from distmsfa.data.index import load_pair, read_index

FRONT = {"input_norm": "roi_median", "morph": 3, "input_erode": 1}


@pytest.fixture(scope="module")
def front_run(tiny_data, tmp_path_factory):
    from distmsfa.training.cv import run_cv

    out = tmp_path_factory.mktemp("frontrun") / "run"
    run_cv(tiny_data, "baseline", profile="cpu", plain=True, out=out, progress=False,
           overrides={"epochs": 1, "batch_size": 4, "num_threads": 1, "model_cfg": {"preset": "tiny", **FRONT}})
    return out


def test_front_bundle_round_trip_reproduces_the_runs_oof_predictions(front_run, tiny_data, tmp_path):
    bundle = export_bundle(front_run, tmp_path / "bundle")
    # The bundle is data: the front's options are in its config, the weights plain tensors.
    assert not list(bundle.rglob("*.pt")) and not list(bundle.rglob("*.pkl"))
    assert verify_bundle(bundle)["model"]["model_cfg"] == {"preset": "tiny", **FRONT}
    pred = load_bundle(bundle, device="cpu")
    cfg = pred.models[0].cfg
    assert (cfg.input_norm, cfg.morph, cfg.input_erode) == ("roi_median", 3, 1)
    assert pred.models[0].front is not None
    idx = read_index(tiny_data)
    x = np.stack([load_pair(tiny_data, r).astype(np.float32) for r in idx.to_dict("records")])
    out = pred.predict(x, batch_size=3)
    oof = pd.read_csv(front_run / "oof_predictions.csv", dtype={"case_id": str})
    pos = {c: i for i, c in enumerate(idx["case_id"])}
    got = [out["fold_probs"][pos[c], f] for c, f in zip(oof["case_id"], oof["fold"])]
    # A bundle loaded without the front would not reproduce these (the front changes the outputs).
    np.testing.assert_allclose(got, oof["prob"], atol=1e-5)
    maps = pred.gradcam(x[:1])
    assert set(maps) == {"t1", "fs", "fuse"}
    assert all(v.shape == (1, *pred.crop_size) and np.isfinite(v).all() for v in maps.values())

