"""The synthetic sacroiliac cohort (distmsfa.data.synthetic) through preprocessing, end to end."""
from __future__ import annotations

import numpy as np
import pytest

from distmsfa.data import PreprocessConfig, build_dataset
from distmsfa.data.index import load_array, load_pair, read_index

synthetic = pytest.importorskip("distmsfa.data.synthetic")


@pytest.mark.slow
def test_synthetic_cohort_preprocesses_end_to_end(tmp_path):
    manifest = synthetic.generate_cohort(tmp_path / "cohort", n=8, seed=1, progress=False)
    cfg = PreprocessConfig(crop_size=(16, 96, 128), n_folds=2)  # default spacing: cohort median
    rep = build_dataset(manifest, tmp_path / "ds", cfg, address="serial", progress=False, external_sites=["NHH"])
    assert rep.n_failed == 0, rep.failures
    idx = read_index(tmp_path / "ds")
    assert len(idx) == 8 and idx.loc[idx["site"] == "NHH", "fold"].isna().all()
    for _, row in idx.iterrows():
        pair = load_pair(tmp_path / "ds", row, verify=True).astype(np.float32)
        roi = load_array(tmp_path / "ds", row["roi_path"])
        assert pair.shape == (2, 16, 96, 128) and set(np.unique(roi)) == {0, 1, 2}
        # both sacroiliac joints inside the crop; left (label 1) on the patient-left (high W) side
        assert np.argwhere(roi == 1)[:, 2].mean() > np.argwhere(roi == 2)[:, 2].mean()
        inside = roi > 0
        assert pair[0][inside].std() > 0.02 and pair[1][inside].std() > 0.02
