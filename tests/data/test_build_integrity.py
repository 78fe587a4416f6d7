"""Datasets that bad input cannot corrupt (issue 11), through the `distmsfa` CLI, on the
serial path and on the Ray path (one Ray connection for the module, to the session's
cluster): each refusal leaves the earlier index, folds and pairs as they were; each
per-case error names the case and a file within it, and the good cases go on."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from distmsfa.cli.main import app
from distmsfa.data.index import PairChecksumError, read_index
from distmsfa.io.phantom import write_case, write_dicom_series

GOOD = ("g1", "g2", "g3")
COMMON = ["--no-progress", "--crop", "8,16,24", "--spacing", "6,6,6"]
EXECUTORS = ["serial", pytest.param("ray", marks=[pytest.mark.ray, pytest.mark.slow])]


@pytest.fixture(scope="module")
def ray_driver(ray_cluster):
    """This test process connected once to the session cluster; the CLI's build reuses it."""
    import ray

    ray.init(address=ray_cluster.address, log_to_driver=False)
    yield ray_cluster.address
    ray.shutdown()


def _exec(executor: str, request) -> list[str]:
    return ["--serial"] if executor == "serial" else ["--address", request.getfixturevalue("ray_driver")]


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    d = tmp_path_factory.mktemp("src")
    for i, cid in enumerate(GOOD):
        write_case(d, cid, shift_mm=(2.0 * i, 0, 0), seed=i)
    return d


def _row(d, cid, srcid=None, **over):
    s = srcid or cid
    row = dict(case_id=cid, patient_id=f"p-{cid}", label="1" if cid[-1] in "13579" else "0", site="H1",
               t1=str(Path(d) / f"{s}_t1.nii.gz"), fs=str(Path(d) / f"{s}_fs.nii.gz"), roi=str(Path(d) / f"{s}_roi.nii.gz"))
    row.update(over)
    return row


