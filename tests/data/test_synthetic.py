"""The synthetic sacroiliac cohort: output contract, determinism, geometry, findings, sites."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from distmsfa.config import ConfigError
from distmsfa.data.synthetic import LESION_CODES, CohortConfig, generate_cohort, plan_cohort
from distmsfa.data.synthetic.findings import PERIARTICULAR

CORE_COLUMNS = ["case_id", "patient_id", "label", "site", "t1", "fs", "roi"]


def _arr(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """16 cases over both sites; reused by the read-only tests below."""
    out = tmp_path_factory.mktemp("cohort")
    manifest = generate_cohort(out, n=16, seed=3, progress=False)
    return out, manifest


def test_manifest_contract_and_files(cohort):
    out, manifest = cohort
    assert manifest == out / "manifest.csv"
    df = pd.read_csv(manifest)
    assert list(df.columns[:7]) == CORE_COLUMNS and {"lesion", "subtype"} <= set(df.columns)
    assert len(df) == 16 and df.case_id.is_unique
    assert set(df.label) <= {0, 1} and df.label.nunique() == 2
    assert set(df.site) == {"TAH", "NHH"}
    for col in ("t1", "fs", "roi", "lesion"):
        assert not df[col].str.startswith("/").any(), "paths are relative to the manifest folder"
        assert all((out / p).is_file() for p in df[col])
    meta = json.loads((out / "cohort.json").read_text(encoding="utf-8"))
    assert meta["external_site"] == "NHH" and meta["seed"] == 3 and meta["sites"] == ["TAH", "NHH"]
    assert {s["name"] for s in meta["config"]["sites"]} >= {"TAH", "NHH"}
    assert meta["lesion_codes"] == LESION_CODES
    truth = pd.read_csv(out / "truth.csv")
    assert list(truth.case_id) == list(df.case_id)
    # recorded label = true label except the flipped ones
    assert ((truth.true_label ^ truth.label_flipped.astype(int)) == df.label).all()


def test_sequences_on_their_own_coronal_grids(cohort):
    out, manifest = cohort
    row = pd.read_csv(manifest).iloc[0]
    t1, fs = sitk.ReadImage(str(out / row.t1)), sitk.ReadImage(str(out / row.fs))
    roi = sitk.ReadImage(str(out / row.roi))
    assert t1.GetSpacing() != fs.GetSpacing() and t1.GetSize() != fs.GetSize()
    assert np.linalg.norm(np.subtract(t1.GetOrigin(), fs.GetOrigin())) > 0.5
    assert roi.GetSize() == t1.GetSize() and np.allclose(roi.GetOrigin(), t1.GetOrigin())
    for img in (t1, fs):
        d = np.asarray(img.GetDirection()).reshape(3, 3)
        # coronal slab "LIP": columns -> patient Left, Inferior, Posterior; slightly oblique
        assert d[0, 0] > 0.95 and d[2, 1] < -0.95 and d[1, 2] > 0.95
        assert not np.allclose(np.abs(d), np.eye(3)[:, [0, 2, 1]], atol=1e-3)
        assert img.GetSpacing()[2] > 2 * img.GetSpacing()[0], "thick coronal slices"


def test_roi_sides_and_anatomy_fits_the_crops(cohort):
    """Label 1 lies on the patient's left (LPS +x); both joints fit a 130 x 90 x 50 mm box
    (LR x SI x AP) around the ROI centroid, the crop that downstream profiles take."""
    out, manifest = cohort
    for row in pd.read_csv(manifest).itertuples():
        roi_img = sitk.ReadImage(str(out / row.roi))
        roi = sitk.GetArrayFromImage(roi_img)
        assert set(np.unique(roi)) == {0, 1, 2}
        pts = {}
        for lab in (1, 2):
            idx = np.argwhere(roi == lab)[:, ::-1].astype(float)  # (x, y, z) index order
            d = np.asarray(roi_img.GetDirection()).reshape(3, 3) * np.asarray(roi_img.GetSpacing())
            pts[lab] = np.asarray(roi_img.GetOrigin()) + idx @ d.T
        assert pts[1][:, 0].mean() > pts[2][:, 0].mean() + 40, "left joint (1) at larger LPS x than right (2)"
        allp = np.vstack([pts[1], pts[2]])
        ext = np.abs(allp - allp.mean(axis=0)).max(axis=0) * 2  # LPS x (LR), y (AP), z (SI)
        assert ext[0] < 130 and ext[2] < 90 and ext[1] < 50, (row.case_id, ext)


def test_lesions_lie_in_the_sacroiliac_region(cohort):
    out, manifest = cohort
    truth = pd.read_csv(out / "truth.csv").set_index("case_id")
    code_kind = {v: k for k, v in LESION_CODES.items()}
    seen = set()
    for row in pd.read_csv(manifest).itertuples():
        roi = _arr(out / row.roi) > 0
        les = _arr(out / row.lesion)
        findings = json.loads(truth.loc[row.case_id, "findings"])
        assert (truth.loc[row.case_id, "true_label"] == 1) == any(f["kind"] == "bmo" for f in findings)
        if truth.loc[row.case_id, "true_label"] == 1:
            assert (les == LESION_CODES["bmo"]).sum() > 0, "axSpA cases show their oedema"
        for code in np.unique(les[les > 0]):
            kind = code_kind[int(code)]
            seen.add(kind)
            inside = roi[les == code].mean()
            if kind in PERIARTICULAR:
                assert inside > 0.7, (row.case_id, kind, inside)
            else:  # remote oedema: away from the joint
                assert inside < 0.2, (row.case_id, kind, inside)
    assert {"bmo", "stir_only"} <= seen, f"both oedema kinds must occur in the 16-case cohort, saw {sorted(seen)}"


def test_deterministic_for_a_seed_and_worker_count(tmp_path):
    a = generate_cohort(tmp_path / "a", n=4, seed=7, progress=False)
    b = generate_cohort(tmp_path / "b", n=4, seed=7, progress=False, workers=2)
    c = generate_cohort(tmp_path / "c", n=4, seed=8, progress=False)
    assert a.read_text(encoding="utf-8") == b.read_text(encoding="utf-8")
    assert (tmp_path / "a/truth.csv").read_text(encoding="utf-8") == (tmp_path / "b/truth.csv").read_text(encoding="utf-8")
    differs = False
    for row in pd.read_csv(a).itertuples():
        for col in ("t1", "fs", "roi", "lesion"):
            x, y = tmp_path / "a" / getattr(row, col), tmp_path / "b" / getattr(row, col)
            assert np.array_equal(_arr(x), _arr(y)), (row.case_id, col)
            ix, iy = sitk.ReadImage(str(x)), sitk.ReadImage(str(y))
            assert ix.GetOrigin() == iy.GetOrigin() and ix.GetDirection() == iy.GetDirection()
        z = tmp_path / "c" / row.t1
        differs |= _arr(z).shape != _arr(tmp_path / "a" / row.t1).shape or not np.array_equal(
            _arr(z), _arr(tmp_path / "a" / row.t1))
    assert differs, "another seed gives other images"


def test_sites_differ_measurably(tmp_path):
    """The external 1.5 T site is noisier, coarser and scaled differently than TAH."""
    cfg = CohortConfig(axspa_fraction=0.5)
    m = generate_cohort(tmp_path, n=12, sites=("TAH", "NHH"), seed=1, config=cfg.replace(
        sites=tuple(s.replace(weight=1.0) for s in cfg.sites)), progress=False)
    stats: dict[str, list] = {"TAH": [], "NHH": []}
    for row in pd.read_csv(m).itertuples():
        img = sitk.ReadImage(str(tmp_path / row.t1), sitk.sitkFloat32)
        a = sitk.GetArrayFromImage(img)
        roi = _arr(tmp_path / row.roi) > 0
        level = np.median(a[roi])
        # noise: robust spread of the horizontal first difference in the flat muscle far
        # from the bones (top rows of the middle slice), relative to the marrow level
        mid = a[a.shape[0] // 2, :10, :]
        noise = np.median(np.abs(np.diff(mid, axis=1))) / level
        stats[row.site].append((level, noise, img.GetSpacing()[0]))
    tah, nhh = np.array(stats["TAH"]), np.array(stats["NHH"])
    assert len(tah) >= 4 and len(nhh) >= 4
    assert np.median(tah[:, 0]) > 1.2 * np.median(nhh[:, 0]), "intensity scale differs"
    assert np.median(nhh[:, 1]) > 1.3 * np.median(tah[:, 1]), "NHH is noisier"
    assert nhh[:, 2].min() > tah[:, 2].max(), "NHH is coarser in plane"


def test_dicom_series_match_the_nifti_geometry(tmp_path):
    generate_cohort(tmp_path / "nii", n=2, seed=5, progress=False)
    m = generate_cohort(tmp_path / "dcm", n=2, seed=5, fmt="dicom", progress=False)
    for row in pd.read_csv(m).itertuples():
        for seq in ("t1", "fs"):
            folder = tmp_path / "dcm" / getattr(row, seq)
            assert folder.is_dir()
            ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
            assert len(ids) == 1, "one series per folder"
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0]))
            d = reader.Execute()
            n = sitk.ReadImage(str(tmp_path / "nii" / "cases" / row.case_id / f"{seq}.nii.gz"))
            assert d.GetSize() == n.GetSize()
            np.testing.assert_allclose(d.GetSpacing(), n.GetSpacing(), atol=1e-4)
            np.testing.assert_allclose(d.GetOrigin(), n.GetOrigin(), atol=1e-3)
            np.testing.assert_allclose(d.GetDirection(), n.GetDirection(), atol=1e-6)
            assert np.array_equal(sitk.GetArrayFromImage(d), sitk.GetArrayFromImage(n))


def test_plan_labels_sites_repeats_and_label_noise():
    cfg = CohortConfig(label_noise=0.2, repeat_scan_rate=0.1)
    plan = plan_cohort(100, ("TAH", "NHH"), 0, cfg)
    df = pd.DataFrame(plan)
    assert len(df) == 100 and df.case_id.is_unique
    pat = df.drop_duplicates("patient_id")
    assert len(pat) == 90, "10 follow-up scans of existing patients"
    per_patient = df.groupby("patient_id")[["true_label", "label", "site"]].nunique()
    assert (per_patient == 1).all().all(), "a patient's scans share class, label and site"
    assert pat.label_flipped.sum() == 18 and (pat.label != pat.true_label).sum() == 18
    assert abs(pat.true_label.mean() - cfg.axspa_fraction) < 0.03
    assert (df.site == "NHH").mean() == pytest.approx(0.2, abs=0.03)
    assert plan == plan_cohort(100, ("TAH", "NHH"), 0, cfg)


def test_bad_arguments_say_how_to_fix(tmp_path):
    with pytest.raises(ConfigError, match="label_noise"):
        CohortConfig(label_noise=0.9)
    with pytest.raises(ConfigError, match="did you mean 'lesion_size'"):
        CohortConfig.from_dict({"lesion_sise": 1.0})
    with pytest.raises(ValueError, match="known sites: TAH, NHH, SZH"):
        generate_cohort(tmp_path / "x", n=4, sites=("TAH", "XYZ"), progress=False)
    with pytest.raises(ValueError, match="external site 'SZH' is not among"):
        generate_cohort(tmp_path / "x", n=4, external_site="SZH", progress=False)
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        generate_cohort(tmp_path / "user", n=4, progress=False)
    assert (tmp_path / "user" / "precious.txt").read_text(encoding="utf-8") == "keep me"


def test_cli_demo_data(tmp_path):
    import typer
    from typer.testing import CliRunner

    from distmsfa.cli.demo_data import demo_data

    app = typer.Typer()
    app.command()(demo_data)
    runner = CliRunner()
    res = runner.invoke(app, ["--out", str(tmp_path / "d"), "--n", "3", "--sites", "TAH,SZH",
                              "--seed", "2", "--label-noise", "0", "--quiet"])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(tmp_path / "d" / "manifest.csv")
    assert len(df) == 3 and set(df.site) <= {"TAH", "SZH"}
    meta = json.loads((tmp_path / "d" / "cohort.json").read_text(encoding="utf-8"))
    assert meta["config"]["label_noise"] == 0 and meta["seed"] == 2
    assert meta["external_site"] is None, "no NHH among the sites: no external site by default"
    res = runner.invoke(app, ["--out", str(tmp_path / "f"), "--n", "3", "--external-site", "TAH", "--quiet"])
    assert res.exit_code == 0 and json.loads((tmp_path / "f" / "cohort.json").read_text(encoding="utf-8"))["external_site"] == "TAH"
    for args, msg in ((["--profile", "huge"], "profile must be one of demo, clinical"),
                      (["--sites", "TAH,XYZ"], "unknown site 'XYZ'"),
                      (["--format", "png"], "format must be one of nifti, dicom")):
        bad = runner.invoke(app, ["--out", str(tmp_path / "e"), "--n", "3", *args])
        assert bad.exit_code == 2, bad.output
        assert bad.output.strip().count("\n") == 0 and msg in bad.output


@pytest.mark.slow
def test_manifest_round_trips_through_preprocessing(tmp_path):
    """The manifest is read as it is by `build_dataset` (serial path): every case becomes a
    pair, the external site is kept out of the folds, and the crop holds both joints."""
    from distmsfa.data import PreprocessConfig, build_dataset

    manifest = generate_cohort(tmp_path / "cohort", n=8, seed=4, progress=False)
    pre = PreprocessConfig(target_spacing_mm=(5.0, 2.5, 2.5), crop_size=(8, 48, 64), n_folds=2)
    rep = build_dataset(manifest, tmp_path / "ds", pre, address="serial", external_sites=("NHH",), progress=False)
    assert rep.n_failed == 0 and rep.n_done == 8, rep.failures
    ix = pd.read_parquet(tmp_path / "ds" / "index.parquet")
    src = pd.read_csv(manifest).set_index("case_id")
    assert set(ix.case_id) == set(src.index)
    assert (ix.set_index("case_id").label.astype(int) == src.label).all()
    assert ix[ix.site == "NHH"].fold.isna().all() and ix[ix.site == "TAH"].fold.notna().all()
    for row in ix.itertuples():
        pair = np.load(tmp_path / "ds" / row.pair_path)
        roi = np.load(tmp_path / "ds" / row.roi_path)
        assert pair.shape == (2, 8, 48, 64) and 0 <= pair.min() and pair.max() <= 1
        assert set(np.unique(roi)) == {0, 1, 2}, "both joints inside the demo crop"
        # W runs to patient left in LIP: the left joint (1) lies at larger W than the right (2)
        assert np.argwhere(roi == 1)[:, 2].mean() > np.argwhere(roi == 2)[:, 2].mean()


def test_yaml_config_with_a_custom_site(tmp_path):
    """`--config` takes CohortConfig keys from YAML, custom scanner profiles included;
    flags override the file."""
    import typer
    from typer.testing import CliRunner

    from distmsfa.cli.demo_data import demo_data

    (tmp_path / "c.yaml").write_text(
        "label_noise: 0.0\nlesion_size: 1.3\nsites:\n"
        "  - {name: TAH}\n"
        "  - {name: GZH, field_strength_t: 1.5, noise_t1: 0.08, t1_scale: 500.0, inplane_scale: 1.5}\n")
    app = typer.Typer()
    app.command()(demo_data)
    res = CliRunner().invoke(app, ["--out", str(tmp_path / "d"), "--n", "4", "--sites", "TAH,GZH",
                                   "--external-site", "GZH", "--config", str(tmp_path / "c.yaml"),
                                   "--lesion-size", "1.1", "--quiet"])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "d" / "cohort.json").read_text(encoding="utf-8"))
    assert meta["config"]["lesion_size"] == 1.1 and meta["config"]["label_noise"] == 0.0
    assert meta["external_site"] == "GZH"
    gzh = pd.read_csv(tmp_path / "d" / "manifest.csv").query("site == 'GZH'").iloc[0]
    assert sitk.ReadImage(str(tmp_path / "d" / gzh.t1)).GetSpacing()[0] == pytest.approx(1.6 * 1.5, rel=1e-4)
    (tmp_path / "bad.yaml").write_text("label_nois: 0.1\n")
    bad = CliRunner().invoke(app, ["--out", str(tmp_path / "e"), "--config", str(tmp_path / "bad.yaml")])
    assert bad.exit_code == 2 and "did you mean 'label_noise'" in bad.output
