"""The published figures of Tables 3-6, transcribed from the MSFANet paper
(``shared/reference/msfanet-paper.txt``; Zou Q, Wang M, Lu Z, Zhao Y, Feng Q: "3D relation
attention network based on multi-sequence MRI for predicting HLA-B27-negative axial
spondyloarthritis", Tables 3-6), so that a report shows them beside ours.

Values as printed: AUC as a fraction, ACC/SEN/SPEC/F1 in percent, mean ± std over the
paper's 4 folds (Table 4: over the fold models on the external NHH set); ``p`` is the
paper's P column (a paired t-test against MSFANet, on which metric the paper does not say).
Rows are keyed by our registry name (docs/models.md maps them).
"""
from __future__ import annotations

from typing import Any

CITATION = ("Zou Q, Wang M, Lu Z, Zhao Y, Feng Q. 3D relation attention network based on multi-sequence MRI "
            "for predicting HLA-B27-negative axial spondyloarthritis (MSFANet), Tables 3-6 "
            "(transcribed from shared/reference/msfanet-paper.txt)")

#: Display names of registry models, as the paper prints them.
DISPLAY = {
    "embeddingnet": "EmbeddingNet", "centralnet": "CentralNet", "triplenet": "TripleNet",
    "multistream": "Multi-stream", "mtln": "MTLN", "bressem": "Bressem et al.", "shufflenet_dual": "ShuffleNet",
    "efficientnet_dual": "EfficientNet", "msfanet": "MSFANet", "msfanet_bce": "MSFANet (BCE loss)",
    "baseline": "Baseline (BCE loss) = Baseline^TF", "baseline_hybrid": "Baseline (hybrid loss)",
    "baseline_t1": "Baseline^T1 (T1WI)", "baseline_fs": "Baseline^FS (FS-MRI)",
}

#: Which registry models each table compares (MSFANet is the reference of every table).
TABLE_MODELS: dict[str, tuple[str, ...]] = {
    "table3": ("embeddingnet", "centralnet", "triplenet", "multistream", "mtln", "bressem", "shufflenet_dual",
               "efficientnet_dual", "msfanet"),
    "table4": ("embeddingnet", "centralnet", "triplenet", "multistream", "mtln", "bressem", "shufflenet_dual",
               "efficientnet_dual", "msfanet"),
    "table5": ("baseline", "baseline_hybrid", "msfanet_bce", "msfanet"),
    "table6": ("baseline_t1", "baseline_fs", "baseline", "msfanet"),
}

TABLE_TITLES = {
    "table3": "Table 3: comparison models, internal cross-validation",
    "table4": "Table 4: comparison models, external site",
    "table5": "Table 5: loss ablation (Baseline / MSFANet x BCE / hybrid), internal cross-validation",
    "table6": "Table 6: sequence ablation (T1, FS, concatenation, MSFA), internal cross-validation",
}


def _r(auc, acc, sen, spec, f1, p) -> dict[str, Any]:
    return {"auc": auc, "acc": acc, "sen": sen, "spec": spec, "f1": f1, "p": p}


