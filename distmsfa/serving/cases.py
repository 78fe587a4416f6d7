"""From a checked :class:`~distmsfa.serving.uploads.Upload` to SimpleITK images and a ROI.

Each request gets a private temporary folder (mode 0700) that is removed when the request
ends, on errors too (``private_folder``).  Files are written there under fixed names
(``t1.nii.gz``, ``fs/f00000.dcm``...) and read with the project's readers
(:mod:`distmsfa.io.readers`), exactly as ``distmsfa preprocess`` reads a manifest's files.

Zips: every entry is checked before anything is written: an absolute path, a ``..`` part,
a link, more than ``max_entries`` entries, or more unpacked bytes than the limit (counted
while unpacking, so a lying header does not help a zip bomb) refuse the request.  The zip
must hold exactly one DICOM series.

De-identification: the DICOM PatientName/PatientID/BirthDate... of an upload are read only
to scrub them from any message that leaves the request (``Phi.scrub``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import stat
import tempfile
import zipfile
from typing import Iterator

import numpy as np
import SimpleITK as sitk

from distmsfa.data.preprocess import Roi
from distmsfa.io import dicom, readers
from distmsfa.io.errors import ImageReadError
from distmsfa.serving.errors import PAYLOAD_TOO_LARGE, UNPROCESSABLE, ServeError
from distmsfa.serving.uploads import Upload, UploadedFile

#: DICOM tags that identify a patient (PS3.15 Basic profile, the ones a reader meets first).
PHI_TAGS = ("0010|0010", "0010|0020", "0010|0030", "0010|1000", "0010|1001", "0010|2154",
            "0010|1040", "0008|0080", "0008|0090", "0008|0050")


@dataclasses.dataclass
class Phi:
    """Identifying strings seen in this request's headers; scrubbed from anything sent back."""

    values: set[str] = dataclasses.field(default_factory=set)

    def add_from(self, path: str) -> None:
        r = sitk.ImageFileReader()
        r.SetFileName(path)
        try:
            r.ReadImageInformation()
        except RuntimeError:
            return
        for tag in PHI_TAGS:
            if r.HasMetaDataKey(tag):
                v = r.GetMetaData(tag).strip()
                for piece in {v, *re.split(r"[\^\s]+", v)}:
                    if len(piece) >= 3:
                        self.values.add(piece)

    def scrub(self, text: str) -> str:
        for v in sorted(self.values, key=len, reverse=True):
            text = re.sub(re.escape(v), "[removed]", text, flags=re.IGNORECASE)
        return text


@contextlib.contextmanager
def private_folder(prefix: str = "distmsfa-req-") -> Iterator[str]:
    """A 0700 temporary folder, removed on exit whatever happens."""
    path = tempfile.mkdtemp(prefix=prefix)
    try:
        os.chmod(path, 0o700)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _unsafe_name(name: str) -> bool:
    n = name.replace("\\", "/")
    return n.startswith("/") or bool(re.match(r"^[A-Za-z]:", n)) or ".." in n.split("/")


def extract_zip(data: bytes, dest: str, what: str, *, max_bytes: int, max_entries: int) -> int:
    """Unpack a zip's regular files into ``dest`` as f00000, f00001... (names dropped: they may
    identify the patient).  Returns the bytes written.  Refuses unsafe or oversized zips."""
    import io

    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise ServeError(UNPROCESSABLE, "corrupt_zip", f"{what}: not a readable zip ({str(exc)[:80]})") from None
    if len(infos) > max_entries:
        raise ServeError(PAYLOAD_TOO_LARGE, "zip_too_many_entries",
                         f"{what}: zip holds {len(infos)} entries, more than the limit {max_entries}")
    for info in infos:
        mode = info.external_attr >> 16
        if _unsafe_name(info.filename):
            raise ServeError(UNPROCESSABLE, "unsafe_zip",
                             f"{what}: zip entry with an absolute path or '..' refused; zip the series folder with relative paths")
        if stat.S_ISLNK(mode):
            raise ServeError(UNPROCESSABLE, "unsafe_zip", f"{what}: zip entry is a symbolic link; refused")
    declared = sum(i.file_size for i in infos)
    if declared > max_bytes:
        raise ServeError(PAYLOAD_TOO_LARGE, "zip_too_large",
                         f"{what}: zip unpacks to {declared / 2**20:.0f} MiB, more than the limit {max_bytes / 2**20:.0f} MiB")
    os.makedirs(dest, exist_ok=True)
    written = 0
    k = 0
    try:
        for info in infos:
            if info.is_dir():
                continue
            base = info.filename.replace("\\", "/").rsplit("/", 1)[-1]
            if base.startswith(".") or "__MACOSX" in info.filename or base.upper() == "DICOMDIR":
                continue
            with zf.open(info) as src, open(os.path.join(dest, f"f{k:05d}"), "wb") as out:
                k += 1
                while True:
                    chunk = src.read(1 << 20)
                    if not chunk:
                        break
                    written += len(chunk)
                    if written > max_bytes:  # headers lie in a crafted bomb: count real bytes
                        raise ServeError(PAYLOAD_TOO_LARGE, "zip_too_large",
                                         f"{what}: zip unpacks to more than the limit {max_bytes / 2**20:.0f} MiB")
                    out.write(chunk)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError) as exc:
        raise ServeError(UNPROCESSABLE, "corrupt_zip", f"{what}: zip cannot be unpacked ({type(exc).__name__})") from None
    if k == 0:
        raise ServeError(UNPROCESSABLE, "empty_zip", f"{what}: zip holds no files")
    return written


