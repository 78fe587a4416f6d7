"""Training and evaluation of the localiser (plain PyTorch + MONAI loss; no Ray).

* ``load_cases`` reads the raw scans and label maps of a manifest onto the coarse grid;
* ``fit`` trains one localiser (Adam, MONAI ``DiceCELoss``: soft Dice + cross-entropy over
  background/left/right, random shifts and intensity gamma/scale);
* ``evaluate`` measures Dice per joint (coarse grid), centroid errors in mm against the
  manual label map at its own resolution, and the centre-of-image baseline;
* ``cross_validate`` runs both over the classification folds (``cv.py``).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import numpy as np
import torch

from distmsfa.localiser.config import JOINTS, LocaliserConfig, LocaliserTrainConfig
from distmsfa.localiser.grid import CoarseCase, label_centroids_mm, prepare_case
from distmsfa.localiser.model import Localiser, build_net, postprocess, with_coords


@dataclasses.dataclass
class LabelledCase:
    """A manifest case on the coarse grid with its manual ROI's centroids (LPS mm)."""

    case_id: str
    patient_id: str
    site: str
    label: int | None
    coarse: CoarseCase
    centroids_mm: dict[str, np.ndarray]  # left, right, roi (from the manual label map, native grid)


def labelled_case(spec, cfg: LocaliserConfig) -> LabelledCase:
    """Read one ``CaseSpec`` with a label-map ROI; raises ImageReadError/ValueError on a bad case."""
    from distmsfa.io.errors import ImageReadError
    from distmsfa.io.readers import read_image, read_label_map

    if not spec.roi:
        raise ImageReadError("no ROI label map (roi column): the localiser learns from label maps only")
    t1 = read_image(spec.t1, spec.t1_series, "t1").image
    fs = read_image(spec.fs, spec.fs_series, "fs").image
    lab = read_label_map(spec.roi).image
    cents = label_centroids_mm(lab)
    missing = [n for n, v in JOINTS.items() if v not in cents]
    if missing:
        raise ImageReadError(f"roi: label map has no {' and no '.join(missing)} joint (labels 1 = left, 2 = right)")
    coarse = prepare_case(t1, fs, cfg, lab)
    c = {n: cents[v] for n, v in JOINTS.items()}
    arr = np.asarray(__import__("SimpleITK").GetArrayViewFromImage(lab))
    idx = np.argwhere(arr > 0).mean(axis=0)  # the union centroid, as preprocess centres its crop
    c["roi"] = np.asarray(lab.TransformContinuousIndexToPhysicalPoint((float(idx[2]), float(idx[1]), float(idx[0]))))
    return LabelledCase(spec.case_id, spec.patient_id, spec.site, spec.label, coarse, c)


def load_cases(specs: Sequence, cfg: LocaliserConfig,
               progress: Callable[[int], None] | None = None) -> tuple[list[LabelledCase], list[tuple[str, str]]]:
    """Coarse cases of every spec that reads; failures as ``(case_id, one-line reason)``."""
    from distmsfa.io.errors import ImageReadError

    cases, failures = [], []
    for i, spec in enumerate(specs):
        try:
            cases.append(labelled_case(spec, cfg))
        except (ImageReadError, ValueError, OSError, RuntimeError) as exc:
            failures.append((spec.case_id, (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:200]))
        if progress:
            progress(i + 1)
    return cases, failures


def _shift(t: torch.Tensor, shifts: Sequence[int]) -> torch.Tensor:
    """Shift the last three axes by whole voxels, filling with zeros (no wrap-around)."""
    out = t
    for axis, s in zip((-3, -2, -1), shifts):
        if s == 0:
            continue
        out = torch.roll(out, int(s), dims=axis)
        idx = [slice(None)] * out.dim()
        idx[axis] = slice(0, s) if s > 0 else slice(s, None)
        out[tuple(idx)] = 0
    return out


def _negative(shape, rng: np.random.Generator) -> torch.Tensor:
    """A study without joints: random noise smoothed at a random scale, each channel in [0, 1]."""
    from scipy import ndimage

    out = []
    for _ in range(shape[0]):
        a = ndimage.gaussian_filter(rng.normal(size=shape[1:]), sigma=float(rng.uniform(0.5, 3.0)))
        a = (a - a.min()) / max(float(a.max() - a.min()), 1e-6)
        out.append(a * rng.uniform(0.3, 1.0))
    return torch.from_numpy(np.stack(out).astype(np.float32))


