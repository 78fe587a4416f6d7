"""Figures of the report and of ``distmsfa evaluate`` (matplotlib, Agg backend):

* :func:`roc_figure` - ROC curves with 95 % confidence bands (Figure 4): stratified
  bootstrap of the cases (seeded), TPR percentiles on a fixed FPR grid;
* :func:`calibration_figure` - reliability diagram with the Brier score;
* :func:`gradcam_montage` - Figure 5: T1 and FS slices with each branch's Grad-CAM map for
  chosen TP / FP / FN / TN cases.

Each writes PNG (and SVG where asked) and returns the paths.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

FPR_GRID = np.linspace(0.0, 1.0, 101)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def roc_band(labels: np.ndarray, probs: np.ndarray, n_boot: int = 300, seed: int = 0,
             alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tpr, lo, hi) on FPR_GRID: the curve and its pointwise (1 - alpha) bootstrap band,
    resampling cases within each class (stratified), seeded."""
    from sklearn.metrics import roc_curve

    y = np.asarray(labels, int)
    p = np.asarray(probs, float)

    def curve(yy, pp):
        fpr, tpr, _ = roc_curve(yy, pp)
        return np.interp(FPR_GRID, fpr, tpr)

    base = curve(y, p)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    rng = np.random.default_rng(seed)
    boots = np.empty((n_boot, FPR_GRID.size))
    for b in range(n_boot):
        idx = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        boots[b] = curve(y[idx], p[idx])
    lo, hi = np.percentile(boots, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
    return base, lo, hi


def roc_figure(curves: Sequence[tuple[str, np.ndarray, np.ndarray]], title: str, out_stem: str | Path,
               n_boot: int = 300, seed: int = 0) -> list[Path]:
    """ROC curves (one per (name, labels, probs)) with 95 % bootstrap bands; PNG + SVG."""
    from sklearn.metrics import roc_auc_score

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, y, p) in enumerate(curves):
        tpr, lo, hi = roc_band(y, p, n_boot=n_boot, seed=seed)
        c = colors[i % len(colors)]
        ax.plot(FPR_GRID, tpr, color=c, lw=1.6, label=f"{name} (AUC {roc_auc_score(y, p):.3f})")
        ax.fill_between(FPR_GRID, lo, hi, color=c, alpha=0.15, lw=0)
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    ax.set_xlabel("1 - specificity (FPR)")
    ax.set_ylabel("sensitivity (TPR)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.text(0.99, 0.01 + 0.05 * len(curves), "bands: 95% stratified bootstrap", fontsize=6, ha="right",
            transform=ax.transAxes, color="grey")
    fig.tight_layout()
    return _save(fig, out_stem, svg=True)


def calibration_figure(labels: np.ndarray, probs: np.ndarray, out_stem: str | Path, n_bins: int = 10,
                       title: str = "calibration") -> list[Path]:
    """Reliability diagram (equal-width bins; dot size ~ cases in the bin) and the Brier score."""
    plt = _plt()
    y = np.asarray(labels, float)
    p = np.asarray(probs, float)
    brier = float(np.mean((p - y) ** 2))
    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, n_bins - 1)
    fig, (ax, axh) = plt.subplots(2, 1, figsize=(4.6, 5.6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    mean_p, frac, n = [], [], []
    for b in range(n_bins):
        m = which == b
        if m.any():
            mean_p.append(p[m].mean())
            frac.append(y[m].mean())
            n.append(int(m.sum()))
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="perfect calibration")
    ax.plot(mean_p, frac, "-o", color="C0", lw=1.4, label="model")
    ax.scatter(mean_p, frac, s=[8 + 4 * k for k in n], color="C0", alpha=0.5)
    ax.set_ylabel("observed fraction axSpA")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{title} (Brier {brier:.3f})", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    axh.hist(p, bins=edges, color="C0", alpha=0.6)
    axh.set_xlabel("predicted probability of axSpA")
    axh.set_ylabel("cases")
    fig.tight_layout()
    return _save(fig, out_stem, svg=True)


def gradcam_montage(rows: Sequence[dict], out_stem: str | Path, title: str = "Grad-CAM") -> list[Path]:
    """Figure 5. Each row: ``{"title": str, "x": (2, D, H, W) pair, "maps": {branch: (D, H, W)}}``,
    optionally ``"evidence"`` (``joint_evidence``: each map's panel is labelled with its left /
    right joint shares); shown at the slice where the maps' summed energy peaks: T1, FS, then
    each map over the sequence it explains (T1 map over T1, FS map over FS, other maps over FS)."""
    plt = _plt()
    branches = sorted({b for r in rows for b in r["maps"]}, key=lambda b: {"t1": 0, "fs": 1, "fuse": 2}.get(b, 3))
    ncol = 2 + len(branches)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(2.1 * ncol, 2.0 * len(rows) + 0.4), squeeze=False)
    for i, r in enumerate(rows):
        x = np.asarray(r["x"], np.float32)
        energy = sum(np.asarray(m, np.float32).sum(axis=(1, 2)) for m in r["maps"].values())
        z = int(np.argmax(energy)) if np.ndim(energy) else x.shape[1] // 2
        panels = [("T1", x[0, z], None), ("FS", x[1, z], None)]
        for b in branches:
            under = x[0, z] if b == "t1" else x[1, z]
            panels.append((f"{b} map", under, r["maps"].get(b)))
        for j, (name, img, cam) in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(img, cmap="gray", vmin=0, vmax=1, aspect="auto")
            if cam is not None:
                ax.imshow(np.asarray(cam)[z], cmap="jet", alpha=0.45, vmin=0, vmax=1, aspect="auto")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=8)
            ev = (r.get("evidence") or {}).get(name[:-4]) if name.endswith(" map") else None
            if ev:
                ax.set_xlabel(f"L {ev['left']:.0%}  R {ev['right']:.0%}", fontsize=7)
        axes[i, 0].set_ylabel(f"{r['title']}\nslice {z}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, out_stem, svg=False)


def bar_figure(values: dict[str, dict[str, float]], out_stem: str | Path, title: str, ylabel: str) -> list[Path]:
    """Grouped bars: ``{group: {series: value}}`` (e.g. localisation per branch vs baselines)."""
    plt = _plt()
    groups = list(values)
    series = list(dict.fromkeys(s for g in groups for s in values[g]))
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(groups) * max(1, len(series)) / 2, 3.4))
    w = 0.8 / max(1, len(series))
    for k, s in enumerate(series):
        ax.bar(np.arange(len(groups)) + k * w, [values[g].get(s, np.nan) for g in groups], w, label=s)
    ax.set_xticks(np.arange(len(groups)) + 0.4 - w / 2, groups, fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out_stem, svg=False)


def _save(fig, out_stem: str | Path, svg: bool) -> list[Path]:
    plt = _plt()
    stem = Path(out_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png")]
    fig.savefig(paths[0], dpi=120)
    if svg:
        paths.append(stem.with_suffix(".svg"))
        fig.savefig(paths[1])
    plt.close(fig)
    return paths


def png_is_not_blank(path: str | Path, min_std: float = 0.01) -> bool:
    """True when the PNG decodes and its pixels vary (a figure, not an empty canvas)."""
    import matplotlib.image as mpimg

    img = mpimg.imread(str(path))
    return bool(img.ndim >= 2 and float(np.asarray(img, float).std()) > min_std)
