"""SimpleITK readers: NIfTI (.nii/.nii.gz), NRRD, MHA/MHD and DICOM folders or files.

Every reader returns a 3-D ``sitk.Image`` whose spacing, origin and direction are the
file's own (nothing is reset), plus the SHA-256 of the source bytes used for resuming.
A singleton 4th axis is squeezed (the 3 spatial axes keep their geometry); a real 4-D
image, a 2-D image and multi-component pixels are refused with a one-line reason.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import SimpleITK as sitk

from distmsfa.io import dicom, uris
from distmsfa.io.errors import ImageReadError

#: File suffixes read as single files (anything else that is a folder is read as DICOM).
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")


@dataclasses.dataclass(frozen=True)
class LoadedImage:
    image: sitk.Image
    sha256: str
    source: str  # the path or URI as resolved (never logged beyond the case id)


@dataclasses.dataclass(frozen=True)
class Header:
    """Geometry from headers only (no voxel reads); spacing/size in SimpleITK (x, y, z) order."""

    size_xyz: tuple[int, ...]
    spacing_xyz: tuple[float, ...]
    direction: tuple[float, ...]


def _nifti_gz_size_matches(path: str) -> bool:
    """Cheap integrity test of a .nii.gz: the gzip trailer's ISIZE equals the size the
    NIfTI-1 header implies (a truncated file ends in compressed data, not in its trailer)."""
    import gzip
    import struct
    import zlib

    try:
        with gzip.open(path, "rb") as fh:
            hdr = fh.read(348)
        with open(path, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            isize = struct.unpack("<I", fh.read(4))[0]
    except (OSError, EOFError, struct.error, zlib.error):
        return False
    if len(hdr) < 348:
        return False
    for endian in "<>":
        if struct.unpack(endian + "i", hdr[:4])[0] == 348:
            break
    else:
        return False
    dims = struct.unpack(endian + "8h", hdr[40:56])
    bitpix = struct.unpack(endian + "h", hdr[72:74])[0]
    vox_offset = int(struct.unpack(endian + "f", hdr[108:112])[0])
    if not 1 <= dims[0] <= 7 or bitpix <= 0:
        return False
    nvox = int(np.prod([max(1, d) for d in dims[1:dims[0] + 1]], dtype=np.int64))
    return (vox_offset + nvox * bitpix // 8) % (1 << 32) == isize


def _check_gzip(path: str, what: str) -> None:
    """ITK's NIfTI reader zero-fills a truncated .gz silently: test the stream ourselves
    (the cheap trailer test first; a full decompression only when it does not settle it)."""
    import gzip
    import zlib

    if path.lower().endswith(".nii.gz") and _nifti_gz_size_matches(path):
        return
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 22):
                pass
    except (EOFError, OSError, zlib.error) as exc:
        raise ImageReadError(
            f"{what}: cannot read {os.path.basename(path)} (truncated or corrupt gzip stream: {exc}); re-export or re-copy the file"
        ) from None


def _nifti_nonfinite(path: str) -> int:
    """Count NaN/Inf in a float NIfTI-1 file's raw data.

    ITK's NIfTI reader (niftilib) silently replaces NaN/Inf by 0, which would hide a
    broken export; so the raw voxels are checked here.  0 for other datatypes."""
    import gzip
    import struct

    opener = gzip.open if path.lower().endswith(".gz") else open
    with opener(path, "rb") as fh:
        hdr = fh.read(348)
        if len(hdr) < 348:
            return 0
        endian = "<" if struct.unpack("<i", hdr[:4])[0] == 348 else ">"
        if struct.unpack(endian + "i", hdr[:4])[0] != 348:
            return 0  # NIfTI-2 or not NIfTI: left to ITK
        datatype = struct.unpack(endian + "h", hdr[70:72])[0]
        dtype = {16: "f4", 64: "f8"}.get(datatype)
        if dtype is None:
            return 0
        vox_offset = int(struct.unpack(endian + "f", hdr[108:112])[0])
        fh.read(max(0, vox_offset - 348))
        bad = 0
        item = np.dtype(endian + dtype).itemsize
        while True:
            chunk = fh.read(item * (1 << 20))
            if not chunk:
                break
            arr = np.frombuffer(chunk[: len(chunk) // item * item], dtype=endian + dtype)
            bad += int(arr.size - np.isfinite(arr).sum())
        return bad


def _read_file(path: str, what: str) -> sitk.Image:
    low = path.lower()
    if low.endswith(".gz"):
        _check_gzip(path, what)
    if low.endswith((".nii", ".nii.gz")):
        n_bad = _nifti_nonfinite(path)
        if n_bad:
            raise ImageReadError(
                f"{what}: {n_bad} NaN/Inf voxels; fix the export (NaN/Inf are not valid MR intensities)"
            )
    try:
        return sitk.ReadImage(path)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        hint = next((ln for ln in first if "rror" in ln or "nable" in ln), first[-1] if first else "")
        raise ImageReadError(
            f"{what}: cannot read {os.path.basename(path)} (corrupt, truncated or not an image: {hint.strip()[:160]})"
        ) from None


def to_3d(img: sitk.Image, what: str = "image") -> sitk.Image:
    """Squeeze a singleton 4th axis; refuse 2-D, real 4-D and vector images."""
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise ImageReadError(
            f"{what}: {img.GetNumberOfComponentsPerPixel()}-component pixels (RGB/vector); a scalar MR image is needed"
        )
    dim = img.GetDimension()
    if dim == 4:
        size = list(img.GetSize())
        if size[3] != 1:
            raise ImageReadError(
                f"{what}: real 4-D image of size {tuple(size)} (time series or multi-volume); "
                f"give one 3-D volume"
            )
        img = sitk.Extract(img, size[:3] + [0], [0, 0, 0, 0], sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX)
        dim = 3
    if dim != 3:
        raise ImageReadError(f"{what}: {dim}-D image of size {img.GetSize()}; a 3-D volume is needed")
    if min(img.GetSize()) < 2:
        raise ImageReadError(f"{what}: image of size {img.GetSize()} is a single slice (2-D); a 3-D volume is needed")
    return img


def _read_any(path: str, series: str | None, what: str) -> tuple[sitk.Image, str]:
    """A 3-D image and the checksum of its source, from a file, a DICOM folder or a URI of either."""
    if not uris.exists(path):
        raise ImageReadError(f"{what}: file not found: {path if uris.is_uri(path) else os.path.basename(path)}")
    with uris.local_copy(path) as local:
        if os.path.isdir(local):
            info = dicom.select_series(local, series, what)
            img = dicom.read_series(info, what, local)
            digest = uris.sha256_files(list(info.files))
        else:
            img = _read_file(local, what)
            digest = uris.sha256_file(local)
    return to_3d(img, what), digest


def read_image(path: str, series: str | None = None, what: str = "image") -> LoadedImage:
    """Read one 3-D scalar image as float32 from a file, a DICOM folder or a URI of either."""
    img, digest = _read_any(path, series, what)
    return LoadedImage(sitk.Cast(img, sitk.sitkFloat32), digest, path)


def read_label_map(path: str, what: str = "roi") -> LoadedImage:
    """Read an ITK-SNAP-style label map (integer labels kept) as uint8."""
    img, digest = _read_any(path, None, what)
    arr = sitk.GetArrayViewFromImage(img)
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 255 or not np.all(np.mod(arr, 1) == 0):
        raise ImageReadError(f"{what}: label map must hold integer labels 0..255")
    return LoadedImage(sitk.Cast(img, sitk.sitkUInt8), digest, path)


def read_header(path: str, series: str | None = None) -> Header:
    """Geometry of a local file or DICOM folder from headers only (for the fingerprint)."""
    path = uris.strip_file_uri(path)
    if os.path.isdir(path):
        info = dicom.select_series(path, series)
        r = sitk.ImageFileReader()
        r.SetFileName(info.files[0])
        r.ReadImageInformation()
        size, spacing = list(r.GetSize()), list(r.GetSpacing())
        if len(info.files) > 1:
            r2 = sitk.ImageFileReader()
            r2.SetFileName(info.files[1])
            r2.ReadImageInformation()
            gap = np.linalg.norm(np.subtract(r2.GetOrigin(), r.GetOrigin()))
            if len(size) >= 3:
                size[2] = len(info.files)
                spacing[2] = float(gap) if gap > 0 else spacing[2]
        direction = _series_direction(r, info.files)
        return Header(tuple(size[:3]), tuple(spacing[:3]), direction)
    r = sitk.ImageFileReader()
    r.SetFileName(path)
    r.ReadImageInformation()
    d = r.GetDimension()
    direction = np.asarray(r.GetDirection()).reshape(d, d)[:3, :3].ravel()
    return Header(tuple(r.GetSize()[:3]), tuple(r.GetSpacing()[:3]), tuple(float(v) for v in direction))


def _series_direction(r: sitk.ImageFileReader, files: tuple[str, ...]) -> tuple[float, ...]:
    d = r.GetDimension()
    direction = np.asarray(r.GetDirection()).reshape(d, d)[:3, :3]
    return tuple(float(v) for v in direction.ravel())


def source_checksum(path: str, series: str | None = None, what: str = "image") -> str:
    """SHA-256 of a source without decoding it (a DICOM folder: over the selected series)."""
    if not uris.exists(path):
        raise ImageReadError(f"{what}: file not found: {path if uris.is_uri(path) else os.path.basename(path)}")
    with uris.local_copy(path) as local:
        if os.path.isdir(local):
            return uris.sha256_files(list(dicom.select_series(local, series, what).files))
        return uris.sha256_file(local)
