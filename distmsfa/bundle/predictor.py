"""The fold ensemble a bundle loads into: :func:`load_bundle` -> :class:`EnsemblePredictor`.

Plain Python (no Ray): evaluation calls it directly and Serve wraps it.  Loading never
unpickles: the manifest is verified, each weight file's bytes are hashed and then parsed by
``safetensors`` from the same bytes (no window between check and use), everything else is
JSON.

Tensor contract of :meth:`EnsemblePredictor.predict`: ``x`` float ``(B, 2, D, H, W)``,
channels (T1, FS), values in [0, 1], ``(D, H, W) == crop_size`` (what :meth:`prepare`
returns, or the dataset's ``pairs/<case>.npy``).

The inference path (docs/bundle.md, "The inference path"): batches of ``batch_size`` cases,
each fold model in turn (a loop over folds: stacking them with ``torch.func`` + ``vmap`` was
slower on CPU, see the doc), bf16 autocast + channels_last_3d on CUDA and fp32 on CPU, and
``torch.compile`` (on CUDA by default) with static shapes: a short batch is padded to the
compiled size and the padding stripped, so serving's variable batches never recompile.
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


#: ``load_bundle``'s words, the same as TrainConfig's ``compile`` (auto = on CUDA only).
PRECISIONS = ("auto", "bf16", "fp32")
COMPILE_MODES = ("auto", "on", "off")


def _fold_outputs(model: torch.nn.Module, x: torch.Tensor, amp_dtype: Optional[torch.dtype],
                  channels_last: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One fold model on one batch: ``predict_proba`` (B,) and the sigmoid of each head, fp32.

    The same arithmetic as the training loop's ``_forward`` (layout, autocast, fp32 logits),
    written as one function so ``torch.compile`` traces layout + autocast + sigmoid together."""
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    if amp_dtype is None:
        out = model(x)
    else:
        with torch.autocast(x.device.type, dtype=amp_dtype):
            out = model(x)
    out = {k: v.float() for k, v in out.items()}
    return model.predict_proba(out), {h: torch.sigmoid(v) for h, v in out.items()}


def make_fold_fn(compile: bool, mode: str = "on"):  # noqa: A002 - the option's name
    """The per-fold function, compiled (static shapes: ``dynamic=False``) or eager.

    One compiled function serves every fold: the fold models are instances of one class and
    their parameters are graph inputs, so folds 2..F reuse fold 1's graph (no recompile).
    A compiled call that fails where the eager one runs (a compiler bug): ``mode`` auto = the
    eager function from then on, with one warning line; ``on`` = a one-line ``CompileError``
    (``training.speed.CompiledModel``, the training loop's helper; ``fold_fn.guard.fallback``
    holds the reason)."""
    if not compile:
        return _fold_outputs
    from distmsfa.training.speed import CompiledModel

    guard = CompiledModel(None, mode, compiled=torch.compile(_fold_outputs, dynamic=False),
                          hint="load the bundle with compile='off' (distmsfa evaluate --compile off)")

    def fold_fn(model, x, amp_dtype, channels_last):
        return guard.step("inference", lambda f: f(model, x, amp_dtype, channels_last), _fold_outputs)

    fold_fn.guard = guard  # type: ignore[attr-defined]
    return fold_fn


