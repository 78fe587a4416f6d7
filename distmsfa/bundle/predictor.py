"""The fold ensemble a bundle loads into: :func:`load_bundle` -> :class:`EnsemblePredictor`.

Plain Python (no Ray): evaluation calls it directly and Serve wraps it.  Loading never
unpickles: the manifest is verified, each weight file's bytes are hashed and then parsed by
``safetensors`` from the same bytes (no window between check and use), everything else is
JSON.

Tensor contract of :meth:`EnsemblePredictor.predict`: ``x`` float ``(B, 2, D, H, W)``,
channels (T1, FS), values in [0, 1], ``(D, H, W) == crop_size`` (what :meth:`prepare`
returns, or the dataset's ``pairs/<case>.npy``).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch

from distmsfa.bundle.layout import CHECKSUMS_FILE, BundleError, bundle_checksum, verify_bundle, weight_file

#: Relative slack before a spacing outside the training cohort's range is worth a warning.
SPACING_SLACK = 0.10
#: A size this many times above/below the cohort's median size is worth a warning.
SIZE_FACTOR = 2.0
#: Crops covered less than this by an image's field of view are worth a warning (or less than
#: the least-covered training case, when the bundle records it), minus COVERAGE_SLACK.
MIN_COVERAGE = 0.95
COVERAGE_SLACK = 0.05
#: A case's mean intensity this many cohort SDs from the cohort mean is worth a warning.
INTENSITY_SDS = 4.0


def build_fold_model(name: str, model_cfg: dict[str, Any], state: dict[str, torch.Tensor], rt) -> torch.nn.Module:
    """A registry model with ``state`` loaded (strict), in eval mode, on ``rt``'s device and layout."""
    from distmsfa.models import registry
    from distmsfa.models.device import prepare_for_device

    model = registry.create_model(name, **model_cfg)
    model.load_state_dict(state, strict=True)
    model.eval()
    fmt = torch.channels_last_3d if rt.channels_last else torch.contiguous_format
    return prepare_for_device(model, rt.device, memory_format=fmt)