def _manifest(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def cli(*args):
    res = CliRunner().invoke(app, [str(a) for a in args])
    if args and args[0] == "preprocess" and res.exit_code in (0, 1):  # the run took the path asked for
        assert ("(serial)" if "--serial" in args else "(ray)") in res.output, res.output
    return res


def _snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _state(out: Path):
    return read_index(out), pd.read_parquet(out / "folds.parquet"), {
        p.name: p.read_bytes() for p in sorted((out / "pairs").iterdir())}


def _same_state(a, b) -> None:
    pd.testing.assert_frame_equal(a[0], b[0])
    pd.testing.assert_frame_equal(a[1], b[1])
    assert a[2] == b[2]


def _case_errors(res, case_id: str) -> list[str]:
    return [ln for ln in res.output.splitlines() if ln.startswith(f"error: case {case_id}:")]


def _no_machine_paths(res, tmp: Path) -> None:
    for ln in res.output.splitlines():
        if ln.startswith("error: case"):
            assert str(tmp) not in ln and "/tmp/" not in ln, ln


def _check_ok(out: Path) -> None:
    res = cli("inspect", out, "--check")
    assert res.exit_code == 0 and res.output.startswith("ok:"), res.output


def _build_good(src: Path, tmp: Path, executor_args) -> tuple[Path, Path]:
    man = _manifest(tmp / "cohortA" / "manifest.csv", [_row(src, c) for c in GOOD])
    out = tmp / "ds"
    res = cli("preprocess", man, "--out", out, *COMMON, *executor_args)
    assert res.exit_code == 0, res.output
    return man, out


# ---------------------------------------------------------------- silent garbage -> per-case errors

@pytest.mark.parametrize("executor", EXECUTORS)
def test_dicom_series_with_an_unreadable_slice(executor, request, src, tmp_path):
    t1 = sitk.ReadImage(str(src / "g1_t1.nii.gz"))
    rows = [_row(src, c) for c in GOOD]
    for cid, which in (("okdcm", None), ("cutfirst", 0), ("cutmid", 5), ("cutlast", t1.GetDepth() - 1)):
        folder = tmp_path / cid / "t1"
        write_dicom_series(t1, folder, "t1 tse", f"1.2.3.{len(rows)}")
        if which is not None:
            f = folder / f"IM{which:04d}.dcm"
            f.write_bytes(f.read_bytes()[:-300])  # pixel data cut short
        rows.append(_row(src, cid, "g1", t1=str(tmp_path / cid)))
    depth, dz = t1.GetDepth(), t1.GetSpacing()[2]
    # slice count or spacing declared in the headers that the files on disk do not match
    write_dicom_series(t1, tmp_path / "lastgone" / "t1", "t1 tse", "1.2.3.90", skip=(depth - 1,),
                       extra={"0020|1002": str(depth)})
    write_dicom_series(t1, tmp_path / "halfgone" / "t1", "t1 tse", "1.2.3.91", skip=tuple(range(1, depth, 2)),
                       extra={"0018|0088": f"{dz:.3f}"})
    rows += [_row(src, "lastgone", "g1", t1=str(tmp_path / "lastgone")), _row(src, "halfgone", "g1", t1=str(tmp_path / "halfgone"))]
    man = _manifest(tmp_path / "m.csv", rows)
    res = cli("preprocess", man, "--out", tmp_path / "ds", *COMMON, *_exec(executor, request))
    assert res.exit_code == 0, res.output
    for cid, which in (("cutfirst", 0), ("cutmid", 5), ("cutlast", t1.GetDepth() - 1)):
        err = _case_errors(res, cid)
        assert len(err) == 1 and f"file t1/IM{which:04d}.dcm is not readable DICOM" in err[0], res.output
    assert f"the series has {depth - 1} slice files but its headers declare {depth} images" in _case_errors(res, "lastgone")[0]
    assert f"are {2 * dz:.3g} mm apart but the header declares {dz:.3g} mm between slices" in _case_errors(res, "halfgone")[0]
    _no_machine_paths(res, tmp_path)
    assert set(read_index(tmp_path / "ds")["case_id"]) == {*GOOD, "okdcm"}
    _check_ok(tmp_path / "ds")


@pytest.mark.parametrize("executor", EXECUTORS)
def test_rebuild_from_a_broken_manifest_keeps_the_dataset(executor, request, src, tmp_path):
    ex = _exec(executor, request)
    man, out = _build_good(src, tmp_path, ex)
    before = _state(out)
    # the same manifest, every path broken (a moved source folder): nothing may be lost
    _manifest(man, [_row(src, c, t1=str(tmp_path / "moved" / f"{c}_t1.nii.gz")) for c in GOOD])
    res = cli("preprocess", man, "--out", out, *COMMON, *ex)
    assert res.exit_code == 1, res.output
    for c in GOOD:
        err = _case_errors(res, c)
        assert err and "t1 file not found" in err[0] and "previous version stays in the index" in err[0], res.output
    _same_state(_state(out), before)
    _check_ok(out)
    # --force: the index becomes exactly this run's good cases; dropped cases leave no files
    _manifest(man, [_row(src, "g1", t1=str(tmp_path / "moved.nii.gz"))] + [_row(src, c) for c in GOOD[1:]])
    res = cli("preprocess", man, "--out", out, *COMMON, *ex, "--force")
    assert res.exit_code == 0 and "warning: case g1: dropped from the index" in res.output, res.output
    assert sorted(read_index(out)["case_id"]) == ["g2", "g3"]
    assert not (out / "pairs" / "g1.npy").exists()
    assert sorted(pd.read_parquet(out / "folds.parquet")["case_id"]) == ["g2", "g3"]
    _check_ok(out)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_out_of_another_cohort_is_refused_then_updated(executor, request, src, tmp_path):
    ex = _exec(executor, request)
    _, out = _build_good(src, tmp_path, ex)
    before = _snapshot(out)
    # cohort B reuses the case id g1 for another patient's images, and adds h1
    man_b = _manifest(tmp_path / "cohortB" / "manifest.csv", [_row(src, "g1", "g2", patient_id="pB1"), _row(src, "h1", "g3")])
    res = cli("preprocess", man_b, "--out", out, *COMMON, *ex)
    assert res.exit_code == 2, res.output
    assert "built from another manifest (cohortA/manifest.csv)" in res.output and "--update" in res.output
    assert _snapshot(out) == before  # nothing written: index, folds, pairs, fingerprint
    # a merge that would give patient p-g1 (label 1 in the index) a case labelled 0: refused
    man_c = _manifest(tmp_path / "cohortC" / "manifest.csv", [_row(src, "c9", "g2", patient_id="p-g1", label="0")])
    res = cli("preprocess", man_c, "--out", out, *COMMON, *ex, "--update")
    assert res.exit_code == 2 and "patient p-g1 would have cases with different labels in the index (c9=0, g1=1)" \
        in res.output, res.output
    assert _snapshot(out) == before
    res = cli("preprocess", man_b, "--out", out, *COMMON, *ex, "--update")
    assert res.exit_code == 0, res.output
    idx = read_index(out).set_index("case_id")
    assert sorted(idx.index) == ["g1", "g2", "g3", "h1"] and idx.loc["g1", "patient_id"] == "pB1"
    assert (out / "pairs" / "g1.npy").read_bytes() == (out / "pairs" / "g2.npy").read_bytes()
    _check_ok(out)  # folds cover exactly the index, no orphans, checksums match


@pytest.mark.parametrize("executor", EXECUTORS)
def test_patient_with_cases_of_different_labels(executor, request, src, tmp_path):
    rows = [_row(src, c) for c in GOOD] + [_row(src, "x1", "g1", patient_id="px", label="1"),
                                            _row(src, "x2", "g2", patient_id="px", label="0")]
    man = _manifest(tmp_path / "m.csv", rows)
    res = cli("preprocess", man, "--out", tmp_path / "ds", *COMMON, *_exec(executor, request))
    assert res.exit_code == 0, res.output
    for c in ("x1", "x2"):
        err = _case_errors(res, c)
        assert err and "patient px has cases with different labels (x1=1, x2=0)" in err[0], res.output
    assert sorted(read_index(tmp_path / "ds")["case_id"]) == list(GOOD)


def _variant(src: Path, tmp: Path, cid: str, which: str, change) -> dict:
    for w in ("t1", "fs", "roi"):
        shutil.copy(src / f"g1_{w}.nii.gz", tmp / f"{cid}_{w}.nii.gz")
    img = sitk.ReadImage(str(src / f"g1_{which}.nii.gz"))
    change(img)
    sitk.WriteImage(img, str(tmp / f"{cid}_{which}.nii.gz"))
    return _row(tmp, cid)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_implausible_geometry(executor, request, src, tmp_path):
    ex = _exec(executor, request)
    rows = [_row(src, c) for c in GOOD] + [
        _variant(src, tmp_path, "thick", "t1", lambda im: im.SetSpacing((4.0, 4.0, 50.0))),
        _variant(src, tmp_path, "tiny", "fs", lambda im: im.SetSpacing((0.001, 3.5, 7.0))),
        _variant(src, tmp_path, "small", "t1", lambda im: im.SetSpacing((0.5, 0.5, 1.0))),
        _variant(src, tmp_path, "huge", "t1", lambda im: im.SetSpacing((12.0, 12.0, 12.0))),
        # the FS overlaps the T1 but not over the ROI
        _variant(src, tmp_path, "offroi", "fs", lambda im: im.SetOrigin(tuple(np.add(im.GetOrigin(), (200.0, 0, 0))))),
    ]
    man = _manifest(tmp_path / "m.csv", rows)
    res = cli("preprocess", man, "--out", tmp_path / "ds", *COMMON, *ex)
    assert res.exit_code == 0, res.output
    expect = {
        "thick": "t1: voxel spacing 50 mm along z is outside the plausible 0.1-15 mm",
        "tiny": "fs: voxel spacing 0.001 mm along x is outside the plausible 0.1-15 mm",
        "small": "t1: field of view 32 x 24 x 12 mm: 24 mm is smaller than the 100 mm a pelvis needs",
        "huge": "t1: field of view 768 x 576 x 144 mm: 768 mm is larger than 700 mm",
        "offroi": "fs: the ROI centre",
    }
    for cid, text in expect.items():
        err = _case_errors(res, cid)
        assert err and text in err[0], res.output
    assert "outside the fs field of view" in _case_errors(res, "offroi")[0]
    assert sorted(read_index(tmp_path / "ds")["case_id"]) == list(GOOD)
    _no_machine_paths(res, tmp_path)
    if executor == "serial":  # the ranges are configuration: a wider one accepts the 50 mm slices
        cfg = tmp_path / "wide.yaml"
        cfg.write_text("plausible_spacing_mm: [0.1, 60]\n")
        man2 = _manifest(tmp_path / "m2.csv", [rows[3]])
        res = cli("preprocess", man2, "--out", tmp_path / "ds2", *COMMON, *ex, "--config", cfg)
        assert res.exit_code == 0 and "thick" in set(read_index(tmp_path / "ds2")["case_id"]), res.output


@pytest.mark.parametrize("executor", EXECUTORS)
def test_same_image_as_t1_and_fs(executor, request, src, tmp_path):
    shutil.copy(src / "g1_t1.nii.gz", tmp_path / "copy_fs.nii.gz")
    sitk.WriteImage(sitk.ReadImage(str(src / "g1_t1.nii.gz")), str(tmp_path / "same_fs.nrrd"))
    rows = [_row(src, c) for c in GOOD] + [
        _row(src, "samepath", "g1", fs=str(src / "g1_t1.nii.gz")),
        _row(src, "samebytes", "g1", fs=str(tmp_path / "copy_fs.nii.gz")),
        _row(src, "samevoxels", "g1", fs=str(tmp_path / "same_fs.nrrd")),
    ]
    man = _manifest(tmp_path / "m.csv", rows)
    res = cli("preprocess", man, "--out", tmp_path / "ds", *COMMON, *_exec(executor, request))
    assert res.exit_code == 0, res.output
    assert "t1 and fs name the same source (g1_t1.nii.gz)" in _case_errors(res, "samepath")[0]
    assert "t1 and fs are byte-identical sources" in _case_errors(res, "samebytes")[0]
    assert "t1 and fs hold identical images" in _case_errors(res, "samevoxels")[0]
    assert sorted(read_index(tmp_path / "ds")["case_id"]) == list(GOOD)


# ---------------------------------------------------------------- damaged pairs, check command

def test_damaged_pairs_are_named_by_check_and_training_reads(src, tmp_path):
    _, out = _build_good(src, tmp_path, ["--serial"])
    idx = read_index(out)
    p1, p2 = out / "pairs" / "g1.npy", out / "pairs" / "g2.npy"
    p1.write_bytes(p1.read_bytes()[:-100])  # truncated
    data = bytearray(p2.read_bytes())
    data[-5] ^= 0xFF  # one voxel altered, still a valid .npy
    p2.write_bytes(bytes(data))
    (out / "pairs" / "stray.npy").write_bytes(b"x")
    res = cli("inspect", out, "--check")
    assert res.exit_code == 1, res.output
    assert "error: case g1: pair file pairs/g1.npy does not match its recorded checksum" in res.output
    assert "error: case g2: pair file pairs/g2.npy does not match" in res.output
    assert "error: orphan file pairs/stray.npy" in res.output and "case g3" not in res.output

    from distmsfa.training.batches import PlainSource
    from distmsfa.training.ray_data import load_pairs

    src_plain = PlainSource(str(out), idx.iloc[:2], idx.iloc[2:], batch_size=1, seed=0, workers=1)
    with pytest.raises(PairChecksumError, match="case g2: pairs/g2.npy does not match its recorded checksum"):
        src_plain._load(["g2"])
    assert src_plain._load(["g3"])["x"].shape == (1, 2, 8, 16, 24)
    batch = {k: idx[k].to_numpy() for k in ("case_id", "label", "pair_path", "pair_sha256")}
    with pytest.raises(PairChecksumError, match="case g1: pairs/g1.npy"):
        load_pairs(batch, str(out))


def test_check_finds_folds_that_do_not_match_the_index(src, tmp_path):
    _, out = _build_good(src, tmp_path, ["--serial"])
    _check_ok(out)
    folds = pd.read_parquet(out / "folds.parquet")
    extra = folds.iloc[[0]].assign(case_id="ghost")
    pd.concat([folds.iloc[1:], extra]).to_parquet(out / "folds.parquet", index=False)
    res = cli("inspect", out, "--check")
    assert res.exit_code == 1
    assert "error: case ghost: in folds.parquet but not in the index" in res.output
    assert f"error: case {folds.iloc[0]['case_id']}: indexed but has no row in folds.parquet" in res.output


# ---------------------------------------------------------------- one-line CLI errors

def test_unusable_out_is_refused_before_any_work(src, tmp_path):
    man = _manifest(tmp_path / "m.csv", [_row(src, c) for c in GOOD])
    (tmp_path / "afile").write_text("x")
    res = cli("preprocess", man, "--out", tmp_path / "afile", *COMMON, "--serial")
    assert res.exit_code == 2 and "is an existing file, not a dataset folder" in res.output, res.output
    res = cli("preprocess", man, "--out", "/proc/distmsfa-nope/ds", *COMMON, "--serial")
    assert res.exit_code == 2 and "is not writable" in res.output and "Traceback" not in res.output, res.output
    assert res.output.count("\n") == 1


def test_corrupt_fingerprint_is_an_error_not_a_new_dataset(src, tmp_path):
    man, out = _build_good(src, tmp_path, ["--serial"])
    (out / "fingerprint.json").write_text("{not json")
    before = _snapshot(out)
    res = cli("preprocess", man, "--out", out, *COMMON, "--serial", "--refold")
    assert res.exit_code == 2 and "fingerprint.json of the dataset is corrupt" in res.output, res.output
    assert _snapshot(out) == before


def test_config_and_argument_errors(src, tmp_path):
    man = _manifest(tmp_path / "m.csv", [_row(src, c) for c in GOOD])
    cfg = tmp_path / "c.yaml"
    cfg.write_text("preprocess:\n  crop_size: [8, 16, 24\n")
    res = cli("preprocess", man, "--out", tmp_path / "o", "--serial", "--config", cfg)
    assert res.exit_code == 2 and "error: config file c.yaml: YAML syntax error at line" in res.output, res.output
    cfg.write_text("preprocess: [8, 16, 24]\n")
    res = cli("preprocess", man, "--out", tmp_path / "o", "--serial", "--config", cfg)
    assert res.exit_code == 2 and "expected PreprocessConfig keys" in res.output, res.output
    # YAML 1.1 reads 6e0 / 1e-3 (no dot) as strings: numeric strings are accepted as numbers
    cfg.write_text("preprocess:\n  crop_size: [8, 16, 24]\n  target_spacing_mm: [6e0, 6e0, 6e0]\n")
    res = cli("preprocess", man, "--out", tmp_path / "o", "--serial", "--no-progress", "--config", cfg)
    assert res.exit_code == 0, res.output
    assert list(read_index(tmp_path / "o")["spacing_mm"].iloc[0]) == [6.0, 6.0, 6.0]
    cfg.write_text("train: [1, 2]\n")
    res = cli("cv", "--data", tmp_path / "o", "--model", "msfanet", "--config", cfg, "--plain")
    assert res.exit_code == 2 and "section 'train' must be a mapping" in res.output, res.output
    cfg.write_text("train:\n  lr: 1e-3\n")
    from distmsfa.training.cv import resolve_configs

    assert resolve_configs("msfanet", cfg, profile="cpu")[0].lr == pytest.approx(1e-3)
    cfg.write_text("train:\n  lr: fast\n")
    res = cli("cv", "--data", tmp_path / "o", "--model", "msfanet", "--config", cfg, "--plain")
    assert res.exit_code == 2 and "lr" in res.output and "Traceback" not in res.output, res.output
    # a relative path that does not exist: say where relative paths are resolved from
    _manifest(man, [_row(src, "g1", t1="sub/g1_t1.nii.gz")] + [_row(src, c) for c in GOOD[1:]])
    res = cli("preprocess", man, "--out", tmp_path / "o3", *COMMON, "--serial")
    err = _case_errors(res, "g1")
    assert err and "paths are resolved from the manifest's folder" in err[0], res.output
    for n in ("0", "-2"):
        res = cli("inspect", tmp_path / "o", "--n", n)
        assert res.exit_code == 2 and f"--n {n}: the montage needs at least 1 case" in res.output, res.output


def test_nan_label_makes_the_case_unlabelled(src, tmp_path):
    man = _manifest(tmp_path / "m.csv", [_row(src, c) for c in GOOD[:2]] + [_row(src, "g3", label="NaN")])
    res = cli("preprocess", man, "--out", tmp_path / "ds", *COMMON, "--serial")
    assert res.exit_code == 0, res.output
    row = read_index(tmp_path / "ds").set_index("case_id").loc["g3"]
    assert pd.isna(row["label"]) and pd.isna(row["fold"])


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640)])
def test_dataset_files_follow_the_umask(src, tmp_path, umask, mode):
    man = _manifest(tmp_path / "m.csv", [_row(src, c) for c in GOOD])
    old = os.umask(umask)
    try:
        res = cli("preprocess", man, "--out", tmp_path / "ds", *COMMON, "--serial")
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    for rel in ("index.parquet", "folds.parquet", "fingerprint.json", "failed.csv", "pairs/g1.npy", "rois/g2.npy"):
        assert (tmp_path / "ds" / rel).stat().st_mode & 0o777 == mode, rel


