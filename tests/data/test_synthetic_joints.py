"""Per-joint truth of the synthetic cohort (distmsfa.data.synthetic.joints, issue 13)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from distmsfa.data.synthetic import generate_cohort
from distmsfa.data.synthetic.joints import case_joint_truth, joint_truth


def _maps():
    roi = np.zeros((4, 10, 20), np.uint8)
    roi[1:3, 2:8, 2:6] = 2     # right joint (low x in this toy grid)
    roi[1:3, 2:8, 14:18] = 1   # left joint
    return roi, np.zeros_like(roi)


def test_finding_inside_or_touching_a_joint_makes_only_that_joint_positive():
    roi, les = _maps()
    les[1, 4, 3] = 1                      # bmo inside the right ROI
    assert case_joint_truth(les, roi, True) == {"left_voxels": 0, "left": 0, "right_voxels": 1, "right": 1}
    les[:] = 0
    les[2, 4, 18] = 2                     # erosion one voxel outside the left ROI: touches it
    t = case_joint_truth(les, roi, True)
    assert (t["left"], t["right"]) == (1, 0)
    les[:] = 0
    les[2, 4, 10] = 3                     # sclerosis far from both joints
    t = case_joint_truth(les, roi, True)
    assert (t["left"], t["right"]) == (0, 0)


def test_mimics_and_non_axspa_patients_give_no_positive_joint():
    roi, les = _maps()
    for code in (5, 6, 7, 8):             # stir_only, remote_oedema, oci, degenerative
        les[1, 4, 3] = code
        assert case_joint_truth(les, roi, True)["right"] == 0
    les[1, 4, 3] = 1
    les[1, 4, 15] = 4
    t = case_joint_truth(les, roi, False)  # axSpA-like findings, but the patient is not axSpA
    assert (t["left"], t["right"]) == (0, 0) and t["left_voxels"] == 1 and t["right_voxels"] == 1
    with pytest.raises(ValueError, match="same grid"):
        case_joint_truth(les[:, :, :10], roi, True)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    # seed 2, n 6: one unilateral (left) and one bilateral axSpA case, four non-axSpA cases.
    out = tmp_path_factory.mktemp("joints")
    generate_cohort(out, n=6, seed=2, progress=False)
    return out


def test_joint_truth_of_a_generated_cohort_follows_the_findings_sides(cohort):
    t = joint_truth(cohort)
    truth = pd.read_csv(cohort / "truth.csv", dtype={"case_id": str}).set_index("case_id")
    assert list(t.columns) == ["case_id", "true_label", "left", "right", "left_voxels", "right_voxels"]
    assert len(t) == 6
    kinds = {"bmo", "erosion", "sclerosis", "fat_metaplasia"}
    seen = set()
    for r in t.itertuples():
        assert r.true_label == int(truth.loc[r.case_id, "true_label"])
        if not r.true_label:
            assert (r.left, r.right) == (0, 0)
            continue
        # the finding centres' sides (LPS +x = patient left) are the positive joints
        sides = {"left" if f["center_lps_mm"][0] > 0 else "right"
                 for f in json.loads(truth.loc[r.case_id, "findings"]) if f["kind"] in kinds}
        assert {s for s in ("left", "right") if getattr(r, s)} == sides
        seen.add(len(sides))
    assert seen == {1, 2}, "the fixture cohort should hold a unilateral and a bilateral case"


def test_missing_lesion_map_names_the_case(cohort, tmp_path):
    import shutil

    copy = tmp_path / "c"
    shutil.copytree(cohort, copy)
    m = pd.read_csv(copy / "manifest.csv", dtype={"case_id": str})
    (copy / m.loc[1, "lesion"]).unlink()
    with pytest.raises(FileNotFoundError, match=m.loc[1, "case_id"]):
        joint_truth(copy)
