"""`distmsfa report` from two tiny finished runs: tables equal the runs' summaries, p-values
are the named tests, figures are real PNGs, the HTML is self-contained, bad runs refused."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import typer
from scipy import stats as sps
from typer.testing import CliRunner

from distmsfa.evaluation.figures import png_is_not_blank
from distmsfa.evaluation.report import make_report
from distmsfa.evaluation.runs import ReportError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report(two_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return make_report(two_runs, out, n_boot=50)


def test_tables_equal_the_runs_summaries(two_runs, report):
    s = {m: json.loads((p / "summary.json").read_text(encoding="utf-8")) for m, p in zip(("msfanet", "baseline"), two_runs)}
    allruns = pd.read_csv(report.out / "tables" / "runs.csv")
    for _, row in allruns.iterrows():
        for k in ("auc", "acc", "sen", "spec", "f1"):
            assert row[f"{k}_mean"] == pytest.approx(s[row["model"]]["mean"][k], nan_ok=True)
            assert row[f"{k}_std"] == pytest.approx(s[row["model"]]["std"][k], nan_ok=True)
        assert "inner-split selection" in row["estimate"]
    ext = pd.read_csv(report.out / "tables" / "table4.csv")
    assert list(ext["model"]) == ["msfanet"]  # the baseline is not a Table 4 model
    assert ext.loc[0, "auc_mean"] == pytest.approx(s["msfanet"]["external"]["mean"]["auc"], nan_ok=True)
    assert ext.loc[0, "auc_fold_ensemble"] == pytest.approx(s["msfanet"]["external"]["ensemble"]["auc"], nan_ok=True)
    t5 = pd.read_csv(report.out / "tables" / "table5.csv")
    assert list(t5["model"]) == ["baseline", "msfanet"] and t5["paper AUC"].tolist() == ["0.749±0.096", "0.840±0.011"]


def test_p_values_are_the_named_tests(two_runs, report):
    from distmsfa.evaluation.stats import delong_paired_test

    t = pd.read_csv(report.out / "tables" / "runs.csv")
    base = t[t["model"] == "baseline"].iloc[0]
    assert t[t["model"] == "msfanet"].iloc[0]["p (paired t-test over folds (AUC), Holm)"] == "reference"
    sa, sb = (json.loads((p / "summary.json").read_text(encoding="utf-8")) for p in two_runs)
    folds = sorted(sa["folds"])
    want_t = sps.ttest_rel([sa["folds"][f]["auc"] for f in folds], [sb["folds"][f]["auc"] for f in folds]).pvalue
    assert base["p_ttest_raw"] == pytest.approx(want_t, nan_ok=True)
    oa, ob = (pd.read_csv(p / "oof_predictions.csv", dtype={"case_id": str}) for p in two_runs)
    m = oa.merge(ob, on="case_id", suffixes=("_a", "_b"))
    want_d = delong_paired_test(m["label_a"], m["prob_a"], m["prob_b"])[3]
    assert base["p_delong_raw"] == pytest.approx(want_d)
    assert base["p_delong_holm"] == pytest.approx(want_d)  # one comparison: Holm leaves it
    md = (report.out / "report.md").read_text(encoding="utf-8")
    assert "paired DeLong (pooled out-of-fold AUC), Holm" in md and "Zou" in md


def test_figures_are_real_pngs_and_the_html_is_self_contained(report):
    pngs = sorted((report.out / "figures").glob("*.png"))
    names = {p.name for p in pngs}
    assert {"fig4_runs.png", "fig4_table4.png"} <= names
    assert any(n.startswith("fig5_gradcam_") for n in names) and any(n.startswith("curves_") for n in names)
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png_is_not_blank(p), p
    assert (report.out / "figures" / "fig4_runs.svg").read_text(encoding="utf-8").lstrip().startswith("<?xml")
    html = (report.out / "report.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") == len([p for p in pngs if not p.name.startswith("localisation")])
    assert "src='figures" not in html and "inner-split selection" in html


def _app():
    from distmsfa.cli.report import report as cmd

    app = typer.Typer()
    app.command("report")(cmd)
    app.command("noop")(lambda: None)
    return app


def test_bad_runs_are_refused_in_one_line(two_runs, tmp_path):
    a, b = two_runs
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="not a CV run folder"):
        make_report([tmp_path / "empty"], tmp_path / "o1")
    going = tmp_path / "going"
    shutil.copytree(a, going)
    (going / "summary.json").unlink()
    with pytest.raises(ReportError, match="still going"):
        make_report([going], tmp_path / "o2")
    split = tmp_path / "split"
    shutil.copytree(b, split)
    oof = pd.read_csv(split / "oof_predictions.csv", dtype={"case_id": str})
    oof.loc[0, "fold"] = 1 - oof.loc[0, "fold"]
    oof.to_csv(split / "oof_predictions.csv", index=False)
    with pytest.raises(ReportError, match="different fold split"):
        make_report([a, split], tmp_path / "o3")
    other = tmp_path / "other"
    shutil.copytree(b, other)
    oof = pd.read_csv(other / "oof_predictions.csv", dtype={"case_id": str})
    oof.loc[0, "case_id"] = "zz999"
    oof.to_csv(other / "oof_predictions.csv", index=False)
    with pytest.raises(ReportError, match="different datasets"):
        make_report([a, other], tmp_path / "o4")
    r = CliRunner().invoke(_app(), ["report", str(a), str(going), "--out", str(tmp_path / "o5")])
    assert r.exit_code == 2 and r.output.strip().count("\n") == 0 and "still going" in r.output


def test_localisation_section_uses_lesion_masks_on_the_crop_grid(two_runs, tiny_data, tmp_path):
    """Lesion masks written on each case's crop grid (the tiny cases' bright FS blob) come back
    voxel for voxel through the index geometry, and the report scores every branch."""
    import SimpleITK as sitk

    from distmsfa.data.index import load_pair, read_index
    from distmsfa.evaluation.localisation import lesion_mask_in_crop

    idx = read_index(tiny_data)
    rows, truth = [], {}
    for r in idx.to_dict("records"):
        if int(r["label"]) != 1:
            continue
        blob = (load_pair(str(tiny_data), r)[1] > 0.5).astype(np.uint8)  # FS + 0.5 only inside the blob
        img = sitk.GetImageFromArray(blob)
        img.SetSpacing(tuple(float(v) for v in list(r["spacing_mm"])[::-1]))
        img.SetOrigin(tuple(float(v) for v in r["crop_origin_mm"]))
        img.SetDirection(tuple(float(v) for v in r["crop_direction"]))
        sitk.WriteImage(img, str(tmp_path / f"{r['case_id']}.nii.gz"))
        rows.append({"case_id": r["case_id"], "lesion": f"{r['case_id']}.nii.gz"})
        truth[r["case_id"]] = blob.astype(bool)
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    c0 = rows[0]["case_id"]
    got = lesion_mask_in_crop(str(tmp_path / rows[0]["lesion"]), idx.set_index("case_id").loc[c0].to_dict())
    assert got.any() and (got == truth[c0]).all()
    rep = make_report(two_runs[:1], tmp_path / "rep", lesions=str(tmp_path / "manifest.csv"), loc_cases=4, n_boot=20)
    loc = rep.localisation["MSFANet"]
    assert loc["n_cases"] == 4 and set(loc["branches"]) == {"t1", "fs", "fuse"}
    for s in list(loc["branches"].values()) + [loc["uniform"], loc["random_blobs"]]:
        assert 0.0 <= s["pointing"] <= 1.0 and 0.0 <= s["energy"] <= 1.0
    assert png_is_not_blank(rep.out / "figures" / "localisation.png")
    assert "pointing game" in (rep.out / "report.md").read_text(encoding="utf-8")


def test_montage_rows_carry_left_right_shares_and_label_the_figure(two_runs, tiny_data, tmp_path):
    """cams.case_evidence splits a case's maps by its crop ROI (given or predicted); the montage
    writes the shares under each map; an ROI without joint labels gives none."""
    import types

    from distmsfa.data.index import read_index, save_array
    from distmsfa.evaluation import figures
    from distmsfa.evaluation.cams import case_evidence

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    row = read_index(data).iloc[0]
    d, h, w = tuple(row["shape"])[-3:]
    roi = np.zeros((d, h, w), np.uint8)
    roi[:, :, w // 2:] = 1
    roi[:, :, : w // 4] = 2
    run = types.SimpleNamespace(record={"data": str(data)})
    heat = np.zeros((d, h, w), np.float32)
    heat[:, :, w - 4:] = 1.0  # all on the left joint
    assert case_evidence(run, row, {"t1": heat}) is None  # the tiny dataset's ROIs are empty
    save_array(data, row["roi_path"], roi)
    ev = case_evidence(run, row, {"t1": heat, "fs": np.ones((d, h, w), np.float32)})
    assert ev["t1"]["left"] == 1.0 and ev["t1"]["side"] == "left"
    assert ev["fs"]["left"] == pytest.approx(0.5, abs=1e-3) and ev["fs"]["right"] == pytest.approx(0.25, abs=1e-3)
    x = np.random.default_rng(0).random((2, d, h, w)).astype(np.float32)
    out = figures.gradcam_montage([{"title": "TP c000", "x": x, "maps": {"t1": heat, "fs": heat}, "evidence": ev}],
                                  tmp_path / "fig5", "Figure 5")
    assert png_is_not_blank(out[0])
