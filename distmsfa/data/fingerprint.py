"""Dataset fingerprint (nnU-Net style, headers only) and the preprocessing fingerprint.

* ``dataset_fingerprint`` reads only image headers (no voxels) of every case's T1 and
  FS, reorients their spacing/size to the canonical array order (D, H, W) and takes
  medians.  The default target spacing is the median T1 spacing: the T1 grid is the
  reference grid of the pair.
* ``params_fingerprint`` hashes everything that changes the arrays written (resolved
  spacing, crop, orientation, clipping, interpolation, code and library versions); a
  case is recomputed when it changes.
"""
from __future__ import annotations

import hashlib
import json
from typing import Iterable

import numpy as np

from distmsfa.data.preprocess import PreprocessConfig, canonical_direction, canonical_spacing_dhw

#: Bump when the preprocessing code changes its output for the same inputs.
PREPROCESS_VERSION = 1


def _canonical_size_dhw(size_xyz, direction, orientation) -> tuple[int, ...]:
    d = np.asarray(direction, float).reshape(3, 3)
    c = canonical_direction(direction, orientation)
    perm = np.abs(c.T @ d).argmax(axis=1)
    return tuple(int(v) for v in np.asarray(size_xyz)[perm][::-1])


def dataset_fingerprint(cases: Iterable, orientation: str = "LIP") -> dict:
    """Median spacing/size (D, H, W) of T1 and FS over the cases whose headers read.

    URIs are skipped (they would need a download); unreadable headers are skipped too:
    those cases fail later with their own reason."""
    from distmsfa.io import read_header
    from distmsfa.io.uris import is_uri

    stats: dict[str, dict[str, list]] = {"t1": {"spacing": [], "size": []}, "fs": {"spacing": [], "size": []}}
    n_skipped = 0
    for case in cases:
        for seq in ("t1", "fs"):
            path = getattr(case, seq)
            if is_uri(path):
                n_skipped += 1
                continue
            try:
                h = read_header(path, getattr(case, f"{seq}_series"))
            except Exception:  # noqa: BLE001 - reported when the case itself runs
                n_skipped += 1
                continue
            if len(h.spacing_xyz) < 3 or len(h.direction) != 9:
                n_skipped += 1
                continue
            stats[seq]["spacing"].append(canonical_spacing_dhw(h.spacing_xyz, h.direction, orientation))
            stats[seq]["size"].append(_canonical_size_dhw(h.size_xyz, h.direction, orientation))
    out: dict = {"orientation": orientation, "headers_skipped": n_skipped}
    for seq, s in stats.items():
        out[seq] = {
            "n": len(s["spacing"]),
            "median_spacing_dhw": [float(v) for v in np.median(s["spacing"], axis=0)] if s["spacing"] else None,
            "median_size_dhw": [int(v) for v in np.median(s["size"], axis=0)] if s["size"] else None,
            "min_spacing_dhw": [float(v) for v in np.min(s["spacing"], axis=0)] if s["spacing"] else None,
            "max_spacing_dhw": [float(v) for v in np.max(s["spacing"], axis=0)] if s["spacing"] else None,
        }
    return out


def target_spacing(cfg: PreprocessConfig, fingerprint: dict | None) -> tuple[float, float, float]:
    if cfg.target_spacing_mm is not None:
        return tuple(cfg.target_spacing_mm)  # type: ignore[return-value]
    med = (fingerprint or {}).get("t1", {}).get("median_spacing_dhw")
    if not med:
        raise ValueError(
            "cannot derive the target spacing: no T1 header could be read; "
            "set target_spacing_mm in the config or pass --spacing D,H,W"
        )
    return tuple(round(float(v), 4) for v in med)  # type: ignore[return-value]


def params_fingerprint(cfg: PreprocessConfig, spacing_dhw) -> str:
    import numpy
    import SimpleITK

    import distmsfa

    payload = {
        "spacing_dhw": [round(float(v), 6) for v in spacing_dhw],
        "crop_size": list(cfg.crop_size),
        "orientation": cfg.orientation,
        "clip_percentiles": list(cfg.clip_percentiles),
        "normalize_region": cfg.normalize_region,
        "interpolation": cfg.interpolation,
        "preprocess_version": PREPROCESS_VERSION,
        "distmsfa": distmsfa.__version__,
        "SimpleITK": SimpleITK.Version_VersionString(),
        "numpy": numpy.__version__,
    }
    if cfg.roi_mask_mm is not None:  # only when set: datasets built before the option keep their fingerprint
        payload["roi_mask_mm"] = float(cfg.roi_mask_mm)
    blob = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def params_payload(cfg: PreprocessConfig, spacing_dhw) -> dict:
    import SimpleITK

    import distmsfa

    return {
        **cfg.to_dict(), "resolved_spacing_dhw": list(spacing_dhw), "preprocess_version": PREPROCESS_VERSION,
        "distmsfa": distmsfa.__version__, "SimpleITK": SimpleITK.Version_VersionString(), "numpy": np.__version__,
    }