def _read_series_folder(folder: str, what: str, phi: Phi) -> sitk.Image:
    series = dicom.find_series(folder)
    if not series:
        raise ImageReadError(f"{what}: zip holds no DICOM series; zip one series folder of DICOM files")
    if len(series) > 1:  # UIDs and descriptions are not echoed: descriptions can identify
        raise ImageReadError(f"{what}: zip holds {len(series)} DICOM series; send exactly one series per part")
    phi.add_from(series[0].files[0])
    img = dicom.read_series(series[0], what)
    return sitk.Cast(readers.to_3d(img, what), sitk.sitkFloat32)


def read_part(part: UploadedFile, folder: str, what: str, phi: Phi, *, max_bytes: int, max_entries: int,
              label_map: bool = False) -> sitk.Image:
    """Write one part into ``folder`` and read it (3-D, float32; label maps uint8)."""
    if part.suffix == ".zip":
        dest = os.path.join(folder, what)
        extract_zip(part.data, dest, what, max_bytes=max_bytes, max_entries=max_entries)
        return _read_series_folder(dest, what, phi)
    path = os.path.join(folder, what + part.suffix)
    with open(path, "wb") as fh:
        fh.write(part.data)
    if label_map:
        return readers.read_label_map(path, what).image
    return readers.read_image(path, what=what).image


def _same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-3) -> bool:
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=tol, atol=tol)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=max(tol, 0.01 * min(a.GetSpacing())))
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol))


def _fmt(v) -> str:
    return "(" + ", ".join(f"{float(x):.4g}" for x in v) + ")"


def check_roi_grid(roi: sitk.Image, t1: sitk.Image) -> None:
    """A label map must lie on the T1's grid (as ITK-SNAP saves a segmentation of it)."""
    if _same_grid(roi, t1):
        return
    raise ImageReadError(
        f"roi: label map grid (size {roi.GetSize()}, spacing {_fmt(roi.GetSpacing())}, origin {_fmt(roi.GetOrigin())}) "
        f"differs from the t1 grid (size {t1.GetSize()}, spacing {_fmt(t1.GetSpacing())}, origin {_fmt(t1.GetOrigin())}); "
        "send the label map drawn on this t1"
    )


def check_center(center: tuple[float, float, float], t1: sitk.Image, fs: sitk.Image) -> None:
    """``roi_center_mm`` must fall inside the T1 (the crop is centred on it)."""
    idx = t1.TransformPhysicalPointToContinuousIndex(tuple(float(v) for v in center))
    if all(-0.5 <= i <= n - 0.5 for i, n in zip(idx, t1.GetSize())):
        return
    in_fs = fs.TransformPhysicalPointToContinuousIndex(tuple(float(v) for v in center))
    where = "inside the fs but outside the t1" if all(-0.5 <= i <= n - 0.5 for i, n in zip(in_fs, fs.GetSize())) \
        else "outside both images"
    raise ImageReadError(f"roi_center_mm {_fmt(center)} lies {where}; give LPS mm coordinates inside the t1 "
                         "(e.g. from a viewer's world coordinates of this series)")


@dataclasses.dataclass
class CaseImages:
    t1: sitk.Image
    fs: sitk.Image
    roi: Roi | None  # None: no ROI sent (the bundle's localiser predicts one)
    roi_kind: str  # "label_map" | "center" | "none"


def read_case(upload: Upload, folder: str, phi: Phi, *, max_unzipped_bytes: int, max_entries: int) -> CaseImages:
    """Read the uploaded images into SimpleITK; raise ImageReadError/ServeError on bad input."""
    budget = max_unzipped_bytes
    t1 = read_part(upload.t1, folder, "t1", phi, max_bytes=budget, max_entries=max_entries)
    if upload.t1.suffix == ".zip":
        budget -= sum(os.path.getsize(os.path.join(folder, "t1", f)) for f in os.listdir(os.path.join(folder, "t1")))
    fs = read_part(upload.fs, folder, "fs", phi, max_bytes=max(1, budget), max_entries=max_entries)
    if upload.roi is not None:
        lab = read_part(upload.roi, folder, "roi", phi, max_bytes=budget, max_entries=max_entries, label_map=True)
        check_roi_grid(lab, t1)
        if not sitk.GetArrayViewFromImage(lab).any():
            raise ImageReadError("roi: label map is empty (no voxel > 0); draw the sacroiliac ROI or give roi_center_mm")
        return CaseImages(t1, fs, Roi(label_map=lab), "label_map")
    if upload.roi_center_mm is None:
        return CaseImages(t1, fs, None, "none")
    check_center(upload.roi_center_mm, t1, fs)
    return CaseImages(t1, fs, Roi(center_mm=upload.roi_center_mm), "center")


def geometry(img: sitk.Image) -> dict:
    """An image's grid as JSON-able lists (SimpleITK x, y, z order)."""
    return {"size": list(img.GetSize()), "spacing": list(img.GetSpacing()), "origin": list(img.GetOrigin()),
            "direction": list(img.GetDirection())}
