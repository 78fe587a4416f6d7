"""Manifest parsing and validation: every problem at once, with row numbers."""
from __future__ import annotations

import pandas as pd
import pytest

from distmsfa.io import ManifestError, load_manifest, validate_manifest


@pytest.fixture()
def files(tmp_path):
    for name in ("a_t1.nii.gz", "a_fs.nii.gz", "a_roi.nii.gz", "b_t1.nii.gz", "b_fs.nii.gz"):
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def _write(tmp_path, rows, name="m.csv"):
    path = tmp_path / name
    df = pd.DataFrame(rows)
    if name.endswith(".parquet"):
        df.to_parquet(path)
    else:
        df.to_csv(path, index=False)
    return path


def test_good_manifest_resolves_relative_paths(files):
    path = _write(files, [
        dict(case_id="a", patient_id="p1", label="1", site="H1", t1="a_t1.nii.gz", fs="a_fs.nii.gz", roi="a_roi.nii.gz",
             roi_center_mm=""),
        dict(case_id="b", patient_id="p2", label="", site="", t1=str(files / "b_t1.nii.gz"), fs="b_fs.nii.gz", roi="",
             roi_center_mm="1.5, -2, 30"),
    ])
    m = validate_manifest(path)
    a, b = m.cases
    assert a.t1 == str(files / "a_t1.nii.gz") and a.roi == str(files / "a_roi.nii.gz") and a.label == 1
    assert b.label is None and b.site == "default" and b.roi_center_mm == (1.5, -2.0, 30.0) and b.roi is None


def test_parquet_manifest_and_file_uri(files):
    path = _write(files, [dict(case_id="a", patient_id="p1", label=0, site="H", t1=f"file://{files}/a_t1.nii.gz",
                               fs="a_fs.nii.gz", roi_bbox_mm="0,0,0,10,20,30")], "m.parquet")
    (c,) = validate_manifest(path).cases
    assert c.label == 0 and c.t1 == f"{files}/a_t1.nii.gz" and c.roi_bbox_mm == (0, 0, 0, 10, 20, 30)


def test_every_row_problem_reported_with_row_numbers(files):
    good = dict(case_id="a", patient_id="p1", label="1", site="H", t1="a_t1.nii.gz", fs="a_fs.nii.gz",
                roi="a_roi.nii.gz")
    rows = [
        good,
        {**good, "case_id": "dup"},
        {**good, "case_id": "dup"},
        {**good, "case_id": "c", "label": "maybe"},
        {**good, "case_id": "d", "t1": "missing.nii.gz"},
        {**good, "case_id": "e f"},
        {**good, "case_id": "g", "roi": "", "patient_id": ""},
    ]
    m = load_manifest(_write(files, rows))
    assert [c.case_id for c in m.cases] == ["a"]
    text = [str(p) for p in m.problems]
    assert any(t.startswith("row 2 (case dup): duplicate case_id") for t in text)
    assert any(t.startswith("row 3 (case dup): duplicate case_id") for t in text)
    assert any(t.startswith("row 4 (case c): unknown label 'maybe'") for t in text)
    assert any(t.startswith("row 5 (case d): t1 file not found: missing.nii.gz") for t in text)
    assert any(t.startswith("row 6: case_id 'e f'") for t in text)
    assert any(t.startswith("row 7 (case g): empty patient_id") for t in text)
    assert any(t.startswith("row 7 (case g): give exactly one of roi") for t in text)
    with pytest.raises(ManifestError) as err:
        validate_manifest(_write(files, rows))
    assert len(err.value.problems) == len(m.problems) >= 7
    assert "row 4" in str(err.value) and "row 5" in str(err.value)


def test_structural_problems_fail_at_once(files):
    with pytest.raises(ManifestError, match=r"missing required column 'patient_id' \(found 'patient'\).*no ROI column"):
        load_manifest(_write(files, [dict(case_id="a", patient="p", label=1, t1="a", fs="b")]))
    with pytest.raises(ManifestError, match="file not found"):
        load_manifest(files / "absent.csv")
    bad = files / "bad.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(ManifestError, match="cannot parse as Parquet"):
        load_manifest(bad)


def test_bad_roi_values(files):
    base = dict(case_id="a", patient_id="p1", label="1", site="H", t1="a_t1.nii.gz", fs="a_fs.nii.gz")
    m = load_manifest(_write(files, [
        {**base, "roi_center_mm": "1,2"},
        {**base, "case_id": "b", "roi_center_mm": "1,x,3"},
    ]))
    text = " ".join(str(p) for p in m.problems)
    assert "roi_center_mm needs 3 numbers" in text and "roi_center_mm needs numbers" in text
    m = load_manifest(_write(files, [{**base, "roi_bbox_mm": "0,0,0,-1,5,5"}]))
    assert "x0<x1" in str(m.problems[0])