def fit(cases: Sequence[LabelledCase], cfg: LocaliserConfig, tcfg: LocaliserTrainConfig,
        on_epoch: Callable[[int, float], None] | None = None) -> tuple[Localiser, list[float]]:
    """Train one localiser on ``cases`` (each with labels); returns it and the loss per epoch."""
    from monai.losses import DiceCELoss

    if not cases:
        raise ValueError("no training case with a label-map ROI; the localiser needs manual ROIs to learn from")
    if tcfg.threads:
        torch.set_num_threads(int(tcfg.threads))
    torch.manual_seed(tcfg.seed)
    rng = np.random.default_rng(tcfg.seed)
    net = build_net(cfg)
    opt = torch.optim.Adam(net.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    steps = tcfg.epochs * int(np.ceil(len(cases) / tcfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tcfg.lr, total_steps=steps, pct_start=0.15)
    # Dice over the joints only: the background's Dice is ~1 from the start and dilutes the signal
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    X = torch.from_numpy(np.stack([c.coarse.x for c in cases]))
    Y = torch.from_numpy(np.stack([c.coarse.y for c in cases]).astype(np.int64))[:, None]
    history = []
    net.train()
    for epoch in range(tcfg.epochs):
        order = rng.permutation(len(cases))
        total = 0.0
        for b0 in range(0, len(order), tcfg.batch_size):
            sel = order[b0:b0 + tcfg.batch_size]
            xs, ys = [], []
            for i in sel:
                if rng.random() < tcfg.negative_fraction:
                    xs.append(_negative(X[i].shape, rng))
                    ys.append(torch.zeros_like(Y[i]))
                    continue
                sh = [int(rng.integers(-m, m + 1)) if m else 0 for m in tcfg.shift_vox]
                x = _shift(X[i].clone(), sh)
                g = np.exp(rng.uniform(-np.log(tcfg.gamma), np.log(tcfg.gamma), 2)).astype(np.float32)
                s = rng.uniform(1 - tcfg.intensity_scale, 1 + tcfg.intensity_scale, 2).astype(np.float32)
                x = (x.clamp_min(0) ** torch.from_numpy(g)[:, None, None, None]) * torch.from_numpy(s)[:, None, None, None]
                xs.append(x)
                ys.append(_shift(Y[i].clone(), sh))
            xb, yb = torch.stack(xs), torch.stack(ys)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(with_coords(xb, cfg)), yb)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(sel)
        history.append(total / len(cases))
        if on_epoch:
            on_epoch(epoch + 1, history[-1])
    net.eval()
    meta = {"train": {**tcfg.to_dict(), "n_cases": len(cases), "final_loss": round(history[-1], 4)}}
    return Localiser(cfg, net, meta=meta), history


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    s = int(pred.sum()) + int(truth.sum())
    return 1.0 if s == 0 else 2.0 * int((pred & truth).sum()) / s


def evaluate(localiser: Localiser, cases: Sequence[LabelledCase], batch_size: int = 8) -> list[dict]:
    """One row per case: Dice per joint, centroid errors (mm), baseline error, plausibility."""
    import SimpleITK as sitk

    rows = []
    for b0 in range(0, len(cases), batch_size):
        chunk = cases[b0:b0 + batch_size]
        probs = localiser.probabilities(np.stack([c.coarse.x for c in chunk]))
        for case, prob in zip(chunk, probs):
            img, info = postprocess(prob, case.coarse.ref, case.coarse.image_centre_mm, localiser.cfg, check=False)
            pred = sitk.GetArrayViewFromImage(img)
            row = {"case_id": case.case_id, "site": case.site, "plausible": not info["problems"],
                   "problems": "; ".join(info["problems"])}
            for name, lab in JOINTS.items():
                row[f"dice_{name}"] = round(_dice(pred == lab, case.coarse.y == lab), 4)
            for name in (*JOINTS, "roi"):
                c = info["centroids_mm"].get(name)
                row[f"err_{name}_mm"] = (round(float(np.linalg.norm(np.asarray(c) - case.centroids_mm[name])), 2)
                                         if c is not None else None)
            row["err_centre_baseline_mm"] = round(float(np.linalg.norm(case.coarse.image_centre_mm
                                                                       - case.centroids_mm["roi"])), 2)
            rows.append(row)
    return rows


def summarise(rows: Sequence[dict]) -> dict:
    """Means/medians/maxima over cases (centroid errors over the cases where the joint was found)."""
    out: dict = {"n": len(rows), "n_implausible": int(sum(not r["plausible"] for r in rows))}
    for k in ("dice_left", "dice_right"):
        v = np.asarray([r[k] for r in rows], float)
        out[k] = round(float(v.mean()), 4) if len(v) else None
    for k in ("err_left_mm", "err_right_mm", "err_roi_mm", "err_centre_baseline_mm"):
        v = np.asarray([r[k] for r in rows if r[k] is not None], float)
        out[k] = ({"mean": round(float(v.mean()), 2), "median": round(float(np.median(v)), 2),
                   "max": round(float(v.max()), 2), "n": int(len(v))} if len(v) else None)
    return out


def timed(fn, *a, **kw):
    t0 = time.perf_counter()
    res = fn(*a, **kw)
    return res, time.perf_counter() - t0
