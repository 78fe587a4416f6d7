"""A model bundle that carries a localiser (``bundle.json`` ``"localiser"`` slot).

``attach_localiser(bundle, localiser)`` verifies both, copies the localiser's two files (JSON +
safetensors: kinds a bundle may hold) into ``B/localiser/``, records it in ``bundle.json`` and
rewrites ``checksums.json``, then verifies the bundle again.  ``bundle_localiser(bundle)``
verifies the bundle and loads its localiser, or returns None when it carries none (a request
without an ROI must then be refused).  ``localiser_folder(path)`` takes either a localiser
folder or a bundle carrying one (``preprocess --localiser``) and returns the localiser folder.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from distmsfa.localiser.model import Localiser
from distmsfa.localiser.store import META_FILE, WEIGHTS_FILE, load_localiser

LOCALISER_DIR = "localiser"


def attach_localiser(bundle: str | os.PathLike[str], localiser: str | os.PathLike[str], *, force: bool = False) -> dict:
    """Copy ``localiser`` into ``bundle``; returns the bundle.json ``"localiser"`` record."""
    from distmsfa.bundle.layout import BUNDLE_FILE, BundleError, verify_bundle, write_checksums

    root = Path(bundle)
    meta = verify_bundle(root)
    loc = load_localiser(localiser)  # format and weights checksum
    if meta.get("localiser") and not force:
        raise BundleError(f"{BUNDLE_FILE}: bundle {root} already carries a localiser; pass --force to replace it")
    src = Path(localiser)
    src = src.parent if src.name == META_FILE else src
    dst = root / LOCALISER_DIR
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir()
    for name in (META_FILE, WEIGHTS_FILE):
        shutil.copyfile(src / name, dst / name)
    cv = (loc.meta.get("cv") or {})
    meta["localiser"] = {
        "path": LOCALISER_DIR, "format": loc.meta.get("format"), "weights_sha256": loc.meta.get("weights_sha256"),
        "config": loc.cfg.to_dict(), "cv_pooled": cv.get("pooled"), "cv_external": cv.get("external"),
        "cv_how": cv.get("how"),
    }
    (root / BUNDLE_FILE).write_text(json.dumps(meta, indent=2))
    write_checksums(root)
    verify_bundle(root)
    return meta["localiser"]


def bundle_localiser(bundle: str | os.PathLike[str], device: str = "cpu") -> Localiser | None:
    """The bundle's localiser (verified), or None when its bundle.json records none."""
    from distmsfa.bundle.layout import verify_bundle

    meta = verify_bundle(bundle)
    rec = meta.get("localiser")
    if not rec:
        return None
    return load_localiser(Path(bundle) / rec.get("path", LOCALISER_DIR), device=device)


def localiser_folder(path: str | os.PathLike[str]) -> Path:
    """The localiser folder of ``path``: a localiser folder (checked) or a model bundle that carries
    one (bundle verified with its checksums, localiser loaded).  ``LocaliserError`` (a ValueError)
    for a bundle without a localiser or a folder that is neither."""
    from distmsfa.bundle.layout import BUNDLE_FILE
    from distmsfa.localiser.store import LocaliserError

    p = Path(path)
    if (p / BUNDLE_FILE).is_file():
        if bundle_localiser(p) is None:
            raise LocaliserError(f"bundle {p} carries no localiser; attach one with `distmsfa localiser attach "
                                 f"--bundle {p} --localiser L`, or pass a localiser folder")
        from distmsfa.bundle.layout import verify_bundle

        return p / (verify_bundle(p)["localiser"].get("path") or LOCALISER_DIR)
    load_localiser(p)  # format and weights checksum (LocaliserError names the problem)
    return p.parent if p.name == META_FILE else p
