"""CV summary (mean ± std over folds), learning-curve PNG, and the live per-fold table."""
from __future__ import annotations

import math
import time
from typing import Any, Iterable

import pandas as pd

from distmsfa.evaluation.metrics import METRIC_NAMES, binary_metrics, choose_threshold, mean_std


def summarize(oof: pd.DataFrame, best_epochs: dict[int, int], policy: str, fixed: float) -> dict[str, Any]:
    """Per-fold metrics of the best checkpoints at the policy's threshold, mean ± std over folds,
    and the pooled out-of-fold metrics."""
    thr = choose_threshold(policy, oof["label"], oof["prob"], fixed)
    per_fold: dict[str, dict[str, float]] = {}
    for fold, df in oof.groupby("fold", sort=True):
        m = binary_metrics(df["label"], df["prob"], thr)
        per_fold[str(int(fold))] = {**m, "n": int(len(df)), "best_epoch": int(best_epochs.get(int(fold), -1))}
    stats = {k: mean_std([per_fold[f][k] for f in per_fold]) for k in METRIC_NAMES}
    return {
        "threshold_policy": policy,
        "threshold": thr,
        "folds": per_fold,
        "mean": {k: v[0] for k, v in stats.items()},
        "std": {k: v[1] for k, v in stats.items()},
        "pooled_oof": binary_metrics(oof["label"], oof["prob"], thr) if len(oof) else {},
        "n_cases": int(len(oof)),
    }


#: What each CV estimate is; every table and summary.json carries these labels.
ESTIMATE_LABELS: dict[str, str] = {
    "best_val": "(a) best validation epoch - OPTIMISTIC (the epoch was chosen on these same labels)",
    "last": "(b) last epoch",
    "inner": "(c) inner-split selection - honest (the fold's validation cases did not influence the choice)",
}
ESTIMATE_SHORT: dict[str, str] = {"best_val": "(a) best val epoch: OPTIMISTIC", "last": "(b) last epoch",
                                  "inner": "(c) inner-selected: honest"}
ESTIMATE_ORDER = ("best_val", "last", "inner")
SELECTED_ESTIMATE = {"val": "best_val", "inner": "inner", "last": "last"}


def summarize_run(done: dict[int, dict[str, Any]], policy: str, fixed: float, selection: str) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame | None]:
    """The CV summary of finished folds (``outputs.read_fold`` dicts): the selected estimate at
    the top level (``folds``, ``mean``, ``std``, ``pooled_oof``: what a user quotes, labelled),
    every estimate under ``estimates``, and the external site under ``external``.

    Returns (summary, out-of-fold predictions of the selected estimate, external
    predictions: one column per fold model plus the fold-ensemble mean, or None)."""
    oof = pd.concat([d["predictions"] for d in done.values()], ignore_index=True).sort_values(["fold", "case_id"])
    key = SELECTED_ESTIMATE[selection]
    summary = summarize(oof, {f: d["best_epoch"] for f, d in done.items()}, policy, fixed)
    summary.update(selection=selection, estimate=key, estimate_label=ESTIMATE_LABELS[key], estimates={})
    for k in ESTIMATE_ORDER:
        parts = [d.get("estimate_predictions", {}).get(k) for d in done.values()]
        if any(p is None for p in parts):
            continue
        est_oof = pd.concat(parts, ignore_index=True).sort_values(["fold", "case_id"])
        epochs = {f: d["estimates"][k]["epoch"] for f, d in done.items()}
        s = summarize(est_oof, epochs, policy, fixed)
        summary["estimates"][k] = {"label": ESTIMATE_LABELS[k], **s}
    ext = external_frame(done)
    if ext is not None:
        summary["external"] = summarize_external(ext, summary["threshold"])
    return summary, oof, ext


def external_frame(done: dict[int, dict[str, Any]]) -> pd.DataFrame | None:
    """Wide external predictions: case_id, label, prob_fold<k> per fold model, prob = their mean."""
    frames = {f: d.get("external") for f, d in done.items()}
    frames = {f: x for f, x in frames.items() if x is not None and len(x)}
    if not frames:
        return None
    base = None
    for f, x in sorted(frames.items()):
        col = x[["case_id", "label", "prob"]].rename(columns={"prob": f"prob_fold{f}"})
        base = col if base is None else base.merge(col, on=["case_id", "label"], how="outer")
    cols = [c for c in base.columns if c.startswith("prob_fold")]
    base["prob"] = base[cols].mean(axis=1)
    return base.sort_values("case_id").reset_index(drop=True)


def summarize_external(ext: pd.DataFrame, threshold: float) -> dict[str, Any]:
    """Each fold model and the fold ensemble (mean probability) on the external site, at the
    CV run's threshold (chosen without the external labels)."""
    folds = {c[len("prob_fold"):]: binary_metrics(ext["label"], ext[c], threshold)
             for c in ext.columns if c.startswith("prob_fold")}
    stats = {k: mean_std([m[k] for m in folds.values()]) for k in METRIC_NAMES}
    return {"threshold": threshold, "n_cases": int(len(ext)), "folds": folds,
            "mean": {k: v[0] for k, v in stats.items()}, "std": {k: v[1] for k, v in stats.items()},
            "ensemble": binary_metrics(ext["label"], ext["prob"], threshold),
            "label": "external site: each fold's selected checkpoint (mean ± std) and the fold ensemble (mean probability)"}


