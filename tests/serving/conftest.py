"""Fixtures of the serving tests: one synthetic two-case cohort (NIfTI and DICOM)."""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def syn_cases(tmp_path_factory) -> dict:
    """Two synthetic cases as NIfTI (t1, fs, roi) and one as DICOM folders, with their manifest rows."""
    from distmsfa.data.synthetic import generate_cohort

    base = tmp_path_factory.mktemp("serve-syn")
    m = generate_cohort(base / "nifti", n=6, seed=3, progress=False)
    md = generate_cohort(base / "dicom", n=1, seed=4, progress=False, fmt="dicom")
    rows = pd.read_csv(m).to_dict("records")
    drow = pd.read_csv(md).to_dict("records")[0]
    for r in rows:
        for k in ("t1", "fs", "roi"):
            r[k] = str(Path(m).parent / r[k])
    for k in ("t1", "fs", "roi"):
        drow[k] = str(Path(md).parent / drow[k])
    assert {r["label"] for r in rows} == {0, 1}
    return {"manifest": Path(m), "rows": rows[:2], "more": rows, "dicom": drow}
