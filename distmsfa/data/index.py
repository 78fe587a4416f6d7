"""The preprocessed dataset on disk: a Parquet index plus one array file per case.

Layout of a dataset root (local folder or ``s3://`` / ``gs://`` URI)::

    ROOT/index.parquet          one row per successfully preprocessed case (INDEX_COLUMNS)
    ROOT/folds.parquet          case_id, patient_id, fold; written once, never silently rewritten
    ROOT/pairs/<case>.npy       float16 (2, D, H, W), channel order (T1, FS), values in [0, 1]
    ROOT/rois/<case>.npy        uint8 (D, H, W) ROI mask on the same grid (labels kept: 1 left, 2 right, ...)
    ROOT/failed.csv             cases that failed, with one-line reasons
    ROOT/fingerprint.json       dataset fingerprint + preprocessing parameters

``pair_path`` / ``roi_path`` in the index are relative to ROOT, so a dataset can be
copied to object storage as it is.  ``pair_sha256`` is the SHA-256 of the ``.npy``
file bytes; ``load_pair`` verifies it once per process and file (PairChecksumError naming the case).
Arrays are plain ``.npy`` (no pickle) so any reader, and Ray Data through
``pyarrow.fs``, can stream them from local disk or object storage.
"""
from __future__ import annotations

import hashlib
import io
import os
import tempfile
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

INDEX_FILE = "index.parquet"
FOLDS_FILE = "folds.parquet"
FAILED_FILE = "failed.csv"
FINGERPRINT_FILE = "fingerprint.json"

#: Columns of index.parquet, in order, with their meaning.
INDEX_COLUMNS: dict[str, str] = {
    "case_id": "string, unique; the only identifier that may appear in logs and HTTP responses",
    "patient_id": "string; folds are grouped by it",
    "label": "Int8 nullable: 1 = axSpA, 0 = non-axSpA, <NA> = unlabelled",
    "site": "string; hospital/scanner site",
    "fold": "Int8 nullable: 0..k-1; <NA> for external-site or unlabelled cases",
    "is_external": "bool; the site was named external (kept out of folds)",
    "shape": "list<int64> [2, D, H, W] of the pair array",
    "spacing_mm": "list<float64> (D, H, W) voxel spacing of the pair, millimetres",
    "crop_origin_mm": "list<float64> (x, y, z) LPS physical position of voxel [0,0,0] of the crop",
    "crop_size_mm": "list<float64> (D, H, W) physical extent of the crop, millimetres",
    "crop_direction": "list<float64> 9 values, row-major 3x3 direction cosines of the crop grid (ITK order)",
    "source_sha256": "string JSON {t1, fs, roi}: checksums of the raw sources",
    "fingerprint": "string; hash of preprocessing parameters + library versions",
    "pair_path": "string; path of the pair .npy relative to ROOT",
    "roi_path": "string; path of the ROI .npy relative to ROOT",
    "pair_sha256": "string; SHA-256 of the pair .npy file bytes",
}