@torch.inference_mode()
def run_models(models: Sequence[torch.nn.Module], x: torch.Tensor, rt, *, fold_fn=None,
               pad_to: Optional[int] = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(B, F)`` predict_proba and ``{head: (B, F)}`` sigmoid of each head for one batch,
    float32 numpy.

    ``pad_to``: zero cases are appended up to this batch size (a compiled function sees one
    shape) and their outputs dropped; each case's result does not depend on the others (eval
    mode: BatchNorm uses its running statistics).  The fold outputs stay on the device until
    one transfer per batch."""
    n = int(x.shape[0])
    x = x.to(rt.device, non_blocking=True)
    if pad_to is not None:
        # Always a fresh buffer made here, padded or not: every batch a compiled function sees
        # is then the same kind of tensor (an inference tensor; a caller's tensor would carry
        # other dispatch keys and recompile).
        buf = torch.zeros((max(n, pad_to), *x.shape[1:]), dtype=torch.float32, device=rt.device)
        buf[:n].copy_(x)
        x = buf
    else:
        x = x.float()
    fn = fold_fn or _fold_outputs
    probs, heads = [], {}
    for m in models:
        p, h = fn(m, x, rt.amp_dtype, rt.channels_last)
        probs.append(p)
        for k, v in h.items():
            heads.setdefault(k, []).append(v)
    p = torch.stack(probs, 1)[:n].float().cpu().numpy()
    return p, {k: torch.stack(v, 1)[:n].float().cpu().numpy() for k, v in heads.items()}


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
    ``spacing_dhw``, ``crop_size``, ``fingerprint``, ``device``, ``path``; the inference path:
    ``precision`` ("bf16"|"fp32"), ``compiled``, ``batch_size``, ``pad``, ``compile_s``."""

    def __init__(self, path: Path, meta: dict[str, Any], models: list[torch.nn.Module], rt, checksum: str, *,
                 compiled: bool = False, batch_size: int = 8, pad: Optional[bool] = None,
                 compile_mode: str = "on") -> None:
        from distmsfa.data.preprocess import PreprocessConfig

        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        #: Cases per model call; under compile the one compiled shape (serving's max batch).
        self.batch_size = int(batch_size)
        self.compiled = bool(compiled)
        #: Pad a short batch to ``batch_size`` (default: only when compiled).
        self.pad = self.compiled if pad is None else bool(pad)
        self.precision = "fp32" if rt.amp_dtype is None else "bf16"
        self._fold_fn = make_fold_fn(self.compiled, compile_mode)  # compile_mode auto: eager if compile fails
        self.compile_s: Optional[float] = None  # seconds of the first (compiling) call, see warmup()

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
                f"({self.threshold_policy}), device={self.device}, {self.precision}"
                f"{', compiled' if self.compiled else ''}, batch {self.batch_size}, checksum={self.checksum[:12]})")

    @property
    def compile_fallback(self) -> Optional[str]:
        """Why ``compile='auto'`` went eager (a compiler failure, logged once); None if it did not."""
        guard = getattr(self._fold_fn, "guard", None)
        return None if guard is None else guard.fallback

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

    def predict(self, x: Any, batch_size: Optional[int] = None) -> dict[str, Any]:
        """Fold-ensemble prediction: ``prob`` (B,) = mean over folds of each fold's
        ``predict_proba``; ``fold_probs`` (B, F); ``head_probs`` {head: (B, F)}; ``label`` (B,)
        = ``prob >= threshold``; all float32 numpy (label int64).

        ``x`` is cut into chunks of ``batch_size`` (default: the predictor's); when compiled
        the chunks are always the compiled size and a short one is padded (``pad``), so any B
        runs on the one compiled shape.  eval mode; the predictor's precision and layout."""
        t = self._as_batch(x)
        bs = self.batch_size if (self.compiled or batch_size is None) else max(1, int(batch_size))
        pad_to = bs if self.pad else None
        fold_probs, heads = [], {}
        for i in range(0, t.shape[0], bs):
            p, h = run_models(self.models, t[i:i + bs], self._rt, fold_fn=self._fold_fn, pad_to=pad_to)
            fold_probs.append(p)
            for k, v in h.items():
                heads.setdefault(k, []).append(v)
        fp = np.concatenate(fold_probs, 0) if fold_probs else np.zeros((0, len(self.models)), np.float32)
        prob = fp.mean(1, dtype=np.float32)
        return {"prob": prob, "fold_probs": fp, "head_probs": {k: np.concatenate(v, 0) for k, v in heads.items()},
                "label": (prob >= self.threshold).astype(np.int64)}

    def warmup(self) -> float:
        """Run one batch of zeros (compiling the fold function when compiled); return its
        seconds, kept in ``compile_s`` when compiled.  Serving calls it at start so the first
        request does not wait for the compiler."""
        import time

        t0 = time.perf_counter()
        if self.models:
            self.predict(np.zeros((self.batch_size, 2, *self.crop_size), np.float32))
        s = time.perf_counter() - t0
        if self.compiled and self.compile_s is None:
            self.compile_s = s
        return s

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


def resolve_inference(device: str | torch.device | None, precision: str = "auto", compile: str = "auto"):  # noqa: A002
    """``(Runtime, compiled)`` for ``load_bundle``'s words.

    ``precision``: auto = bf16 autocast on CUDA, fp32 on CPU; ``bf16`` | ``fp32`` force it.
    ``compile``: auto = on CUDA only; ``on`` | ``off``.  channels_last_3d on CUDA."""
    from distmsfa.training.loop import resolve_runtime

    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if compile not in COMPILE_MODES:
        raise ValueError(f"compile {compile!r}: use one of {', '.join(COMPILE_MODES)}")
    rt = resolve_runtime(precision, device)
    return rt, (rt.device.type == "cuda" if compile == "auto" else compile == "on")


def load_bundle(path: str | os.PathLike[str], device: str | torch.device | None = None, precision: str = "auto",
                compile: str = "auto", batch_size: int = 8) -> EnsemblePredictor:  # noqa: A002
    """Verify the bundle at ``path`` and load its fold models (never unpickles).

    ``device``: None = CUDA when available, else CPU.  ``precision``: auto|bf16|fp32 (auto =
    bf16 autocast on CUDA, fp32 on CPU).  ``compile``: auto|on|off (auto = on CUDA only;
    compiled with static shapes at ``batch_size``, short batches padded).  ``batch_size``:
    cases per model call (serving: its ``@serve.batch`` max size).  The compiler runs on the
    first batch (or :meth:`EnsemblePredictor.warmup`)."""
    from safetensors.torch import load as st_load

    root = Path(path)
    rt, compiled = resolve_inference(device, precision, compile)
    meta = verify_bundle(root)
    sums = json.loads((root / CHECKSUMS_FILE).read_text(encoding="utf-8"))
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
    return EnsemblePredictor(root, meta, models, rt, bundle_checksum(root), compiled=compiled, batch_size=batch_size,
                             compile_mode="auto" if compile == "auto" else "on")


__all__ = ["COMPILE_MODES", "PRECISIONS", "EnsemblePredictor", "build_fold_model", "load_bundle", "make_fold_fn",
           "resolve_inference", "run_models"]
