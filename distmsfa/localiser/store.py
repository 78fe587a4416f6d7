"""A localiser on disk: data, never code (no pickles), so a model bundle can carry it.

Layout of a localiser folder ``L``::

    L/localiser.json       {"format": "distmsfa-localiser/1", "config": LocaliserConfig dict,
                            "arch": "monai.networks.nets.UNet", "weights": "weights.safetensors",
                            "weights_sha256": ..., "train": {...}, "cv": {...} | null, "versions": {...}}
    L/weights.safetensors  the UNet state_dict (safetensors: tensors only, loading runs no code)
    L/cv_metrics.json      per-fold Dice / centroid error when trained with cross-validation

``load_localiser`` checks the format and the weights' SHA-256 before building the net.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from distmsfa.localiser.config import LocaliserConfig
from distmsfa.localiser.model import Localiser, build_net

FORMAT = "distmsfa-localiser/1"
META_FILE = "localiser.json"
WEIGHTS_FILE = "weights.safetensors"


class LocaliserError(ValueError):
    """A localiser folder is missing, altered or not a localiser."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _versions() -> dict:
    import monai
    import SimpleITK
    import torch

    import distmsfa

    return {"distmsfa": distmsfa.__version__, "torch": torch.__version__, "monai": monai.__version__,
            "SimpleITK": SimpleITK.Version_VersionString()}


def save_localiser(localiser: Localiser, out: str | os.PathLike[str], extra: dict | None = None) -> Path:
    """Write ``localiser`` to the folder ``out`` (created; files replaced)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in localiser.net.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE))
    meta = {
        "format": FORMAT, "arch": "monai.networks.nets.UNet", "config": localiser.cfg.to_dict(),
        "weights": WEIGHTS_FILE, "weights_sha256": _sha256(out / WEIGHTS_FILE),
        "labels": {"0": "background", "1": "left sacroiliac joint", "2": "right sacroiliac joint"},
        "input": "(B, 2, D, H, W) float32, channels (T1, FS), each windowed to its percentiles and scaled to [0, 1]",
        "versions": _versions(), **{k: v for k, v in localiser.meta.items() if k not in ("format", "config")},
        **(extra or {}),
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
    return out


def load_localiser(path: str | os.PathLike[str], device: str = "cpu") -> Localiser:
    """Load a localiser folder (or its localiser.json); verifies format and weights checksum."""
    from safetensors.torch import load_file

    p = Path(path)
    folder = p.parent if p.name == META_FILE else p
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise LocaliserError(f"localiser {folder}: no {META_FILE}; train one with `distmsfa localiser train`")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise LocaliserError(f"localiser {folder}: {META_FILE} is not JSON ({exc})") from None
    if meta.get("format") != FORMAT:
        raise LocaliserError(f"localiser {folder}: format {meta.get('format')!r}, expected {FORMAT!r}")
    wpath = folder / str(meta.get("weights", WEIGHTS_FILE))
    if not wpath.is_file():
        raise LocaliserError(f"localiser {folder}: weights file {wpath.name} missing")
    if _sha256(wpath) != meta.get("weights_sha256"):
        raise LocaliserError(f"localiser {folder}: {wpath.name} does not match its checksum (altered or corrupt)")
    cfg = LocaliserConfig.from_dict(meta["config"])
    net = build_net(cfg)
    net.load_state_dict(load_file(str(wpath)))
    return Localiser(cfg, net, meta=meta, device=device)


def localiser_checksum(path: str | os.PathLike[str]) -> str:
    """The localiser's identity: its weights' SHA-256 as recorded (cheap, no weights read)."""
    p = Path(path)
    folder = p.parent if p.name == META_FILE else p
    try:
        return str(json.loads((folder / META_FILE).read_text(encoding="utf-8"))["weights_sha256"])
    except (OSError, ValueError, KeyError):
        raise LocaliserError(f"localiser {folder}: no readable {META_FILE}") from None


_CACHE: dict[tuple[str, str], Localiser] = {}


def cached_localiser(path: str | os.PathLike[str]) -> Localiser:
    """``load_localiser`` once per process and weights checksum (preprocessing workers call
    this per case; a retrained localiser at the same path is reloaded)."""
    key = (os.path.abspath(os.fspath(path)), localiser_checksum(path))
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = load_localiser(path)
    return _CACHE[key]


def predicted_roi_nifti(label_map) -> bytes:
    """The predicted label map as .nii.gz bytes (for the dataset's predicted_rois/ and HTTP answers)."""
    import tempfile

    import SimpleITK as sitk

    with tempfile.TemporaryDirectory() as tmp:
        p = os.path.join(tmp, "roi.nii.gz")
        sitk.WriteImage(label_map, p, True)
        return Path(p).read_bytes()
