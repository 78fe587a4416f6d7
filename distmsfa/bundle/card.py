"""``MODEL_CARD.md``: what the bundle is for, what it was trained on, how its numbers were
obtained, and where it must not be trusted.  Written from ``bundle.json`` alone, so the card
never says anything the bundle does not record."""
from __future__ import annotations

from pathlib import Path
from typing import Any

_METRICS = (("auc", "AUC"), ("acc", "ACC"), ("sen", "SEN"), ("spec", "SPEC"), ("f1", "F1"))


def _f(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and v != v) else f"{float(v):.3f}"


def _metrics_table(cvm: dict[str, Any]) -> list[str]:
    mean, std, pooled = cvm.get("mean") or {}, cvm.get("std") or {}, cvm.get("pooled_oof") or {}
    lines = ["| metric | mean ± SD over folds | pooled out-of-fold |", "|---|---|---|"]
    for k, label in _METRICS:
        lines.append(f"| {label} | {_f(mean.get(k))} ± {_f(std.get(k))} | {_f(pooled.get(k))} |")
    return lines


def model_card(meta: dict[str, Any]) -> str:
    model = meta["model"]
    thr = meta["threshold"]
    pre = meta.get("preprocess") or {}
    fp = meta.get("fingerprint") or {}
    ds = fp.get("dataset") or {}
    cvm = meta.get("cv_metrics") or {}
    folds = meta.get("folds", [])
    n = cvm.get("n_cases")
    ext = (fp.get("folds") or {}).get("external_sites") or []
    train = meta.get("train") or {}
    lines = [
        f"# Model card: {model['name']} fold ensemble ({len(folds)} folds)",
        "",
        "**Research use only.** This model is not a medical device, has not been clinically validated, and "
        "must not be used to diagnose or treat patients.",
        "",
        "## Intended use",
        "Research on the classification of HLA-B27-negative axial spondyloarthritis (axSpA, label 1) against "
        "non-axSpA (label 0) from two-sequence sacroiliac-joint MRI (T1-weighted + fat-suppressed/STIR), "
        "with a region of interest around the sacroiliac joints given by a reader. The output is a "
        "probability of axSpA (mean over the fold models) and a label at the threshold below.",
        "",
        "## Model",
        f"- architecture: `{model['name']}` (distmsfa registry), config `{model.get('model_cfg', {})}`",
        f"- ensemble: one model per cross-validation fold {folds}, mean of their probabilities",
        f"- checkpoint: {meta.get('checkpoint')} - {meta.get('selection')}",
        f"- training: epochs {train.get('epochs')}, batch {train.get('batch_size')}, lr {train.get('lr')}, "
        f"weight decay {train.get('weight_decay')}, seed {train.get('seed')}, precision {train.get('precision')}",
        "",
        "## Input and preprocessing",
        f"- two sequences stacked as (T1, FS), crop {pre.get('crop_size')} voxels (D, H, W) at "
        f"{pre.get('spacing_dhw')} mm, orientation {pre.get('orientation')}, centred on the ROI centroid",
        f"- each sequence clipped to its {pre.get('clip_percentiles')} percentiles ({pre.get('normalize_region')}) "
        f"and scaled to [0, 1]; {pre.get('interpolation')} interpolation",
        "- `EnsemblePredictor.prepare` applies exactly this preprocessing and warns where a scan's spacing, size, "
        "field of view or intensity falls outside the training cohort",
        "",
        "## Data",
        f"- out-of-fold cases: {n}; external site(s) held out of training: {ext or 'none'}",
    ]
    for seq in ("t1", "fs"):
        s = ds.get(seq) or {}
        if s.get("n"):
            lines.append(f"- {seq}: {s['n']} scans, median spacing {s.get('median_spacing_dhw')} mm "
                         f"(range {s.get('min_spacing_dhw')} - {s.get('max_spacing_dhw')}), median size "
                         f"{s.get('median_size_dhw')} voxels (D, H, W)")
    lines += [
        f"- dataset preprocessing fingerprint: `{fp.get('fingerprint')}`",
        "",
        "## Cross-validation metrics (how obtained)",
        f"- estimate: {cvm.get('estimate')}",
        f"- {cvm.get('how', '')}",
        f"- threshold {_f(thr['value'])} ({thr['policy']}, chosen on the {thr.get('source')})",
    ]
    if cvm.get("threshold_note"):
        lines.append(f"- note: {cvm['threshold_note']}")
    lines += ["", *_metrics_table(cvm), "",
              "These are internal cross-validation figures on the training cohort. They are not an external "
              "validation; score an independent site (`distmsfa evaluate`) before quoting performance.",
              "",
              "## Limits",
              "- trained on the cohort above only: other scanners, field strengths, protocols, populations or "
              "ROI conventions may degrade it without warning beyond the plausibility checks",
              "- HLA-B27-negative axSpA vs non-axSpA only; not a general sacroiliitis or MRI-positivity detector",
              "- small cross-validation folds give wide uncertainty; see per-fold SD and confidence intervals",
              "- Grad-CAM maps show where the network looked, not where a lesion is",
              "",
              "## Provenance",
              f"- created {meta.get('source', {}).get('created')} from run `{meta.get('source', {}).get('run_dir')}`",
              f"- versions: {meta.get('versions')}",
              "- integrity: `checksums.json` lists the SHA-256 of every file; `distmsfa bundle verify` checks them",
              ""]
    return "\n".join(lines)


def write_model_card(path: str | Path, meta: dict[str, Any]) -> None:
    Path(path).write_text(model_card(meta), encoding="utf-8")