@torch.inference_mode()
def run_models(models: Sequence[torch.nn.Module], x: torch.Tensor, rt) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(B, F)`` predict_proba and ``{head: (B, F)}`` sigmoid of each head for one batch."""
    from distmsfa.training.loop import _forward

    x = x.to(rt.device, non_blocking=True).float()
    probs, heads = [], {}
    for m in models:
        out = _forward(m, x, rt)
        probs.append(m.predict_proba(out).float().cpu().numpy())
        for h, v in out.items():
            heads.setdefault(h, []).append(torch.sigmoid(v.float()).cpu().numpy())
    return np.stack(probs, 1), {h: np.stack(v, 1) for h, v in heads.items()}


def _warn_spacing(seq: str, img, stats: dict[str, Any], orientation: str) -> list[str]:
    from distmsfa.data.fingerprint import _canonical_size_dhw
    from distmsfa.data.preprocess import canonical_spacing_dhw

    out: list[str] = []
    sp = canonical_spacing_dhw(img.GetSpacing(), img.GetDirection(), orientation)
    size = _canonical_size_dhw(img.GetSize(), img.GetDirection(), orientation)
    lo, hi, med = stats.get("min_spacing_dhw"), stats.get("max_spacing_dhw"), stats.get("median_size_dhw")
    for i, ax in enumerate("DHW"):
        if lo and hi:
            if sp[i] > hi[i] * (1 + SPACING_SLACK):
                out.append(f"{seq} spacing {ax} = {sp[i]:.3g} mm is {sp[i] / hi[i]:.2f}x the training cohort's "
                           f"largest ({hi[i]:.3g} mm; range {lo[i]:.3g}-{hi[i]:.3g} mm)")
            elif sp[i] < lo[i] / (1 + SPACING_SLACK):
                out.append(f"{seq} spacing {ax} = {sp[i]:.3g} mm is {lo[i] / sp[i]:.2f}x finer than the training "
                           f"cohort's finest ({lo[i]:.3g} mm; range {lo[i]:.3g}-{hi[i]:.3g} mm)")
        if med and med[i] > 0:
            r = size[i] / med[i]
            if r > SIZE_FACTOR or r < 1 / SIZE_FACTOR:
                out.append(f"{seq} size {ax} = {size[i]} voxels is {r:.2f}x the training cohort's median ({med[i]})")
    return out


class EnsemblePredictor:
    """The bundle's fold models as one predictor (mean probability over folds).

    Attributes: ``meta`` (bundle.json), ``model_name``, ``folds``, ``threshold``,
    ``threshold_policy``, ``checksum`` (sha256 of checksums.json), ``preprocess_config``,
    ``spacing_dhw``, ``crop_size``, ``fingerprint``, ``device``, ``path``."""

    def __init__(self, path: Path, meta: dict[str, Any], models: list[torch.nn.Module], rt, checksum: str) -> None:
        from distmsfa.data.preprocess import PreprocessConfig

        self.path = Path(path)
        self.meta = meta
        self.models = models
        self._rt = rt
        self.device = rt.device
        self.checksum = checksum
        self.model_name: str = meta["model"]["name"]
        self.folds: list[int] = [int(f) for f in meta["folds"]]
        self.threshold: float = float(meta["threshold"]["value"])
        self.threshold_policy: str = str(meta["threshold"]["policy"])
        pre = dict(meta["preprocess"])
        self.spacing_dhw: tuple[float, float, float] = tuple(float(v) for v in pre.pop("spacing_dhw"))  # type: ignore[assignment]
        self.preprocess_config = PreprocessConfig.from_dict(pre)
        self.crop_size: tuple[int, int, int] = tuple(self.preprocess_config.crop_size)  # type: ignore[assignment]
        self.fingerprint: dict[str, Any] = meta.get("fingerprint") or {}
        self.intensity: dict[str, Any] = meta.get("intensity") or {}

    def __repr__(self) -> str:
        return (f"EnsemblePredictor({self.model_name}, folds={self.folds}, threshold={self.threshold:.4f} "
                f"({self.threshold_policy}), device={self.device}, checksum={self.checksum[:12]})")

    # ------------------------------------------------------------------ predict
    def _as_batch(self, x: Any) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x)
        if t.dim() == 4:
            raise ValueError(f"x must be a batch (B, 2, D, H, W); got one case {tuple(t.shape)}: add a batch axis (x[None])")
        if t.dim() != 5 or t.shape[1] != 2:
            raise ValueError(f"x must be (B, 2, D, H, W) with channels (T1, FS), got {tuple(t.shape)}")
        if tuple(t.shape[2:]) != self.crop_size:
            raise ValueError(f"x has spatial shape {tuple(t.shape[2:])} but the bundle's models were trained on "
                             f"crops of {self.crop_size} (D, H, W); prepare the case with predictor.prepare()")
        t = t.float()
        if not torch.isfinite(t).all():
            raise ValueError("x contains NaN or Inf")
        lo, hi = float(t.min()), float(t.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"x values span [{lo:.3g}, {hi:.3g}] but must lie in [0, 1] (the preprocessing scales "
                             f"each sequence to [0, 1]); prepare the case with predictor.prepare()")
        return t

    def predict(self, x: Any, batch_size: int = 8) -> dict[str, Any]:
        """Fold-ensemble prediction: ``prob`` (B,) = mean over folds of each fold's
        ``predict_proba``; ``fold_probs`` (B, F); ``head_probs`` {head: (B, F)}; ``label`` (B,)
        = ``prob >= threshold``.  eval mode; bf16 + channels_last_3d on CUDA, fp32 on CPU."""
        t = self._as_batch(x)
        fold_probs, heads = [], {}
        for i in range(0, t.shape[0], max(1, int(batch_size))):
            p, h = run_models(self.models, t[i:i + batch_size], self._rt)
            fold_probs.append(p)
            for k, v in h.items():
                heads.setdefault(k, []).append(v)
        fp = np.concatenate(fold_probs, 0) if fold_probs else np.zeros((0, len(self.models)), np.float32)
        prob = fp.mean(1)
        return {"prob": prob, "fold_probs": fp, "head_probs": {k: np.concatenate(v, 0) for k, v in heads.items()},
                "label": (prob >= self.threshold).astype(np.int64)}

    # ------------------------------------------------------------------ prepare
    def check_images(self, t1, fs) -> list[str]:
        """Plausibility of raw images against the training cohort's fingerprint (spacing, size)."""
        ds = self.fingerprint.get("dataset") or {}
        orientation = self.preprocess_config.orientation
        out: list[str] = []
        for seq, img in (("t1", t1), ("fs", fs)):
            stats = ds.get(seq) or {}
            if stats.get("n"):
                out.extend(_warn_spacing(seq, img, stats, orientation))
        return out

    def prepare(self, t1, fs, roi) -> tuple[Any, list[str]]:
        """SimpleITK T1 and FS images + a :class:`~distmsfa.data.preprocess.Roi` -> the training
        preprocessing (``preprocess_images`` with the bundle's config and target spacing) and a
        list of plausibility warnings (spacing, size, field-of-view coverage, intensity)."""
        from distmsfa.data.preprocess import preprocess_images

        warnings = self.check_images(t1, fs)
        res = preprocess_images(t1, fs, roi, self.preprocess_config, self.spacing_dhw)
        for seq, cov in (("t1", res.t1_coverage), ("fs", res.fs_coverage)):
            lowest = (self.intensity.get(seq) or {}).get("coverage_min")
            floor = MIN_COVERAGE if lowest is None else min(MIN_COVERAGE, float(lowest))
            if cov < floor - COVERAGE_SLACK:
                seen = f"training cases: >= {lowest:.0%}" if lowest is not None else f"expected >= {MIN_COVERAGE:.0%}"
                warnings.append(f"{seq} covers {cov:.0%} of the crop around the ROI ({seen}); the rest is zero "
                                f"padding (field of view smaller than the {self.crop_size} crop at {self.spacing_dhw} mm)")
        for i, seq in enumerate(("t1", "fs")):
            st = self.intensity.get(seq) or {}
            if st.get("sd") and st.get("n", 0) >= 5:
                m = float(res.pair[i].astype(np.float32).mean())
                z = (m - st["mean"]) / st["sd"]
                if abs(z) > INTENSITY_SDS:
                    warnings.append(f"{seq} mean intensity {m:.3f} of the prepared crop is {abs(z):.1f} SD "
                                    f"{'above' if z > 0 else 'below'} the training cases' ({st['mean']:.3f} ± {st['sd']:.3f})")
        return res, warnings

    def dataset_differences(self, data: str | os.PathLike[str]) -> list[str]:
        """How the dataset at ``data`` was prepared differently from the bundle's training data
        (one line per preprocessing parameter that differs; empty = the same preprocessing).
        A dataset without ``fingerprint.json`` gives one line saying so."""
        from distmsfa.data import index as dsindex

        try:
            params = (json.loads(dsindex.read_bytes(str(data), dsindex.FINGERPRINT_FILE)).get("params") or {})
        except (FileNotFoundError, OSError, ValueError):
            return [f"{data}: no readable {dsindex.FINGERPRINT_FILE}; its preprocessing is unknown"]
        mine = {**self.preprocess_config.to_dict(), "resolved_spacing_dhw": list(self.spacing_dhw)}
        theirs_pv = params.get("preprocess_version")
        mine_pv = ((self.fingerprint.get("params") or {}).get("preprocess_version"))
        out = []
        for key in ("resolved_spacing_dhw", "crop_size", "orientation", "clip_percentiles", "normalize_region",
                    "interpolation", "roi_mask_mm"):  # a key missing on either side (older dataset) reads as None
            a, b = mine.get(key), params.get(key)
            if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
                same = len(a) == len(b) and all(abs(float(x) - float(y)) <= 1e-6 for x, y in zip(a, b))
            else:
                same = a == b
            if not same:
                out.append(f"{key}: dataset {b} vs bundle {a}")
        if theirs_pv != mine_pv:
            out.append(f"preprocess_version: dataset {theirs_pv} vs bundle {mine_pv}")
        return out

    # ------------------------------------------------------------------ Grad-CAM
    def gradcam(self, x: Any, branches: Optional[Iterable[str]] = None) -> dict[str, np.ndarray]:
        """Per-branch Grad-CAM maps ``{branch: (B, D, H, W)}`` averaged over the fold models
        (each fold's map is in [0, 1]; the mean is too).  fp32, eval mode."""
        from distmsfa.models.gradcam import gradcam

        t = self._as_batch(x).to(self.device)
        names = list(branches) if branches is not None else None
        acc: dict[str, np.ndarray] = {}
        for m in self.models:
            maps = gradcam(m, t, names)
            for k, v in maps.items():
                acc[k] = acc.get(k, 0) + v
        return {k: (v / len(self.models)).astype(np.float32) for k, v in acc.items()}


