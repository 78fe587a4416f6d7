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
_TAG_N_IMAGES = "0020|1002"
_TAG_SBS = "0018|0088"  # SpacingBetweenSlices (centre to centre)
_TAG_THICK = "0018|0050"


@dataclasses.dataclass(frozen=True)
class SeriesInfo:
    uid: str
    description: str
    files: tuple[str, ...]
    #: DICOM-looking files in this series' folders that GDCM could not parse (truncated or
    #: corrupt slices): GDCM leaves them out of every series, so reading would silently
    #: build the volume from the remaining slices.
    unreadable: tuple[str, ...] = ()

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


def _looks_dicom(path: str) -> bool:
    """A file meant to be DICOM: a .dcm/.ima name, or the DICM magic after the preamble."""
    name = os.path.basename(path).lower()
    if name.startswith(".") or name == "dicomdir":
        return False
    if name.endswith((".dcm", ".ima", ".dicom")):
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


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
                walk.append((dirpath, sorted(filenames), tuple(reader.GetGDCMSeriesIDs(dirpath) or ())))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
    for dirpath, filenames, uids in walk:
        per_uid = {uid: tuple(reader.GetGDCMSeriesFileNames(dirpath, uid)) for uid in uids}
        used = {os.path.realpath(f) for files in per_uid.values() for f in files}
        unread = tuple(os.path.join(dirpath, f) for f in filenames
                       if os.path.realpath(os.path.join(dirpath, f)) not in used and _looks_dicom(os.path.join(dirpath, f)))
        for uid, files in per_uid.items():
            if not files:
                continue
            bad = unread
            if uid in out:  # a series split over folders: keep every file
                files = out[uid].files + files
                bad = out[uid].unreadable + unread
            try:
                desc = _tag(_header(files[0]), _TAG_DESC)
            except RuntimeError:
                desc = ""
            out[uid] = SeriesInfo(uid, desc, files, bad)
    return sorted(out.values(), key=lambda s: (s.description, s.uid))


def select_series(folder: str, selector: str | None, what: str = "image") -> SeriesInfo:
    """Pick one series; refuse (listing candidates) when none or several match."""
    series = find_series(folder)
    if not series:
        raise ImageReadError(f"{what}: no DICOM series found under {os.path.basename(folder.rstrip('/'))!r}")
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


def check_files_readable(info: SeriesInfo, what: str = "image", root: str | None = None) -> None:
    """Refuse a series with a slice file GDCM could not parse, naming the file (relative to
    ``root``, the folder the manifest gave, never the machine path)."""
    if not info.unreadable:
        return
    f = info.unreadable[0]
    name = os.path.relpath(f, root) if root else os.path.basename(f)
    more = f" (and {len(info.unreadable) - 1} more)" if len(info.unreadable) > 1 else ""
    raise ImageReadError(
        f"{what}: series {info.uid} ({info.description or 'no description'}): file {name}{more} is not readable "
        f"DICOM (truncated or corrupt), so the series would miss a slice; re-export or re-copy the series"
    )


def check_slice_geometry(files: tuple[str, ...], what: str = "image", rtol: float = 0.01) -> None:
    """Refuse mixed orientations, duplicated slice positions and non-uniform slice spacing.

    Positions are ImagePositionPatient projected on the slice normal (the cross product
    of the ImageOrientationPatient rows), as the DICOM standard defines slice location."""
    if len(files) < 2:
        return
    iops, ipps, counts, sbs, thick = [], [], set(), set(), set()
    for f in files:
        try:
            h = _header(f)
        except RuntimeError:
            raise ImageReadError(f"{what}: cannot read the header of slice file {os.path.basename(f)} "
                                 f"(truncated or corrupt); re-export or re-copy the series") from None
        iop, ipp = _tag(h, _TAG_IOP), _tag(h, _TAG_IPP)
        counts.add(_tag(h, _TAG_N_IMAGES))
        sbs.add(_tag(h, _TAG_SBS))
        thick.add(_tag(h, _TAG_THICK))
        if not iop or not ipp:
            return  # enhanced/multi-frame or non-image objects: ITK's reader decides
        iops.append([float(v) for v in iop.split("\\")])
        ipps.append([float(v) for v in ipp.split("\\")])
    declared = {c for c in counts if c}
    if len(declared) == 1 and len(counts) == 1:
        n_decl = int(float(declared.pop()))
        if n_decl > 0 and n_decl != len(files):
            raise ImageReadError(
                f"{what}: the series has {len(files)} slice files but its headers declare {n_decl} images "
                f"(ImagesInAcquisition); slices are missing or extra: re-export the whole series")
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
    _check_declared_spacing(med, sbs, thick, len(files), what)


def _single_float(values: set) -> float | None:
    vals = {v for v in values if v}
    if len(vals) != 1 or len(values) != 1:
        return None
    try:
        return float(vals.pop())
    except ValueError:
        return None


def _check_declared_spacing(med: float, sbs: set, thick: set, n: int, what: str) -> None:
    """Uniform gaps that are 2-4 times the declared SpacingBetweenSlices: every other slice
    (or more) is missing.  Only trusted when the declared spacing is at least the slice
    thickness (some vendors write the gap between slices there instead)."""
    declared, thickness = _single_float(sbs), _single_float(thick)
    if not declared or declared <= 0 or (thickness is not None and declared < thickness - 1e-3):
        return
    k = med / declared
    if round(k) in (2, 3, 4) and abs(k - round(k)) < 0.02:
        raise ImageReadError(
            f"{what}: the {n} slices are {med:.3g} mm apart but the header declares {declared:.3g} mm between slices "
            f"(SpacingBetweenSlices): the series misses slices; re-export the whole series"
        )


def read_series(info: SeriesInfo, what: str = "image", root: str | None = None) -> sitk.Image:
    check_files_readable(info, what, root)
    check_slice_geometry(info.files, what)
    if len(info.files) == 1:  # enhanced multi-frame: one file holds the volume
        return sitk.ReadImage(info.files[0])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(info.files))
    return reader.Execute()