# ---------------------------------------------------------------- cv and demo-data

def test_cv_run_that_failed_before_any_fold_can_start_again(tmp_path):
    from distmsfa.training.cv import CVError, _prepare_run_dir

    run = tmp_path / "run"
    _prepare_run_dir(run, False, {"data": "d", "model": "m", "folds": [0]})
    # nothing finished or checkpointed: a plain run into the same folder starts again
    assert _prepare_run_dir(run, False, {"data": "d2", "model": "m", "folds": [0]})["data"] == "d2"
    (run / "folds" / "fold0").mkdir(parents=True)
    (run / "folds" / "fold0" / "last.pt").write_bytes(b"ckpt")
    with pytest.raises(CVError, match="pass --resume"):
        _prepare_run_dir(run, False, {"data": "d3", "model": "m", "folds": [0]})


def test_demo_data_never_deletes_what_it_did_not_write(tmp_path):
    out = tmp_path / "cohort"
    res = cli("demo-data", "--out", out, "--n", "2", "--sites", "TAH", "--quiet")
    assert res.exit_code == 0, res.output
    note = out / "cases" / "SIJ0001" / "notes.txt"
    note.write_text("my reading of this case")
    res = cli("demo-data", "--out", out, "--n", "1", "--sites", "TAH", "--quiet")
    assert res.exit_code == 2 and "cases/SIJ0001/notes.txt in --out was not written by demo-data" in res.output
    assert note.read_text(encoding="utf-8") == "my reading of this case" and (out / "cases" / "SIJ0001" / "t1.nii.gz").exists()
    note.unlink()
    res = cli("demo-data", "--out", out, "--n", "1", "--sites", "TAH", "--quiet")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (out / "cases").iterdir()) == ["SIJ0000"]