def load_bundle(path: str | os.PathLike[str], device: str | torch.device | None = None) -> EnsemblePredictor:
    """Verify the bundle at ``path`` and load its fold models (never unpickles).

    ``device``: None = CUDA when available, else CPU."""
    from safetensors.torch import load as st_load

    from distmsfa.training.loop import resolve_runtime

    root = Path(path)
    meta = verify_bundle(root)
    sums = json.loads((root / CHECKSUMS_FILE).read_text(encoding="utf-8"))
    rt = resolve_runtime("auto", device)
    name = meta["model"]["name"]
    model_cfg = dict(meta["model"].get("model_cfg") or {})
    models = []
    for f in meta["folds"]:
        rel = weight_file(f)
        data = (root / rel).read_bytes()
        if hashlib.sha256(data).hexdigest() != sums[rel]:  # changed since verify_bundle read it
            raise BundleError(f"{rel}: altered (sha256 differs from {CHECKSUMS_FILE}) in bundle {root}")
        try:
            state = st_load(data)
        except Exception as exc:  # noqa: BLE001 - safetensors' own error types vary by version
            raise BundleError(f"{rel}: not a readable safetensors file ({str(exc).splitlines()[0]})") from None
        try:
            models.append(build_fold_model(name, model_cfg, state, rt))
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{rel}: weights do not fit model {name!r} with {model_cfg} "
                              f"({str(exc).splitlines()[0]})") from None
    return EnsemblePredictor(root, meta, models, rt, bundle_checksum(root))


__all__ = ["EnsemblePredictor", "load_bundle", "build_fold_model", "run_models"]
