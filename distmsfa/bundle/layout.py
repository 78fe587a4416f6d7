"""The bundle folder on disk: its files, the checksum manifest, and :func:`verify_bundle`.

    B/bundle.json                   what the bundle is (format, model, folds, threshold, preprocessing...)
    B/weights/fold<k>.safetensors   each fold model's state_dict (safetensors: tensors only, no code)
    B/oof_predictions.csv           pooled out-of-fold predictions the threshold was chosen on
    B/MODEL_CARD.md                 intended use, data, metrics and how they were obtained, limits
    B/checksums.json                {relative path: sha256} of every other file

A bundle is data, never code: every file is JSON, CSV, Markdown or safetensors, and
verification refuses any file the manifest does not list (a dropped-in ``evil.pkl`` or a
``.pt``), so a loader that reads only the listed files never meets a pickle.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

FORMAT = "distmsfa-bundle/1"
BUNDLE_FILE = "bundle.json"
CHECKSUMS_FILE = "checksums.json"
CARD_FILE = "MODEL_CARD.md"
OOF_FILE = "oof_predictions.csv"
WEIGHTS_DIR = "weights"
#: The only file kinds a bundle may hold (by suffix); anything else is foreign.
ALLOWED_SUFFIXES = (".json", ".csv", ".md", ".safetensors")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class BundleError(ValueError):
    """A bundle (or a run to export) is unusable; the one-line message names the file and the problem."""


def weight_file(fold: int) -> str:
    return f"{WEIGHTS_DIR}/fold{int(fold)}.safetensors"


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def list_files(root: Path) -> list[str]:
    """Every entry under ``root`` that is not a directory, as POSIX relative paths (symlinks included)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for d in list(dirnames):
            if os.path.islink(os.path.join(dirpath, d)):  # a linked folder is a foreign entry, not walked
                out.append(os.path.relpath(os.path.join(dirpath, d), root).replace(os.sep, "/"))
                dirnames.remove(d)
        for f in filenames:
            out.append(os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/"))
    return sorted(out)


def write_checksums(root: Path) -> str:
    """Write ``checksums.json`` over every other file; return its sha256 (the bundle's identity)."""
    sums = {rel: sha256_file(root / rel) for rel in list_files(root) if rel != CHECKSUMS_FILE}
    (root / CHECKSUMS_FILE).write_text(json.dumps(sums, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return sha256_file(root / CHECKSUMS_FILE)


def _read_json(root: Path, rel: str) -> Any:
    try:
        return json.loads((root / rel).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{rel}: missing from bundle {root}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{rel}: not valid JSON ({str(exc).splitlines()[0]}) in bundle {root}") from None


def _safe_rel(rel: str) -> bool:
    p = Path(rel)
    return bool(rel) and not p.is_absolute() and ".." not in p.parts and "\\" not in rel


def verify_bundle(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check a bundle against its manifest; return ``bundle.json`` as a dict.

    Raises :class:`BundleError` (one line naming the file) for: no such folder, a
    ``checksums.json`` that is missing or does not parse, a listed file missing, a file whose
    sha256 differs (altered), a file the manifest does not list or of a kind a bundle never
    holds (foreign: e.g. ``evil.pkl``, ``weights/fold0.pt``), a symlink, a ``bundle.json`` of
    another format, or a fold whose weights are not in the bundle."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"{root}: no such bundle folder")
    sums = _read_json(root, CHECKSUMS_FILE)
    if not isinstance(sums, dict) or not all(isinstance(k, str) and isinstance(v, str) and _HEX64.match(v)
                                             for k, v in sums.items()):
        raise BundleError(f"{CHECKSUMS_FILE}: not a mapping of relative path -> sha256 hex in bundle {root}")
    present = list_files(root)
    for rel in present:  # foreign first: never hash (or open) what the manifest does not list
        if rel == CHECKSUMS_FILE:
            continue
        if rel not in sums:
            raise BundleError(f"{rel}: foreign file in bundle {root} (not in {CHECKSUMS_FILE}); "
                              f"a bundle holds only its listed files; remove it or re-export")
        if os.path.islink(root / rel):
            raise BundleError(f"{rel}: is a symlink in bundle {root}; a bundle holds plain files only")
    for rel, digest in sorted(sums.items()):
        if not _safe_rel(rel) or rel == CHECKSUMS_FILE:
            raise BundleError(f"{CHECKSUMS_FILE}: lists an unsafe path {rel!r} in bundle {root}")
        if not rel.endswith(ALLOWED_SUFFIXES):
            raise BundleError(f"{rel}: foreign file kind in bundle {root}; a bundle holds only "
                              f"{', '.join(ALLOWED_SUFFIXES)} files")
        f = root / rel
        if not f.is_file():
            raise BundleError(f"{rel}: missing from bundle {root} (listed in {CHECKSUMS_FILE})")
        if sha256_file(f) != digest:
            raise BundleError(f"{rel}: altered (sha256 differs from {CHECKSUMS_FILE}) in bundle {root}; "
                              f"re-export the bundle or restore the file")
    meta = _read_json(root, BUNDLE_FILE)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise BundleError(f"{BUNDLE_FILE}: format {got!r} is not {FORMAT!r} in bundle {root}")
    for rel in (CARD_FILE, OOF_FILE, *(weight_file(k) for k in meta.get("folds", []))):
        if rel not in sums:
            raise BundleError(f"{rel}: missing from bundle {root} (bundle.json needs it)")
    if not meta.get("folds"):
        raise BundleError(f"{BUNDLE_FILE}: lists no folds in bundle {root}")
    return meta


def bundle_checksum(path: str | os.PathLike[str]) -> str:
    """sha256 of ``checksums.json``: one hex string that identifies the bundle's exact content."""
    return sha256_file(Path(path) / CHECKSUMS_FILE)


def bundle_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A verified bundle's summary (what ``distmsfa bundle info`` prints)."""
    root = Path(path)
    meta = verify_bundle(root)
    sums = json.loads((root / CHECKSUMS_FILE).read_text(encoding="utf-8"))
    size = sum((root / rel).stat().st_size for rel in sums) + (root / CHECKSUMS_FILE).stat().st_size
    cvm = meta.get("cv_metrics") or {}
    pre = meta.get("preprocess") or {}
    return {
        "path": str(root.resolve()),
        "format": meta["format"],
        "checksum": bundle_checksum(root),
        "verified": True,
        "model": meta["model"]["name"],
        "model_cfg": meta["model"].get("model_cfg", {}),
        "folds": meta["folds"],
        "checkpoint": meta.get("checkpoint"),
        "selection": meta.get("selection"),
        "threshold": meta["threshold"],
        "cv_estimate": cvm.get("estimate"),
        "cv_mean": cvm.get("mean"),
        "cv_std": cvm.get("std"),
        "cv_pooled_oof": cvm.get("pooled_oof"),
        "n_oof_cases": cvm.get("n_cases"),
        "crop_size": pre.get("crop_size"),
        "spacing_dhw": pre.get("spacing_dhw"),
        "orientation": pre.get("orientation"),
        "files": len(sums) + 1,
        "size_bytes": size,
        "source": meta.get("source"),
        "versions": meta.get("versions"),
    }
