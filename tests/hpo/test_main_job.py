"""The main job's last step (no Ray): the bundle's fold ensemble scores the external site."""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = [pytest.mark.slow]


def test_score_external_uses_the_bundles_ensemble_and_threshold(tiny_dataset, tmp_path):
    from distmsfa.bundle import export_bundle, load_bundle
    from distmsfa.data.index import load_pair, read_index
    from distmsfa.evaluation.metrics import binary_metrics
    from distmsfa.hpo.main_job import score_external
    from distmsfa.training import run_cv

    run_cv(tiny_dataset, "msfanet", profile="cpu", plain=True, out=tmp_path / "run", progress=False,
           overrides={"epochs": 1, "num_threads": 1, "batch_size": 4})
    bundle = export_bundle(tmp_path / "run", tmp_path / "bundle")
    df, ext = score_external(bundle, tiny_dataset, batch_size=1)
    index = read_index(tiny_dataset)
    external = index[index["is_external"].astype(bool)]
    assert sorted(df["case_id"]) == sorted(external["case_id"]) and ext["site"] == ["EXT"]
    pred = load_bundle(bundle)
    x = np.stack([load_pair(tiny_dataset, r).astype(np.float32) for _, r in external.sort_values("case_id").iterrows()])
    np.testing.assert_allclose(df.sort_values("case_id")["prob"], pred.predict(x)["prob"], rtol=1e-5)
    assert ext["threshold"] == pytest.approx(pred.threshold)
    assert ext["metrics"] == pytest.approx(binary_metrics(df["label"], df["prob"], pred.threshold), nan_ok=True)
