"""Look at a preprocessed dataset: counts, spacing statistics, and a PNG montage.

The montage shows, per case, the middle slice of the crop (the slice through the ROI
centroid, since the crop is centred on it) for T1 and FS side by side, with the ROI
label contours drawn on both, at the true aspect ratio of the voxel spacing.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from distmsfa.data import index as dsindex


def dataset_summary(root: str) -> dict:
    """Counts per label/site/fold and spacing statistics (D, H, W mm) from the index."""
    df = dsindex.read_index(root)

    def counts(col: str) -> dict:
        return {("<NA>" if pd.isna(k) else str(k)): int(v)
                for k, v in df[col].value_counts(dropna=False).sort_index().items()}

    sp = np.asarray(df["spacing_mm"].tolist(), float) if len(df) else np.zeros((0, 3))
    shapes = sorted({tuple(int(v) for v in s) for s in df["shape"]}) if len(df) else []
    out = {
        "root": str(root), "n_cases": int(len(df)), "n_patients": int(df["patient_id"].nunique()),
        "label": counts("label"), "site": counts("site"), "fold": counts("fold"),
        "external": int(df["is_external"].sum()),
        "fold_by_label": {f"{('<NA>' if pd.isna(f) else int(f))}": {("<NA>" if pd.isna(k) else str(k)): int(v)
                                                                    for k, v in g["label"].value_counts(dropna=False).items()}
                          for f, g in df.groupby("fold", dropna=False)},
        "shapes": [list(s) for s in shapes],
        "spacing_mm": {
            stat: [float(v) for v in fn(sp, axis=0)] for stat, fn in
            (("min", np.min), ("median", np.median), ("max", np.max))
        } if len(sp) else {},
    }
    if "fs_coverage" in df and len(df):
        out["fs_coverage_min"] = float(df["fs_coverage"].min())
    try:
        failed = pd.read_csv(os.path.join(root, dsindex.FAILED_FILE)) if "://" not in str(root) else None
        out["n_failed"] = int(len(failed)) if failed is not None else None
    except (FileNotFoundError, pd.errors.EmptyDataError):
        out["n_failed"] = 0
    return out


def format_summary(s: dict) -> str:
    lines = [f"dataset {s['root']}: {s['n_cases']} cases, {s['n_patients']} patients, "
             f"{s['external']} external, {s.get('n_failed', 0)} failed (failed.csv)"]
    for key in ("label", "site", "fold"):
        lines.append(f"  {key:6s}: " + ", ".join(f"{k}={v}" for k, v in s[key].items()))
    lines.append("  fold x label: " + "; ".join(
        f"fold {f}: " + ",".join(f"{k}={v}" for k, v in sorted(d.items())) for f, d in s["fold_by_label"].items()))
    if s["spacing_mm"]:
        lines.append("  spacing (D,H,W) mm: " + ", ".join(
            f"{k} {tuple(round(v, 3) for v in s['spacing_mm'][k])}" for k in ("min", "median", "max")))
    lines.append(f"  pair shapes: {s['shapes']}")
    if "fs_coverage_min" in s:
        lines.append(f"  lowest FS coverage of a crop: {s['fs_coverage_min']:.2f}")
    return "\n".join(lines)


def _pick(df: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """Up to ``n`` cases, alternating labels so both classes show."""
    rng = np.random.default_rng(seed)
    groups = [g.sample(frac=1, random_state=int(rng.integers(1 << 31))) for _, g in df.groupby("label", dropna=False)]
    picked, i = [], 0
    while len(picked) < min(n, len(df)):
        for g in groups:
            if i < len(g) and len(picked) < n:
                picked.append(g.iloc[i])
        i += 1
    return pd.DataFrame(picked)


def render_montage(root: str, out_png: str, n: int = 6, seed: int = 0) -> str:
    """Write a PNG montage (rows = cases; columns = T1, FS) with ROI contours; return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = dsindex.read_index(root)
    if df.empty:
        raise ValueError(f"{root}: the index holds no cases; nothing to show")
    sel = _pick(df, n, seed)
    fig, axes = plt.subplots(len(sel), 2, figsize=(7.5, 2.9 * len(sel)), squeeze=False)
    colors = ["#ff3b30", "#34c759", "#0a84ff", "#ffcc00"]
    for r, (_, row) in enumerate(sel.iterrows()):
        pair = dsindex.load_pair(root, row).astype(np.float32)
        roi = dsindex.load_array(root, row["roi_path"])
        d = pair.shape[1] // 2
        sp = row["spacing_mm"]
        aspect = float(sp[1]) / float(sp[2])
        lab = "unlabelled" if pd.isna(row["label"]) else ("axSpA" if int(row["label"]) == 1 else "non-axSpA")
        fold = "ext" if row["is_external"] else ("-" if pd.isna(row["fold"]) else int(row["fold"]))
        for c, name in enumerate(("T1", "FS")):
            ax = axes[r, c]
            ax.imshow(pair[c, d], cmap="gray", vmin=0, vmax=1, aspect=aspect, interpolation="nearest")
            for k, lv in enumerate(sorted(int(v) for v in np.unique(roi[d]) if v)):
                ax.contour((roi[d] == lv).astype(float), levels=[0.5], colors=colors[k % len(colors)], linewidths=1.0)
            ax.set_title(f"{row['case_id']} {name} | {lab} | {row['site']} | fold {fold}", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"middle slice (D={d}) of each crop, S at top, patient left at right; ROI outlined", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))  # room for the suptitle
    os.makedirs(os.path.dirname(os.path.abspath(out_png)) or ".", exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def inspect_dataset(root: str, out_png: str | None = None, n: int = 6) -> tuple[dict, str]:
    """Summary dict and the montage path (default ROOT/inspect.png)."""
    summary = dataset_summary(root)
    png = out_png or os.path.join(str(root), "inspect.png")
    return summary, render_montage(root, png, n=n)
