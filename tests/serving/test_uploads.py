"""Request parsing, zip safety, case reading and API keys (plain Python, no Ray)."""
from __future__ import annotations

import os
import stat
import zipfile
import io

import numpy as np
import pytest
import SimpleITK as sitk

from _files import (image_2d, image_4d, image_nan, nifti_bytes, random_bytes, read_bytes, shifted, truncated_gz,
                    zip_bomb, zip_entries, zip_folder)
from distmsfa.io.errors import ImageReadError
from distmsfa.serving import auth
from distmsfa.serving.cases import Phi, extract_zip, private_folder, read_case
from distmsfa.serving.errors import ServeError
from distmsfa.serving.uploads import MultipartCollector, encode_multipart

GOOD = {"t1": ("t1.nii.gz", b"x"), "fs": ("fs.nii.gz", b"y"), "roi_center_mm": "1,2,3"}


def parse(parts: dict, ctype: str | None = None, chunk: int = 7):
    body, ct = encode_multipart(parts)
    c = MultipartCollector(ctype if ctype is not None else ct)
    for i in range(0, len(body), chunk):
        c.feed(body[i:i + chunk])
    return c.finish()


def refused(fn, status: int, code: str) -> ServeError:
    with pytest.raises(ServeError) as ei:
        fn()
    assert (ei.value.status, ei.value.code) == (status, code), ei.value.message
    assert ei.value.body() == {"error": {"code": code, "message": ei.value.message}}
    return ei.value


def test_good_multipart_streamed_in_small_chunks():
    up = parse({**GOOD, "case_id": "ext-001"})
    assert (up.t1.suffix, up.t1.data, up.fs.data, up.roi, up.roi_center_mm, up.case_id) == \
        (".nii.gz", b"x", b"y", None, (1.0, 2.0, 3.0), "ext-001")


def test_no_roi_parses_to_a_case_whose_roi_is_predicted():
    """Neither roi nor roi_center_mm: valid at parsing (the Preprocess stage predicts the ROI
    with the bundle's localiser, or refuses the case with roi_required when it has none)."""
    up = parse({"t1": ("a.nii", b"x"), "fs": ("b.nii", b"y")})
    assert up.roi is None and up.roi_center_mm is None


@pytest.mark.parametrize("parts,status,code", [
    ({"t1": ("a.nii", b"x"), "roi_center_mm": "1,2,3"}, 422, "missing_part"),
    ({**GOOD, "roi": ("r.nii.gz", b"z")}, 422, "ambiguous_roi"),
    ({**GOOD, "age": "42"}, 400, "unknown_field"),
    ({**GOOD, "t1": ("t1.png", b"x")}, 415, "unsupported_format"),
    ({**GOOD, "t1": ("t1.nii.gz", b"")}, 422, "empty_file"),
    ({**GOOD, "t1": "not a file"}, 422, "not_a_file"),
    ({**GOOD, "roi_center_mm": "1,2"}, 422, "invalid_field"),
    ({**GOOD, "roi_center_mm": "1,nan,3"}, 422, "invalid_field"),
    ({**GOOD, "case_id": "../../etc"}, 422, "invalid_field"),
])
def test_bad_fields(parts, status, code):
    refused(lambda: parse(parts), status, code)


