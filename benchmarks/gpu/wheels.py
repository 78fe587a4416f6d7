"""Wheels for the GPU machine, which has PyTorch but no Ray and cannot download anything.

    python benchmarks/gpu/wheels.py slim  DIR   # here: drop Ray's Java jars (32 MB) so the folder fits a carry
    python benchmarks/gpu/wheels.py unpack DIR SITE   # there: unzip every wheel of DIR into SITE

``unpack`` is what ``pip install --no-deps --target`` does for a wheel, without pip: the
files as the wheel holds them, with their Unix modes (Ray's ``raylet`` and ``gcs_server``
must stay executable; ``zipfile.extractall`` alone drops the modes).  SITE goes on
PYTHONPATH.  Ray's Java jars are not needed from Python.
"""
from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path

DROP = ("ray/jars/",)  # Java workers only
DROP_SUFFIX = (".js.map",)  # dashboard source maps


def slim(folder: Path) -> None:
    for whl in sorted(folder.glob("ray-*.whl")):
        if ".slim" in whl.name:
            continue
        out = whl.with_name(whl.name.replace(".whl", ".slim.whl"))
        with zipfile.ZipFile(whl) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
            for info in src.infolist():
                if info.filename.startswith(DROP) or info.filename.endswith(DROP_SUFFIX):
                    continue
                dst.writestr(info, src.read(info.filename))
        whl.unlink()
        print(f"{out.name}: {out.stat().st_size / 1e6:.1f} MB")


def unpack(folder: Path, site: Path) -> None:
    site.mkdir(parents=True, exist_ok=True)
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"no .whl in {folder}")
    for whl in wheels:
        with zipfile.ZipFile(whl) as z:
            for info in z.infolist():
                path = z.extract(info, site)
                mode = (info.external_attr >> 16) & 0o777
                if mode:
                    os.chmod(path, mode)
        print(f"unpacked {whl.name}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "slim":
        slim(Path(sys.argv[2]))
    elif len(sys.argv) == 4 and sys.argv[1] == "unpack":
        unpack(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        raise SystemExit(__doc__)