@pytest.mark.slow
def test_cv_names_a_damaged_pair_then_starts_again_in_the_same_out(src, tmp_path):
    """Through `distmsfa cv --plain`: a damaged pair stops training naming its case; the run
    folder that failed before any fold finished does not block the next plain run."""
    rows = [_row(src, f"k{i}", GOOD[i % 3], patient_id=f"pk{i}", label=str(i % 2)) for i in range(6)]
    man = _manifest(tmp_path / "m.csv", rows)
    pre = tmp_path / "pre.yaml"
    pre.write_text("n_folds: 2\n")
    res = cli("preprocess", man, "--out", tmp_path / "ds", *COMMON, "--serial", "--config", pre)
    assert res.exit_code == 0, res.output
    pair = tmp_path / "ds" / "pairs" / "k1.npy"
    data = bytearray(pair.read_bytes())
    data[-3] ^= 0xFF
    pair.write_bytes(bytes(data))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epochs: 1\n  selection: val\n")  # 6 cases: too few for an inner split
    args = ["cv", "--data", tmp_path / "ds", "--model", "msfanet", "--profile", "cpu", "--config", cfg,
            "--plain", "--folds", "0", "--out", tmp_path / "run"]
    res = cli(*args)
    assert res.exit_code == 2, res.output
    assert "case k1: pairs/k1.npy does not match its recorded checksum" in res.output and "Traceback" not in res.output
    assert (tmp_path / "run" / "run.json").exists()
    res = cli("preprocess", man, "--out", tmp_path / "ds", *COMMON, "--serial", "--config", pre)  # rewrites k1
    assert res.exit_code == 0 and "1 preprocessed, 5 unchanged" in res.output, res.output
    res = cli(*args)  # same --out, no --resume: starts again
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "folds" / "fold0" / "result.json").exists()