def test_wrong_content_type_and_truncated_body():
    refused(lambda: MultipartCollector("application/json"), 415, "unsupported_media_type")
    refused(lambda: MultipartCollector(None), 415, "unsupported_media_type")
    body, ct = encode_multipart(GOOD)
    c = MultipartCollector(ct)
    c.feed(body[: len(body) // 2])
    refused(c.finish, 400, "bad_multipart")


def test_zip_traversal_absolute_link_bomb(tmp_path):
    kw = dict(max_bytes=8 << 20, max_entries=100)
    refused(lambda: extract_zip(zip_entries({"../evil.dcm": b"x"}), str(tmp_path / "a"), "t1", **kw), 422, "unsafe_zip")
    refused(lambda: extract_zip(zip_entries({"/etc/evil": b"x"}), str(tmp_path / "b"), "t1", **kw), 422, "unsafe_zip")
    refused(lambda: extract_zip(zip_entries({"a/../../x": b"x"}), str(tmp_path / "b2"), "t1", **kw), 422, "unsafe_zip")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    refused(lambda: extract_zip(buf.getvalue(), str(tmp_path / "c"), "t1", **kw), 422, "unsafe_zip")
    bomb = zip_bomb(16)
    assert len(bomb) < 100_000
    refused(lambda: extract_zip(bomb, str(tmp_path / "d"), "t1", **kw), 413, "zip_too_large")
    refused(lambda: extract_zip(random_bytes(), str(tmp_path / "e"), "t1", **kw), 422, "corrupt_zip")
    refused(lambda: extract_zip(zip_entries({f"{i}.dcm": b"x" for i in range(101)}), str(tmp_path / "f"), "t1", **kw),
            413, "zip_too_many_entries")
    assert not (tmp_path / "a").exists() or not os.listdir(tmp_path / "a")  # nothing written before the checks


def test_zip_bomb_with_lying_header_writes_little(tmp_path):
    """A bomb whose headers declare 1 KiB: the declared-size check passes, unpacking stops early."""
    import struct

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.dcm", b"\0" * (16 << 20))
    data = bytearray(buf.getvalue())
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # local header, central directory
        i = data.index(sig)
        data[i + off:i + off + 4] = struct.pack("<I", 1024)
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        assert zf.infolist()[0].file_size == 1024  # the lie is what a reader sees
    with pytest.raises(ServeError) as ei:
        extract_zip(bytes(data), str(tmp_path / "x"), "t1", max_bytes=1 << 20, max_entries=10)
    assert ei.value.status in (413, 422)
    written = sum(p.stat().st_size for p in (tmp_path / "x").rglob("*") if p.is_file())
    assert written <= 1 << 20


def _upload(t1: bytes, fs: bytes, roi: bytes | None = None, center=None, t1_name="t1.nii.gz", fs_name="fs.nii.gz"):
    parts = {"t1": (t1_name, t1), "fs": (fs_name, fs)}
    if roi is not None:
        parts["roi"] = ("roi.nii.gz", roi)
    if center is not None:
        parts["roi_center_mm"] = ",".join(str(v) for v in center)
    return parse(parts, chunk=1 << 16)


def _read(up):
    with private_folder() as d:
        folder = d
        out = read_case(up, d, Phi(), max_unzipped_bytes=64 << 20, max_entries=1000)
    assert not os.path.exists(folder)  # the private folder is gone after the request
    return out


def test_read_good_nifti_and_dicom_zip(syn_cases):
    r = syn_cases["rows"][0]
    case = _read(_upload(read_bytes(r["t1"]), read_bytes(r["fs"]), roi=read_bytes(r["roi"])))
    assert case.roi_kind == "label_map" and case.t1.GetDimension() == 3
    d = syn_cases["dicom"]
    phi = Phi()
    up = _upload(zip_folder(d["t1"]), zip_folder(d["fs"]), roi=read_bytes(d["roi"]), t1_name="t1.zip", fs_name="fs.zip")
    with private_folder() as folder:
        case = read_case(up, folder, phi, max_unzipped_bytes=64 << 20, max_entries=1000)
        assert os.stat(folder).st_mode & 0o777 == 0o700
    ref = sitk.ReadImage(d["roi"])
    assert case.t1.GetSize() == ref.GetSize()
    assert d["patient_id"] in phi.values  # seen, so that it can be scrubbed
    assert phi.scrub(f"cannot read {d['patient_id']} files") == "cannot read [removed] files"


def test_bad_images_are_refused_with_one_line(syn_cases):
    r = syn_cases["rows"][0]
    t1b, fsb, roib = read_bytes(r["t1"]), read_bytes(r["fs"]), read_bytes(r["roi"])
    t1 = sitk.ReadImage(r["t1"])
    roi = sitk.ReadImage(r["roi"])
    cases = {
        "truncated": _upload(truncated_gz(t1b), fsb, roi=roib),
        "random bytes .nii": _upload(random_bytes(), fsb, roi=roib, t1_name="t1.nii"),
        "2-D": _upload(image_2d(), fsb, roi=roib),
        "4-D": _upload(image_4d(), fsb, roi=roib),
        "NaN": _upload(image_nan(t1), fsb, roi=roib),
        "empty roi": _upload(t1b, fsb, roi=nifti_bytes(roi * 0)),
        "roi other grid": _upload(t1b, fsb, roi=nifti_bytes(sitk.Resample(roi, [s // 2 for s in roi.GetSize()],
                                                                          sitk.Transform(), sitk.sitkNearestNeighbor,
                                                                          roi.GetOrigin(), [2 * v for v in roi.GetSpacing()],
                                                                          roi.GetDirection()))),
        "roi outside": _upload(t1b, fsb, roi=nifti_bytes(shifted(roi, 500.0))),
        "center outside both": _upload(t1b, fsb, center=(9000.0, 9000.0, 9000.0)),
        "zip two series": _upload(zip_entries({}), fsb, roi=roib, t1_name="t1.zip"),
    }
    d = syn_cases["dicom"]
    import tempfile
    with tempfile.TemporaryDirectory() as two:
        import shutil
        shutil.copytree(d["t1"], os.path.join(two, "a"))
        shutil.copytree(d["fs"], os.path.join(two, "b"))
        cases["zip two series"] = _upload(zip_folder(two), fsb, roi=roib, t1_name="t1.zip")
    for name, up in cases.items():
        with pytest.raises((ImageReadError, ServeError)) as ei:
            _read(up)
        msg = str(ei.value) if isinstance(ei.value, ImageReadError) else ei.value.message
        assert "\n" not in msg and len(msg) < 600, (name, msg)
    with pytest.raises(ImageReadError, match="2 DICOM series"):
        _read(cases["zip two series"])
    with pytest.raises(ImageReadError, match="outside both"):
        _read(cases["center outside both"])
    with pytest.raises(ImageReadError, match="NaN"):
        _read(cases["NaN"])


def test_api_keys(tmp_path, monkeypatch):
    key = "k" * 24
    f = tmp_path / "key"
    f.write_text(key + "\n")
    assert auth.read_key(str(f), environ={}) == key
    assert auth.read_key(None, environ={auth.KEY_ENV: key}) == key
    assert auth.read_key(None, environ={}) is None
    with pytest.raises(auth.ApiKeyError, match="at least"):
        auth.read_key(None, environ={auth.KEY_ENV: "short"})
    with pytest.raises(auth.ApiKeyError, match="cannot read"):
        auth.read_key(str(tmp_path / "missing"), environ={})
    dig = auth.key_digest(key)
    assert auth.key_matches(key, dig) and not auth.key_matches(key + "x", dig) and not auth.key_matches(None, dig)
    assert not auth.key_matches("", auth.key_digest(""))
    assert auth.presented_key({"authorization": f"Bearer {key}"}) == key
    assert auth.presented_key({"x-api-key": key}) == key
    assert auth.presented_key({"authorization": f"Basic {key}"}) is None
