"""Upload files for the serving tests: good synthetic cases and the bad inputs of issue 9."""
from __future__ import annotations

import gzip
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def read_bytes(path) -> bytes:
    return Path(path).read_bytes()


def nifti_bytes(img: sitk.Image, suffix: str = ".nii.gz") -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "x" + suffix)
        sitk.WriteImage(img, p)
        return Path(p).read_bytes()


def zip_folder(folder, *, prefix: str = "series/") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(Path(folder).rglob("*")):
            if p.is_file():
                zf.write(p, prefix + p.relative_to(folder).as_posix())
    return buf.getvalue()


def zip_entries(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def zip_bomb(unpacked_mb: int = 64) -> bytes:
    """A small zip that unpacks to ``unpacked_mb`` MiB of zeros (deflate ratio ~1000:1)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("a.dcm", "w", force_zip64=True) as fh:
            block = b"\0" * (1 << 20)
            for _ in range(unpacked_mb):
                fh.write(block)
    return buf.getvalue()


def image_2d() -> bytes:
    return nifti_bytes(sitk.GetImageFromArray(np.random.default_rng(0).random((32, 32)).astype(np.float32)))


def image_4d() -> bytes:
    arr = np.random.default_rng(0).random((3, 8, 16, 16)).astype(np.float32)  # (t, z, y, x)
    img = sitk.JoinSeries([sitk.GetImageFromArray(a) for a in arr])
    return nifti_bytes(img)


def image_nan(like: sitk.Image) -> bytes:
    arr = sitk.GetArrayFromImage(like).astype(np.float32)
    arr[arr.shape[0] // 2, 3, 3] = np.nan
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(like)
    return nifti_bytes(img)


def shifted(img: sitk.Image, offset_mm: float) -> sitk.Image:
    out = sitk.Image(img)
    out.SetOrigin(tuple(o + offset_mm for o in img.GetOrigin()))
    return out


def truncated_gz(data: bytes) -> bytes:
    return data[: len(data) // 2]


def random_bytes(n: int = 5000) -> bytes:
    return np.random.default_rng(1).integers(0, 256, n, dtype=np.uint8).tobytes()


def gz(data: bytes) -> bytes:
    return gzip.compress(data)