PAPER: dict[str, dict[str, dict[str, Any]]] = {
    "table3": {
        "embeddingnet": _r((0.772, 0.015), (72.08, 0.53), (78.69, 1.82), (67.58, 3.40), (63.60, 2.71), "<0.001"),
        "centralnet": _r((0.799, 0.010), (75.00, 2.53), (83.25, 4.04), (69.26, 2.89), (68.57, 2.25), "0.0053"),
        "triplenet": _r((0.788, 0.054), (76.60, 8.77), (82.37, 4.99), (69.23, 2.17), (65.40, 5.20), "<0.001"),
        "multistream": _r((0.800, 0.054), (76.31, 7.22), (81.48, 4.60), (73.68, 7.66), (68.57, 6.46), "0.0054"),
        "mtln": _r((0.775, 0.032), (75.27, 1.96), (79.55, 2.97), (65.26, 3.20), (64.60, 2.44), "<0.001"),
        "bressem": _r((0.808, 0.049), (74.62, 6.54), (83.58, 3.15), (68.42, 4.05), (68.75, 5.21), "0.0059"),
        "shufflenet_dual": _r((0.790, 0.044), (73.14, 4.87), (83.33, 3.07), (64.71, 2.20), (66.34, 2.36), "<0.001"),
        "efficientnet_dual": _r((0.767, 0.021), (74.93, 2.48), (78.56, 0.90), (66.78, 6.45), (60.71, 1.05), "<0.001"),
        "msfanet": _r((0.840, 0.011), (77.93, 1.59), (83.70, 2.38), (70.29, 0.68), (71.24, 6.48), None),
    },
    "table4": {
        "embeddingnet": _r((0.707, 0.056), (71.43, 2.92), (76.25, 6.60), (67.15, 2.92), (73.30, 2.18), "0.032"),
        "centralnet": _r((0.741, 0.036), (72.98, 4.25), (83.15, 2.35), (72.18, 1.86), (72.68, 7.00), "0.028"),
        "triplenet": _r((0.729, 0.098), (70.40, 2.66), (75.70, 3.22), (65.53, 3.27), (71.75, 3.45), "<0.001"),
        "multistream": _r((0.736, 0.020), (71.40, 3.35), (79.93, 1.04), (65.35, 0.25), (72.03, 0.53), "<0.001"),
        "mtln": _r((0.738, 0.031), (72.38, 2.01), (78.83, 8.62), (69.45, 6.43), (72.93, 4.64), "<0.001"),
        "bressem": _r((0.717, 0.026), (69.38, 3.74), (78.50, 1.06), (63.80, 2.50), (69.88, 2.35), "0.048"),
        "shufflenet_dual": _r((0.727, 0.046), (69.88, 1.96), (74.90, 2.95), (65.08, 2.46), (71.45, 2.34), "<0.001"),
        "efficientnet_dual": _r((0.714, 0.025), (69.38, 6.88), (82.40, 1.87), (63.65, 9.31), (67.18, 1.91), "0.043"),
        "msfanet": _r((0.783, 0.043), (74.47, 4.01), (82.43, 0.92), (70.40, 8.20), (74.65, 3.69), None),
    },
    "table5": {  # no F1 column in the paper's Table 5
        "baseline": _r((0.749, 0.096), (72.87, 4.63), (83.58, 7.25), (62.76, 4.24), None, "<0.001"),
        "baseline_hybrid": _r((0.768, 0.029), (75.00, 1.37), (82.29, 0.78), (69.51, 3.47), None, "<0.001"),
        "msfanet_bce": _r((0.819, 0.018), (76.07, 4.12), (83.27, 2.87), (71.50, 5.10), None, "<0.001"),
        "msfanet": _r((0.840, 0.011), (77.93, 1.59), (83.70, 2.38), (70.29, 0.68), None, None),
    },
    "table6": {  # no F1 column in the paper's Table 6
        "baseline_t1": _r((0.683, 0.044), (67.29, 4.11), (83.05, 5.90), (67.25, 1.64), None, "<0.001"),
        "baseline_fs": _r((0.717, 0.033), (70.21, 5.28), (81.82, 5.82), (65.60, 2.51), None, "<0.001"),
        "baseline": _r((0.749, 0.096), (72.87, 4.63), (83.58, 7.25), (62.76, 4.24), None, "0.0043"),
        "msfanet": _r((0.840, 0.011), (77.93, 1.60), (83.70, 2.38), (70.29, 0.68), None, None),
    },
}


def paper_cell(table: str, model: str, metric: str) -> str:
    """The paper's value as printed (``0.840±0.011``, ``77.93±1.59``), or '' when absent."""
    row = PAPER.get(table, {}).get(model)
    if row is None or row.get(metric) is None:
        return ""
    if metric == "p":
        return str(row["p"])
    m, s = row[metric]
    return f"{m:.3f}±{s:.3f}" if metric == "auc" else f"{m:.2f}±{s:.2f}"