def _fmt(v: float) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def summary_table(summary: dict[str, Any], title: str):
    from rich.table import Table

    folds = list(summary["folds"])
    t = Table(title=title)
    t.add_column("metric")
    t.add_column("mean ± std", justify="right")
    for f in folds:
        t.add_column(f"fold {f}", justify="right")
    for k in METRIC_NAMES:
        t.add_row(k.upper(), f"{_fmt(summary['mean'][k])} ± {_fmt(summary['std'][k])}",
                  *[_fmt(summary["folds"][f][k]) for f in folds])
    if "estimate_label" in summary:
        t.caption = f"estimate: {summary['estimate_label']}"
    return t


def estimates_table(summary: dict[str, Any]):
    """Every CV estimate (and the external site) side by side, each row saying what it is."""
    from rich.table import Table

    t = Table(title="what the numbers are: CV estimates (mean ± std over folds) and the external site",
              caption="(a) the epoch with the best AUC on the fold's own validation cases (selection saw their labels); "
                      "(b) the last epoch; (c) the epoch chosen on an inner split of the training folds")
    t.add_column("estimate", no_wrap=True)
    for k in METRIC_NAMES:
        t.add_column(k.upper(), justify="right")
    for key, est in summary.get("estimates", {}).items():
        mark = " [reported]" if key == summary.get("estimate") else ""
        t.add_row(ESTIMATE_SHORT.get(key, key) + mark, *[f"{_fmt(est['mean'][k])} ± {_fmt(est['std'][k])}" for k in METRIC_NAMES])
    ext = summary.get("external")
    if ext:
        t.add_row(f"external, fold models (n={ext['n_cases']})",
                  *[f"{_fmt(ext['mean'][k])} ± {_fmt(ext['std'][k])}" for k in METRIC_NAMES])
        t.add_row("external, fold ensemble", *[_fmt(ext["ensemble"][k]) for k in METRIC_NAMES])
    return t


def plot_learning_curves(histories: dict[int, pd.DataFrame], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = [("loss", ["train_loss", "val_loss", "inner_loss"]), ("val AUC", ["val_auc", "inner_auc"]),
              ("val ACC / F1", ["val_acc", "val_f1"])]
    wcols = sorted({c for h in histories.values() for c in h.columns if c.startswith("train_w_")})
    if wcols:
        panels.append(("hybrid-loss weights", wcols))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (name, cols) in zip(axes[0], panels):
        for i, (fold, h) in enumerate(sorted(histories.items())):
            for j, col in enumerate(cols):
                if col in h:
                    ax.plot(h["epoch"] + 1, h[col], color=colors[i % len(colors)],
                            linestyle=["-", "--", ":", "-."][j % 4], marker="o", markersize=3,
                            label=f"fold {fold} {col}")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if name == "val AUC":
            ax.set_ylim(0, 1.02)
        ax.legend(fontsize=6)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class LiveProgress:
    """Per-fold epoch and metrics in the terminal (a rich table redrawn in place; one line
    per epoch where the output is not a terminal, e.g. a log file)."""

    def __init__(self, folds: Iterable[int], epochs: int, enabled: bool = True, console=None) -> None:
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.epochs = epochs
        self.state: dict[int, dict[str, Any]] = {f: {"status": "queued"} for f in folds}
        self.t0 = time.time()
        self._live = None

    def __enter__(self) -> "LiveProgress":
        if self.enabled and self.console.is_terminal:
            from rich.live import Live

            self._live = Live(self._table(), console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.__exit__(*exc)

    def set_status(self, fold: int, status: str) -> None:
        self.state.setdefault(fold, {})["status"] = status
        self._refresh()

    def on_epoch(self, m: dict[str, Any]) -> None:
        fold = int(m["fold"])
        st = self.state.setdefault(fold, {})
        best = st.get("best_auc", float("nan"))
        auc = m.get("val_auc")
        if auc is not None and not (isinstance(auc, float) and math.isnan(auc)) and (math.isnan(best) or auc > best):
            best = auc
        st.update(status="running", epoch=int(m["epoch"]) + 1, train_loss=m.get("train_loss"), val_loss=m.get("val_loss"),
                  val_auc=auc, best_auc=best, inner_auc=m.get("inner_auc"), epoch_s=m.get("epoch_time_s"))
        if self.enabled and self._live is None:
            self.console.print(f"fold {fold} epoch {int(m['epoch']) + 1}/{self.epochs}: train loss {_fmt(m.get('train_loss'))}"
                               f"  val loss {_fmt(m.get('val_loss'))}  val AUC {_fmt(auc)}"
                               + (f"  inner AUC {_fmt(m.get('inner_auc'))}" if "inner_auc" in m else "")
                               + f"  ({_fmt(m.get('epoch_time_s'))} s)",
                               highlight=False)
        self._refresh()

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._table())

    def _table(self):
        from rich.table import Table

        t = Table(title=f"cross-validation  ({time.time() - self.t0:.0f} s)")
        for c in ("fold", "status", "epoch", "train loss", "val loss", "val AUC", "max val AUC (optimistic)",
                  "inner AUC", "s/epoch"):
            t.add_column(c, justify="right")
        for f in sorted(self.state):
            s = self.state[f]
            t.add_row(str(f), s.get("status", ""), f"{s.get('epoch', 0)}/{self.epochs}", _fmt(s.get("train_loss")),
                      _fmt(s.get("val_loss")), _fmt(s.get("val_auc")), _fmt(s.get("best_auc")), _fmt(s.get("inner_auc")),
                      _fmt(s.get("epoch_s")))
        return t