def resolve_root(root: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """Return a ``pyarrow.fs`` filesystem and the path inside it for a local path or URI."""
    root = os.fspath(root)
    if "://" in root:
        fs, path = pafs.FileSystem.from_uri(root)
        return fs, path.rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(root)


def _join(base: str, rel: str) -> str:
    return base.rstrip("/") + "/" + rel.lstrip("/")


def read_bytes(root: str | os.PathLike[str], rel: str) -> bytes:
    fs, base = resolve_root(root)
    with fs.open_input_stream(_join(base, rel)) as fh:
        return fh.read()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def array_from_npy_bytes(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def _umask() -> int:
    """The process umask (read without changing it where /proc allows; else set-and-restore)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def write_bytes_atomic(root: str | os.PathLike[str], rel: str, data: bytes) -> None:
    """Write a file so that readers never see a half-written one (tmp + rename locally).

    The file gets the mode a plain ``open(..., "w")`` would give (0666 minus the umask),
    not mkstemp's 0600: a dataset on a shared filesystem must be readable by the
    cluster's other users when the umask says so."""
    fs, base = resolve_root(root)
    target = _join(base, rel)
    if isinstance(fs, pafs.LocalFileSystem):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".tmp-")
        try:
            os.fchmod(fd, 0o666 & ~_umask())
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    else:  # object stores commit a whole object on close
        with fs.open_output_stream(target) as fh:
            fh.write(data)


def save_array(root: str | os.PathLike[str], rel: str, arr: np.ndarray) -> str:
    """Save ``arr`` as ``.npy`` at ROOT/rel atomically; return the SHA-256 of the file bytes."""
    data = npy_bytes(arr)
    write_bytes_atomic(root, rel, data)
    return sha256_bytes(data)


class PairChecksumError(IOError):
    """A pair file does not match the ``pair_sha256`` recorded in the index."""


def load_array(root: str | os.PathLike[str], rel: str, expected_sha256: str | None = None,
               case_id: str | None = None) -> np.ndarray:
    data = read_bytes(root, rel)
    if expected_sha256 is not None and sha256_bytes(data) != expected_sha256:
        who = f"case {case_id}: " if case_id else ""
        raise PairChecksumError(f"{who}{rel} does not match its recorded checksum (the file was changed, truncated "
                                f"or is corrupt); re-run `distmsfa preprocess` to rewrite it")
    try:
        return array_from_npy_bytes(data)
    except ValueError as exc:
        who = f"case {case_id}: " if case_id else ""
        raise PairChecksumError(f"{who}{rel} is not a readable .npy array ({exc})") from None


#: (root, pair_path, sha256) of the pairs this process has verified: each file is hashed
#: once per process (the first epoch), not on every read.
_VERIFIED: set[tuple[str, str, str]] = set()


def load_pair(root: str | os.PathLike[str], row: Any, verify: bool = True) -> np.ndarray:
    """Load the ``(2, D, H, W)`` float16 pair of one index row (a Series/dict with pair_path).

    ``verify`` (default): the first read of a file in this process checks it against the
    row's ``pair_sha256`` (PairChecksumError naming the case on mismatch); later reads of
    the same file skip the hash.  A row without ``pair_sha256`` is not verified."""
    rel = row["pair_path"]
    try:
        expected = row["pair_sha256"]
    except (KeyError, IndexError):
        expected = None
    try:
        cid = row["case_id"]
    except (KeyError, IndexError):
        cid = None
    key = (os.fspath(root), str(rel), str(expected))
    if not verify or not expected or key in _VERIFIED:
        return load_array(root, rel, None, cid)
    arr = load_array(root, rel, expected, cid)
    _VERIFIED.add(key)
    return arr


def read_index(root: str | os.PathLike[str]) -> pd.DataFrame:
    """Read ROOT/index.parquet with the documented dtypes (label/fold as nullable Int8)."""
    fs, base = resolve_root(root)
    path = _join(base, INDEX_FILE)
    try:
        table = pq.read_table(path, filesystem=fs)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no {INDEX_FILE} under {root!s}; run `distmsfa preprocess MANIFEST --out {root!s}` first"
        ) from None
    df = table.to_pandas()
    for col in ("label", "fold"):
        if col in df:
            df[col] = df[col].astype("Int8")
    return df


def write_index(root: str | os.PathLike[str], df: pd.DataFrame) -> None:
    """Write the index atomically (readers see the old or the new file, never a partial one)."""
    missing = [c for c in INDEX_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"index is missing columns {missing}")
    df = df[list(INDEX_COLUMNS) + [c for c in df.columns if c not in INDEX_COLUMNS]].copy()
    for col in ("label", "fold"):
        df[col] = df[col].astype("Int8")
    table = pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_bytes_atomic(root, INDEX_FILE, sink.getvalue().to_pybytes())
