"""Local paths and URIs (``s3://``, ``gs://``, ``file://``...) for raw sources.

SimpleITK reads only local files, so a URI is first copied to a local temporary
file (or folder, for a DICOM series) through ``pyarrow.fs``, falling back to
``fsspec`` for schemes pyarrow does not know.  Checksums are SHA-256 of the bytes.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

_CHUNK = 1 << 20


def is_uri(path: str) -> bool:
    return "://" in str(path)


def strip_file_uri(path: str) -> str:
    """``file:///a/b`` -> ``/a/b``; other strings unchanged."""
    return path[len("file://"):] if str(path).startswith("file://") else str(path)


def resolve_source(path: str, base_dir: str | os.PathLike[str] | None) -> str:
    """Make a manifest path absolute: relative paths are relative to the manifest's folder."""
    path = str(path).strip()
    if path.startswith("file://"):
        return strip_file_uri(path)
    if is_uri(path):
        return path
    p = Path(path).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = Path(base_dir) / p
    return str(p)


def _pyarrow_fs(uri: str):
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception:  # noqa: BLE001 - unknown to pyarrow: wrap fsspec
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def exists(path: str) -> bool:
    if not is_uri(path):
        return os.path.exists(path)
    import pyarrow.fs as pafs

    fs, inner = _pyarrow_fs(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
    """Yield a local path for ``path``; a URI is downloaded to a temporary file/folder first.

    The suffix is kept (``.nii.gz`` matters to SimpleITK's reader choice)."""
    if not is_uri(path):
        yield path
        return
    import pyarrow.fs as pafs

    fs, inner = _pyarrow_fs(path)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{path} does not exist")
    tmp = tempfile.mkdtemp(prefix="distmsfa-src-")
    try:
        name = inner.rstrip("/").rsplit("/", 1)[-1] or "source"
        if info.type == pafs.FileType.Directory:
            root = os.path.join(tmp, name)
            for f in fs.get_file_info(pafs.FileSelector(inner, recursive=True)):
                if f.type != pafs.FileType.File:
                    continue
                rel = f.path[len(inner.rstrip("/")) + 1:]
                dst = os.path.join(root, rel)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                _download(fs, f.path, dst)
            yield root
        else:
            dst = os.path.join(tmp, name)
            _download(fs, inner, dst)
            yield dst
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _download(fs, src: str, dst: str) -> None:
    # compression=None: pyarrow would otherwise gunzip ".gz" files on the fly
    with fs.open_input_stream(src, compression=None) as fin, open(dst, "wb") as fout:
        while True:
            chunk = fin.read(_CHUNK)
            if not chunk:
                break
            fout.write(chunk)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_files(paths: list[str]) -> str:
    """One checksum over several files (a DICOM series): names and bytes, in the given order."""
    h = hashlib.sha256()
    for p in paths:
        h.update(os.path.basename(p).encode())
        h.update(bytes.fromhex(sha256_file(p)))
    return h.hexdigest()
