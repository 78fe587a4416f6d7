"""DICOM folders: find series (recursively), select one, check its slice geometry.

Study folders nest series folders (often with spaces in their names), so every
sub-folder is searched.  A series is selected by exact SeriesInstanceUID or, failing
that, by a case-insensitive regular expression on SeriesDescription; ambiguity is
refused with the candidates listed, never resolved by guessing.
"""
from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
import SimpleITK as sitk

from distmsfa.io.errors import ImageReadError

_TAG_DESC = "0008|103e"
_TAG_IPP = "0020|0032"
_TAG_IOP = "0020|0037"


@dataclasses.dataclass(frozen=True)
class SeriesInfo:
    uid: str
    description: str
    files: tuple[str, ...]

    def label(self) -> str:
        return f"{self.uid} ({self.description or 'no description'!s}, {len(self.files)} files)"


def _header(path: str) -> sitk.ImageFileReader:
    r = sitk.ImageFileReader()
    r.SetFileName(path)
    r.LoadPrivateTagsOff()
    r.ReadImageInformation()
    return r


def _tag(r: sitk.ImageFileReader, key: str) -> str:
    return r.GetMetaData(key).strip() if r.HasMetaDataKey(key) else ""


def find_series(folder: str) -> list[SeriesInfo]:
    """Every DICOM series under ``folder`` (recursive), sorted by description then UID."""
    out: dict[str, SeriesInfo] = {}
    reader = sitk.ImageSeriesReader()
    walk = []
    # GDCM warns "No Series were found" for every folder without DICOM files (study and
    # date folders): expected here, so warnings are muted during the scan.
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames.sort()
            if filenames:
                walk.append((dirpath, tuple(reader.GetGDCMSeriesIDs(dirpath) or ())))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
    for dirpath, uids in walk:
        for uid in uids:
            files = tuple(reader.GetGDCMSeriesFileNames(dirpath, uid))
            if not files:
                continue
            if uid in out:  # a series split over folders: keep every file
                files = out[uid].files + files
            try:
                desc = _tag(_header(files[0]), _TAG_DESC)
            except RuntimeError:
                desc = ""
            out[uid] = SeriesInfo(uid, desc, files)
    return sorted(out.values(), key=lambda s: (s.description, s.uid))


def select_series(folder: str, selector: str | None, what: str = "image") -> SeriesInfo:
    """Pick one series; refuse (listing candidates) when none or several match."""
    series = find_series(folder)
    if not series:
        raise ImageReadError(f"{what}: no DICOM series found under {folder}")
    if selector:
        exact = [s for s in series if s.uid == selector]
        if exact:
            return exact[0]
        try:
            pat = re.compile(selector, re.IGNORECASE)
        except re.error as exc:
            raise ImageReadError(f"{what}: series selector {selector!r} is not a valid regex ({exc})") from None
        matches = [s for s in series if pat.search(s.description)]
    else:
        matches = series
    if len(matches) == 1:
        return matches[0]
    cands = "; ".join(s.label() for s in (matches or series))
    if not matches:
        raise ImageReadError(
            f"{what}: no series under {os.path.basename(folder)!r} matches {selector!r}; candidates: {cands}"
        )
    how = f"{selector!r} matches {len(matches)} series" if selector else f"folder holds {len(matches)} series"
    raise ImageReadError(
        f"{what}: {how}; choose one with the manifest column {what}_series "
        f"(SeriesInstanceUID or a description regex); candidates: {cands}"
    )


def check_slice_geometry(files: tuple[str, ...], what: str = "image", rtol: float = 0.01) -> None:
    """Refuse mixed orientations, duplicated slice positions and non-uniform slice spacing.

    Positions are ImagePositionPatient projected on the slice normal (the cross product
    of the ImageOrientationPatient rows), as the DICOM standard defines slice location."""
    if len(files) < 2:
        return
    iops, ipps = [], []
    for f in files:
        h = _header(f)
        iop, ipp = _tag(h, _TAG_IOP), _tag(h, _TAG_IPP)
        if not iop or not ipp:
            return  # enhanced/multi-frame or non-image objects: ITK's reader decides
        iops.append([float(v) for v in iop.split("\\")])
        ipps.append([float(v) for v in ipp.split("\\")])
    iops_a = np.asarray(iops)
    if np.abs(iops_a - iops_a[0]).max() > 1e-3:
        raise ImageReadError(
            f"{what}: series mixes slice orientations (a localizer or a multi-plane series); select another series"
        )
    normal = np.cross(iops_a[0, :3], iops_a[0, 3:])
    pos = np.sort(np.asarray(ipps) @ normal)
    gaps = np.diff(pos)
    if (gaps < 1e-3).any():
        n_dup = int((gaps < 1e-3).sum())
        raise ImageReadError(
            f"{what}: {n_dup} of {len(files)} slices repeat a position already taken "
            f"(stacked b-values, echoes or time points?); select a single-volume series"
        )
    med = float(np.median(gaps))
    if np.abs(gaps - med).max() > max(rtol * med, 1e-2):
        raise ImageReadError(
            f"{what}: non-uniform slice spacing (gaps {gaps.min():.3g}-{gaps.max():.3g} mm, median {med:.3g}); "
            f"missing slices or a variable-spacing series are not resampled silently; export a uniform series"
        )


def read_series(info: SeriesInfo, what: str = "image") -> sitk.Image:
    check_slice_geometry(info.files, what)
    if len(info.files) == 1:  # enhanced multi-frame: one file holds the volume
        return sitk.ReadImage(info.files[0])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(info.files))
    return reader.Execute()
