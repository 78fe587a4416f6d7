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
    return t


def plot_learning_curves(histories: dict[int, pd.DataFrame], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = [("loss", ["train_loss", "val_loss"]), ("val AUC", ["val_auc"]), ("val ACC / F1", ["val_acc", "val_f1"])]
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
                  val_auc=auc, best_auc=best, epoch_s=m.get("epoch_time_s"))
        if self.enabled and self._live is None:
            self.console.print(f"fold {fold} epoch {int(m['epoch']) + 1}/{self.epochs}: train loss {_fmt(m.get('train_loss'))}"
                               f"  val loss {_fmt(m.get('val_loss'))}  val AUC {_fmt(auc)}  ({_fmt(m.get('epoch_time_s'))} s)",
                               highlight=False)
        self._refresh()

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._table())

    def _table(self):
        from rich.table import Table

        t = Table(title=f"cross-validation  ({time.time() - self.t0:.0f} s)")
        for c in ("fold", "status", "epoch", "train loss", "val loss", "val AUC", "best AUC", "s/epoch"):
            t.add_column(c, justify="right")
        for f in sorted(self.state):
            s = self.state[f]
            t.add_row(str(f), s.get("status", ""), f"{s.get('epoch', 0)}/{self.epochs}", _fmt(s.get("train_loss")),
                      _fmt(s.get("val_loss")), _fmt(s.get("val_auc")), _fmt(s.get("best_auc")), _fmt(s.get("epoch_s")))
        return t
