"""build_dataset (serial path): index contents, folds kept across runs, resuming, URIs."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from distmsfa.data import PreprocessConfig, build_dataset
from distmsfa.data.index import INDEX_COLUMNS, load_array, load_pair, read_index
from distmsfa.io.phantom import CORONAL, write_case

CFG = PreprocessConfig(crop_size=(8, 16, 40), n_folds=2, seed=3)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """10 small cases, 8 patients, two sites (NHH = external), axial and coronal T1 grids."""
    d = tmp_path_factory.mktemp("cohort")
    rows = []
    for i in range(10):
        cid = f"c{i:02d}"
        write_case(d, cid, shift_mm=(i, -i, 0.5 * i), seed=i,
                   t1_direction=CORONAL if i % 3 == 0 else (1, 0, 0, 0, 1, 0, 0, 0, 1),
                   t1_spacing=(4.0, 4.0, 8.0 + (i % 2)))
        rows.append(dict(case_id=cid, patient_id=f"p{min(i, 7)}", label=str(min(i, 7) % 2) if i != 5 else "",
                         site="NHH" if i in (1, 4) else "H1",
                         t1=f"{cid}_t1.nii.gz", fs=f"{cid}_fs.nii.gz", roi=f"{cid}_roi.nii.gz"))
    pd.DataFrame(rows).to_csv(d / "manifest.csv", index=False)
    return d


def test_index_folds_and_fingerprint(cohort, tmp_path):
    out = tmp_path / "ds"
    rep = build_dataset(cohort / "manifest.csv", out, CFG, address="serial", progress=False, external_sites=["NHH"])
    assert (rep.n_done, rep.n_skipped, rep.n_failed) == (10, 0, 0)
    idx = read_index(out)
    assert list(idx.columns[: len(INDEX_COLUMNS)]) == list(INDEX_COLUMNS)
    assert len(idx) == 10 and idx["case_id"].is_unique
    # default spacing = median over T1 headers in canonical (D,H,W) = (A-P, S-I, R-L) order (LIP).
    # Axial T1 (c01 c02 c04 c05 c07 c08): D=4, H=8 or 9 (z), W=4; coronal T1 (c00 c03 c06 c09):
    # slices along A-P, so D=8 or 9, H=4, W=4.  Medians: D=4, H=8, W=4 (the raw x,y,z headers
    # would give 4, 4, 8.5).
    fp = json.loads((out / "fingerprint.json").read_text(encoding="utf-8"))
    assert fp["dataset"]["t1"]["n"] == 10
    assert tuple(rep.spacing_dhw) == (4.0, 8.0, 4.0)
    assert tuple(fp["dataset"]["t1"]["median_spacing_dhw"]) == (4.0, 8.0, 4.0)
    for _, row in idx.iterrows():
        pair = load_pair(out, row, verify=True)
        assert pair.shape == (2, 8, 16, 40) and pair.dtype == np.float16 and list(row["shape"]) == [2, 8, 16, 40]
        assert 0 <= float(pair.min()) and float(pair.max()) <= 1
        assert load_array(out, row["roi_path"]).shape == (8, 16, 40)
        assert set(json.loads(row["source_sha256"])) == {"t1", "fs", "roi"}
        assert len(row["crop_direction"]) == 9 and len(row["crop_origin_mm"]) == 3
    # folds: external and unlabelled kept out; patients never split across folds
    ext = idx[idx["site"] == "NHH"]
    assert ext["is_external"].all() and ext["fold"].isna().all()
    assert idx.loc[idx["case_id"] == "c05", "fold"].isna().all()  # unlabelled
    internal = idx[~idx["is_external"] & idx["label"].notna()]
    assert internal["fold"].notna().all() and set(internal["fold"]) == {0, 1}
    assert internal.groupby("patient_id")["fold"].nunique().max() == 1  # p7 has c07, c08, c09
    folds = pd.read_parquet(out / "folds.parquet")
    assert set(folds.columns) >= {"case_id", "patient_id", "fold"}
    assert pd.read_csv(out / "failed.csv").empty


def test_rerun_skips_keeps_folds_and_redoes_changed(cohort, tmp_path):
    out = tmp_path / "ds"
    build_dataset(cohort / "manifest.csv", out, CFG, address="serial", progress=False, external_sites=["NHH"])
    folds0 = pd.read_parquet(out / "folds.parquet")
    idx0 = read_index(out)
    rep = build_dataset(cohort / "manifest.csv", out, CFG, address="serial", progress=False)  # ext sites remembered
    assert (rep.n_done, rep.n_skipped) == (0, 10)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "folds.parquet"), folds0)
    pd.testing.assert_frame_equal(read_index(out)[idx0.columns], idx0)
    # a corrupted pair file and a changed source are recomputed; the rest skipped
    row = idx0.iloc[2]
    (out / row["pair_path"]).write_bytes(b"garbage")
    man = pd.read_csv(cohort / "manifest.csv", dtype=str, keep_default_na=False)
    man.loc[3, "fs"] = "c00_fs.nii.gz"  # c03's FS source changes
    for c in ("t1", "fs", "roi"):
        man[c] = [str(cohort / v) for v in man[c]]
    man.to_csv(tmp_path / "m2.csv", index=False)
    # another manifest file: refused unless asked to update (nothing changed when refused)
    with pytest.raises(ValueError, match="built from another manifest .*Pass --update"):
        build_dataset(tmp_path / "m2.csv", out, CFG, address="serial", progress=False)
    assert (out / row["pair_path"]).read_bytes() == b"garbage"
    rep = build_dataset(tmp_path / "m2.csv", out, CFG, address="serial", progress=False, update=True)
    assert (rep.n_done, rep.n_skipped) == (2, 8)
    redone = read_index(out).set_index("case_id").loc[row["case_id"]]
    assert load_pair(out, redone, verify=True).shape == (2, 8, 16, 40)  # the corrupt file was rewritten
    # other crop -> other fingerprint: refused without --update, then everything recomputed
    idx1 = read_index(out)
    with pytest.raises(ValueError, match="preprocessed with other settings"):
        build_dataset(tmp_path / "m2.csv", out, CFG.replace(crop_size=(8, 16, 36)), address="serial", progress=False)
    pd.testing.assert_frame_equal(read_index(out), idx1)
    rep = build_dataset(tmp_path / "m2.csv", out, CFG.replace(crop_size=(8, 16, 36)), address="serial",
                        progress=False, update=True)
    assert rep.n_done == 10
    pd.testing.assert_frame_equal(pd.read_parquet(out / "folds.parquet"), folds0)


def test_new_cases_join_folds_without_moving_old_ones(cohort, tmp_path):
    out = tmp_path / "ds"
    man = pd.read_csv(cohort / "manifest.csv", dtype=str, keep_default_na=False)
    for c in ("t1", "fs", "roi"):
        man[c] = [str(cohort / v) for v in man[c]]
    man.iloc[:6].to_csv(tmp_path / "first.csv", index=False)
    build_dataset(tmp_path / "first.csv", out, CFG, address="serial", progress=False, external_sites=["NHH"])
    f0 = pd.read_parquet(out / "folds.parquet").set_index("case_id")
    man.to_csv(tmp_path / "all.csv", index=False)
    rep = build_dataset(tmp_path / "all.csv", out, CFG, address="serial", progress=False, external_sites=["NHH"],
                        update=True)
    assert (rep.n_done, rep.n_skipped) == (4, 6)
    f1 = pd.read_parquet(out / "folds.parquet").set_index("case_id")
    pd.testing.assert_series_equal(f1.loc[f0.index, "fold"], f0["fold"])
    assert f1.loc[["c06", "c07", "c08", "c09"], "fold"].notna().all()
    assert f1.loc[["c07", "c08", "c09"], "fold"].nunique() == 1  # one patient, one fold
    # changing fold settings without --refold is refused; with refold it rewrites
    with pytest.raises(ValueError, match="never rewritten silently: pass --refold"):
        build_dataset(tmp_path / "all.csv", out, CFG.replace(n_folds=3), address="serial", progress=False)
    with pytest.raises(ValueError, match="external sites"):
        build_dataset(tmp_path / "all.csv", out, CFG, address="serial", progress=False, external_sites=["H1"])
    rep = build_dataset(tmp_path / "all.csv", out, CFG.replace(n_folds=3), address="serial", progress=False,
                        external_sites=["NHH"], refold=True)
    assert set(read_index(out)["fold"].dropna()) == {0, 1, 2} and rep.n_skipped == 10


def test_uri_sources_through_fsspec_and_file_uri(cohort, tmp_path):
    import fsspec

    mem = fsspec.filesystem("memory")
    for w in ("t1", "fs", "roi"):
        mem.pipe(f"/bucket/c00_{w}.nii.gz", (cohort / f"c00_{w}.nii.gz").read_bytes())
    rows = [dict(case_id="mem", patient_id="p", label="1", site="H1", t1="memory://bucket/c00_t1.nii.gz",
                 fs="memory://bucket/c00_fs.nii.gz", roi="memory://bucket/c00_roi.nii.gz"),
            dict(case_id="fileuri", patient_id="q", label="0", site="H1", t1=f"file://{cohort}/c00_t1.nii.gz",
                 fs=f"file://{cohort}/c00_fs.nii.gz", roi=f"file://{cohort}/c00_roi.nii.gz")]
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    rep = build_dataset(tmp_path / "m.csv", tmp_path / "ds", CFG.replace(target_spacing_mm=(6.0, 6.0, 6.0)),
                        address="serial", progress=False)
    assert rep.n_done == 2, rep.failures
    idx = read_index(tmp_path / "ds").set_index("case_id")
    a, b = (load_pair(tmp_path / "ds", idx.loc[c]) for c in ("mem", "fileuri"))
    np.testing.assert_array_equal(a, b)
    assert idx.loc["mem", "source_sha256"] == idx.loc["fileuri", "source_sha256"]


def test_output_to_object_store_uri(cohort, tmp_path):
    """The dataset root may be a URI (pyarrow filesystem); here a file:// URI."""
    uri = f"file://{tmp_path}/remote"
    os.makedirs(tmp_path / "remote")
    man = pd.read_csv(cohort / "manifest.csv", dtype=str, keep_default_na=False).iloc[:2]
    for c in ("t1", "fs", "roi"):
        man[c] = [str(cohort / v) for v in man[c]]
    man.to_csv(tmp_path / "m.csv", index=False)
    rep = build_dataset(tmp_path / "m.csv", uri, CFG, address="serial", progress=False)
    assert rep.n_done == 2
    idx = read_index(uri)
    assert load_pair(uri, idx.iloc[0], verify=True).shape == (2, 8, 16, 40)


def test_crash_mid_run_leaves_a_valid_checkpointed_index(cohort, tmp_path, monkeypatch):
    """The driver dies after 4 cases (Ctrl-C): the index on disk is the last checkpoint,
    readable and consistent, and the next run skips what was done."""
    import distmsfa.data.build as build

    out = tmp_path / "ds"
    calls = {"n": 0}
    real = build.process_case

    def dying(task):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(build, "process_case", dying)
    monkeypatch.setattr(build, "CHECKPOINT_EVERY_S", 0.0)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(cohort / "manifest.csv", out, CFG, address="serial", progress=False)
    idx = read_index(out)
    assert len(idx) == 4 and idx["case_id"].is_unique
    for _, row in idx.iterrows():
        load_pair(out, row, verify=True)
    monkeypatch.setattr(build, "process_case", real)
    rep = build_dataset(cohort / "manifest.csv", out, CFG, address="serial", progress=False)
    assert (rep.n_done, rep.n_skipped) == (6, 4)
