"""`distmsfa inspect`: counts, spacing statistics, and a montage PNG with ROI outlines."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from distmsfa.cli.inspect import inspect
from distmsfa.data import PreprocessConfig, build_dataset
from distmsfa.data.inspect import dataset_summary
from distmsfa.io.phantom import write_case


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("insp")
    rows = []
    for i in range(6):
        write_case(d / "src", f"k{i}", shift_mm=(i, 0, 0), seed=i)
        rows.append(dict(case_id=f"k{i}", patient_id=f"p{i}", label="" if i == 5 else str(i % 2),
                         site="NHH" if i == 4 else "H1", t1=f"k{i}_t1.nii.gz", fs=f"k{i}_fs.nii.gz",
                         roi=f"k{i}_roi.nii.gz"))
    rows.append(dict(rows[0], case_id="broken", t1="absent.nii.gz"))
    pd.DataFrame(rows).to_csv(d / "src" / "m.csv", index=False)
    build_dataset(d / "src" / "m.csv", d / "ds", PreprocessConfig(crop_size=(12, 32, 48), n_folds=2,
                                                                  target_spacing_mm=(4.0, 3.0, 3.0)),
                  address="serial", progress=False, external_sites=["NHH"])
    return d / "ds"


def test_summary_counts(dataset):
    s = dataset_summary(str(dataset))
    assert s["n_cases"] == 6 and s["n_patients"] == 6 and s["external"] == 1 and s["n_failed"] == 1
    assert s["label"] == {"0": 3, "1": 2, "<NA>": 1}
    assert s["site"] == {"H1": 5, "NHH": 1}
    assert sum(s["fold"].values()) == 6 and s["fold"]["<NA>"] == 2  # external + unlabelled
    assert s["spacing_mm"]["median"] == [4.0, 3.0, 3.0]
    assert s["shapes"] == [[2, 12, 32, 48]]


def test_cli_prints_summary_and_writes_montage_with_roi_outline(dataset, tmp_path):
    import matplotlib.image as mpimg

    app = typer.Typer()
    app.command()(inspect)
    png = tmp_path / "m.png"
    res = CliRunner().invoke(app, [str(dataset), "--out", str(png), "--n", "3"])
    assert res.exit_code == 0, res.output
    assert "6 cases" in res.output and "label : 0=3, 1=2, <NA>=1" in res.output
    assert f"montage written to {png}" in res.output
    img = mpimg.imread(png)
    assert img.shape[0] > 500 and img.shape[1] > 500
    rgb = img[..., :3]
    red = (rgb[..., 0] > 0.9) & (rgb[..., 1] < 0.4) & (rgb[..., 2] < 0.4)  # label 1 contour colour
    green = (rgb[..., 1] > 0.6) & (rgb[..., 0] < 0.4) & (rgb[..., 2] < 0.5)  # label 2
    assert red.sum() > 50 and green.sum() > 50
    gray = rgb[np.abs(rgb[..., 0] - rgb[..., 1]) < 0.02]
    assert gray.std() > 0.1  # the images themselves are shown, not blank panels


def test_inspect_without_dataset_is_one_line_error(tmp_path):
    app = typer.Typer()
    app.command()(inspect)
    res = CliRunner().invoke(app, [str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "error: no index.parquet under" in res.output and "distmsfa preprocess" in res.output
