"""Upload parsing: a ``multipart/form-data`` body into named parts, checked field by field.

Fields (``POST /v1/predict``): files ``t1`` and ``fs`` (NIfTI ``.nii``/``.nii.gz``, NRRD, MHA,
or a ``.zip`` holding one DICOM series), the ROI as file ``roi`` (a label map on the T1 grid)
or text ``roi_center_mm`` (``"x,y,z"``, LPS mm), or none (the bundle's localiser then predicts
it, issue 13; without a localiser the service refuses the case), optional text ``case_id``.  Anything else is
refused; so is a body that is not multipart.  The parser is incremental (``feed`` as the
body streams in) so the ingress can enforce the size limit while reading.

The client's file names are used for their suffix only: they may hold patient names, so
they are never written to disk, logged or echoed.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re

from python_multipart.multipart import MultipartParser, parse_options_header

from distmsfa.serving.errors import BAD_REQUEST, UNPROCESSABLE, UNSUPPORTED_MEDIA, ServeError

FILE_FIELDS = ("t1", "fs", "roi")
TEXT_FIELDS = ("roi_center_mm", "case_id")
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
SERIES_SUFFIXES = IMAGE_SUFFIXES + (".zip",)
_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_MAX_TEXT = 4096


@dataclasses.dataclass(frozen=True)
class UploadedFile:
    suffix: str  # one of SERIES_SUFFIXES, lower case
    data: bytes


@dataclasses.dataclass(frozen=True)
class Upload:
    """A checked request: ``t1``, ``fs`` files, at most one ROI form (none: to be predicted), a case id (may be None)."""

    t1: UploadedFile
    fs: UploadedFile
    roi: UploadedFile | None
    roi_center_mm: tuple[float, float, float] | None
    case_id: str | None

    @property
    def nbytes(self) -> int:
        return len(self.t1.data) + len(self.fs.data) + (len(self.roi.data) if self.roi else 0)


def boundary_of(content_type: str | None) -> bytes:
    """The multipart boundary, or 415 when the body is not ``multipart/form-data``."""
    ctype, opts = parse_options_header(content_type or "")
    if ctype != b"multipart/form-data":
        shown = (content_type or "none").split(";")[0][:60]
        raise ServeError(UNSUPPORTED_MEDIA, "unsupported_media_type",
                         f"Content-Type is {shown!r}; send multipart/form-data with parts t1, fs and roi or roi_center_mm")
    b = opts.get(b"boundary")
    if not b:
        raise ServeError(BAD_REQUEST, "bad_multipart", "multipart/form-data without a boundary parameter")
    return b


def suffix_of(filename: str, allowed: tuple[str, ...]) -> str | None:
    low = filename.lower()
    return next((s for s in allowed if low.endswith(s)), None)


class MultipartCollector:
    """Feed body chunks, then ``finish()`` -> :class:`Upload` (raises ``ServeError``)."""

    def __init__(self, content_type: str | None) -> None:
        self._parts: list[tuple[str | None, str | None, bytearray]] = []
        self._headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""
        self._ended = False
        cb = {
            "on_part_begin": self._part_begin,
            "on_part_data": lambda d, s, e: self._parts[-1][2].extend(d[s:e]),
            "on_header_field": lambda d, s, e: setattr(self, "_field", self._field + d[s:e]),
            "on_header_value": lambda d, s, e: setattr(self, "_value", self._value + d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_end": lambda: setattr(self, "_ended", True),
        }
        self._parser = MultipartParser(boundary_of(content_type), cb)

    def _part_begin(self) -> None:
        self._headers = {}
        self._parts.append((None, None, bytearray()))

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field = self._value = b""

    def _headers_finished(self) -> None:
        disp, opts = parse_options_header(self._headers.get(b"content-disposition", b""))
        if disp != b"form-data" or b"name" not in opts:
            raise ServeError(BAD_REQUEST, "bad_multipart", "a part has no Content-Disposition: form-data; name=...")
        name = opts[b"name"].decode("utf-8", "replace")
        filename = opts[b"filename"].decode("utf-8", "replace") if b"filename" in opts else None
        self._parts[-1] = (name, filename, self._parts[-1][2])

    def feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except ServeError:
            raise
        except Exception as exc:  # noqa: BLE001 - python-multipart raises several types
            raise ServeError(BAD_REQUEST, "bad_multipart", f"malformed multipart body ({type(exc).__name__})") from None

    def finish(self) -> Upload:
        try:
            self._parser.finalize()
        except Exception:  # noqa: BLE001
            pass
        if not self._ended:
            raise ServeError(BAD_REQUEST, "bad_multipart", "multipart body ends before its closing boundary (truncated upload?)")
        return build_upload(self._parts)


def build_upload(parts: list[tuple[str | None, str | None, bytearray]]) -> Upload:
    known = FILE_FIELDS + TEXT_FIELDS
    seen: dict[str, tuple[str | None, bytes]] = {}
    for name, filename, data in parts:
        if name not in known:
            close = difflib.get_close_matches(name or "", known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ServeError(BAD_REQUEST, "unknown_field",
                             f"unknown field {str(name)[:40]!r}{hint}; known fields: {', '.join(known)}")
        if name in seen:
            raise ServeError(BAD_REQUEST, "duplicate_field", f"field {name!r} given twice; give it once")
        seen[name] = (filename, bytes(data))

    files: dict[str, UploadedFile] = {}
    for name in FILE_FIELDS:
        if name not in seen:
            continue
        filename, data = seen[name]
        if filename is None:
            raise ServeError(UNPROCESSABLE, "not_a_file", f"{name} must be a file part (with a filename), not a text field")
        allowed = SERIES_SUFFIXES if name != "roi" else IMAGE_SUFFIXES
        suffix = suffix_of(filename, allowed)
        if suffix is None:
            raise ServeError(UNSUPPORTED_MEDIA, "unsupported_format",
                             f"{name}: file type not accepted; send {', '.join(allowed)}"
                             + (" (a .zip with one DICOM series)" if name != "roi" else " (a label map)"))
        if not data:
            raise ServeError(UNPROCESSABLE, "empty_file", f"{name}: the uploaded file is empty")
        files[name] = UploadedFile(suffix, data)
    texts: dict[str, str] = {}
    for name in TEXT_FIELDS:
        if name not in seen:
            continue
        filename, data = seen[name]
        if filename is not None:
            raise ServeError(UNPROCESSABLE, "not_a_text_field", f"{name} must be a text field, not a file")
        if len(data) > _MAX_TEXT:
            raise ServeError(UNPROCESSABLE, "invalid_field", f"{name}: value too long")
        texts[name] = data.decode("utf-8", "replace").strip()

    missing = [n for n in ("t1", "fs") if n not in files]
    if missing:
        raise ServeError(UNPROCESSABLE, "missing_part",
                         f"missing file part(s) {', '.join(missing)}; send t1 and fs (and roi or roi_center_mm)")
    has_roi, has_center = "roi" in files, "roi_center_mm" in texts
    if has_roi and has_center:  # neither: the ROI is predicted (or refused) by the Preprocess stage
        raise ServeError(UNPROCESSABLE, "ambiguous_roi",
                         "give at most one ROI: a label map file part roi, or a text field roi_center_mm='x,y,z' (LPS mm)")
    center = parse_center(texts["roi_center_mm"]) if has_center else None
    case_id = texts.get("case_id") or None
    if case_id is not None and not _CASE_ID.match(case_id):
        raise ServeError(UNPROCESSABLE, "invalid_field",
                         "case_id may only hold letters, digits, '.', '_' and '-' (at most 128 characters)")
    return Upload(files["t1"], files["fs"], files.get("roi"), center, case_id)


def parse_center(text: str) -> tuple[float, float, float]:
    parts = [p for p in re.split(r"[,\s;]+", text.strip().strip("()[]")) if p]
    try:
        vals = tuple(float(p) for p in parts)
    except ValueError:
        vals = ()
    if len(vals) != 3 or not all(math.isfinite(v) and abs(v) < 1e7 for v in vals):
        raise ServeError(UNPROCESSABLE, "invalid_field",
                         f"roi_center_mm needs 3 finite numbers 'x,y,z' (LPS mm), got {text[:60]!r}")
    return vals  # type: ignore[return-value]


def encode_multipart(parts: dict) -> tuple[bytes, str]:
    """Build a multipart body (for clients and tests): ``{name: str | (filename, bytes)}``."""
    import secrets

    boundary = "distmsfa" + secrets.token_hex(12)
    out = bytearray()
    for name, value in parts.items():
        out += f"--{boundary}\r\n".encode()
        if isinstance(value, tuple):
            filename, data = value
            out += (f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                    "Content-Type: application/octet-stream\r\n\r\n").encode()
            out += data
        else:
            out += f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + str(value).encode()
        out += b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"
