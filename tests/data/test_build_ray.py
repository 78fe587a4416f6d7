"""build_dataset through Ray Data on a real local cluster: read back with Ray Data,
resume, and a bad case that neither stops the others nor corrupts the index."""
from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from distmsfa.data import PreprocessConfig, build_dataset
from distmsfa.data.index import read_index
from distmsfa.io.phantom import write_case

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _load_and_hash(row: dict) -> dict:
    """Runs on Ray workers: fetch the pair through pyarrow.fs (local or object store)."""
    import pyarrow.fs as pafs

    from distmsfa.data.index import array_from_npy_bytes

    fs, base = pafs.FileSystem.from_uri(row["root"])
    with fs.open_input_stream(base.rstrip("/") + "/" + row["pair_path"]) as fh:
        data = fh.read()
    arr = array_from_npy_bytes(data)
    return {"case_id": row["case_id"], "sha": hashlib.sha256(data).hexdigest(), "expected": row["pair_sha256"],
            "shape": list(arr.shape), "dtype": str(arr.dtype)}


def _connect(address: str, monkeypatch) -> None:
    import ray

    ray.init(address=address)


def test_ray_data_build_readback_resume(ray_cluster, tmp_path, monkeypatch):
    import ray

    src = tmp_path / "src"
    rows = []
    for i in range(6):
        write_case(src, f"r{i}", shift_mm=(i, 0, 0), seed=i)
        rows.append(dict(case_id=f"r{i}", patient_id=f"p{i}", label=str(i % 2), site="H1",
                         t1=f"r{i}_t1.nii.gz", fs=f"r{i}_fs.nii.gz", roi=f"r{i}_roi.nii.gz"))
    (src / "bad_t1.nii.gz").write_bytes(b"\x1f\x8b\x08 not really gzip")
    rows.append(dict(case_id="bad", patient_id="pb", label="1", site="H1", t1="bad_t1.nii.gz",
                     fs="r0_fs.nii.gz", roi="r0_roi.nii.gz"))
    pd.DataFrame(rows).to_csv(src / "manifest.csv", index=False)
    out = tmp_path / "ds"
    cfg = PreprocessConfig(crop_size=(8, 16, 40), n_folds=2)

    _connect(ray_cluster.address, monkeypatch)
    try:
        rep = build_dataset(src / "manifest.csv", out, cfg, address=ray_cluster.address, progress=False)
        assert rep.executor == "ray"
        assert (rep.n_done, rep.n_skipped, rep.n_failed) == (6, 0, 1)
        assert rep.failures[0][0] == "bad" and "t1: cannot read bad_t1.nii.gz" in rep.failures[0][1]
        idx = read_index(out)
        assert sorted(idx["case_id"]) == [f"r{i}" for i in range(6)]

        # Ray Data reads the index and the arrays back; checksums compared
        import sys

        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests
        ds = ray.data.read_parquet(str(out / "index.parquet"))
        ds = ds.map(lambda r: {**r, "root": f"file://{out}"}).map(_load_and_hash)
        got = ds.take_all()
        assert len(got) == 6
        for r in got:
            assert r["sha"] == r["expected"] and r["shape"] == [2, 8, 16, 40] and r["dtype"] == "float16"

        # serial and Ray outputs are byte-identical: every pair and ROI file, index and folds
        ser = tmp_path / "ds_serial"
        rep_s = build_dataset(src / "manifest.csv", ser, cfg, address="serial", progress=False)
        assert rep_s.executor == "serial" and (rep_s.n_done, rep_s.n_failed) == (6, 1)
        for sub in ("pairs", "rois"):
            ray_files = {p.name: p.read_bytes() for p in (out / sub).iterdir()}
            assert ray_files == {p.name: p.read_bytes() for p in (ser / sub).iterdir()} and len(ray_files) == 6
        pd.testing.assert_frame_equal(read_index(ser), idx)
        pd.testing.assert_frame_equal(pd.read_parquet(ser / "folds.parquet"), pd.read_parquet(out / "folds.parquet"))

        # re-run: every good case skipped, the bad one reported again, index unchanged
        rep2 = build_dataset(src / "manifest.csv", out, cfg, address=ray_cluster.address, progress=False)
        assert (rep2.n_done, rep2.n_skipped, rep2.n_failed) == (0, 6, 1)
        pd.testing.assert_frame_equal(read_index(out), idx)  # the index of the first run
        assert list(pd.read_csv(out / "failed.csv")["case_id"]) == ["bad"]
    finally:
        ray.shutdown()


def _crash_on_bad(task: dict) -> dict:
    import os

    if task["case"]["case_id"] == "crash":
        os._exit(3)  # a native crash: the worker process dies, nothing is returned
    return {"case_id": task["case"]["case_id"], "status": "done", "reason": "", "row_json": "{}"}


def test_dead_worker_is_skipped_not_retried_forever(ray_cluster, monkeypatch):
    import sys

    import ray

    from distmsfa.data.ray_preprocess import run_tasks_ray

    _connect(ray_cluster.address, monkeypatch)
    try:
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        tasks = [{"case": {"case_id": c}} for c in ("a", "crash", "b", "c")]
        got = sorted(r["case_id"] for r in run_tasks_ray(tasks, fn=_crash_on_bad))
        assert got == ["a", "b", "c"]
        assert ray.data.DataContext.get_current().max_errored_blocks == 0  # global settings restored
    finally:
        ray.shutdown()
