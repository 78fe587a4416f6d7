"""The study's live table in the terminal: a Ray Tune callback run by the Tune driver.

One row per trial (trial, key parameters, epoch, CV AUC, objective, status), redrawn in
place on a terminal; one line per event where the output is a file.  Picklable (Tune
stores the RunConfig's callbacks with the experiment and brings them back on restore)."""
from __future__ import annotations

import math
import time
from typing import Any, Optional

from ray.tune import Callback


def _fmt(v: Any, nd: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.{nd}g}" if (abs(v) < 1e-2 and v != 0) or abs(v) >= 1e3 else f"{v:.{nd}f}"
    return str(v)


class LiveTable(Callback):
    def __init__(self, keys: list[str], epochs: int, max_t: int, enabled: bool = True) -> None:
        self.keys = list(keys)
        self.epochs = epochs
        self.max_t = max_t
        self.enabled = enabled
        self.rows: dict[str, dict[str, Any]] = {}
        self.t0 = time.time()
        self._live = None
        self._console = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_live"] = None
        state["_console"] = None
        return state

    # --- Tune hooks (driver side) ---
    def setup(self, **info: Any) -> None:
        self.t0 = time.time()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self._row(trial)
        row["status"] = "running"
        self._update(f"trial {trial.trial_id} started")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        row = self._row(trial)
        row.update(status="running", epoch=result.get("epoch"), cv_auc=result.get("cv_auc"), objective=result.get("objective"))
        self._update(f"trial {trial.trial_id} epoch {result.get('epoch')}/{self.epochs}: CV AUC {_fmt(result.get('cv_auc'))}"
                     f"  objective {_fmt(result.get('objective'))}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self._row(trial)
        ep = int(row.get("epoch") or 0)
        row["status"] = "done" if ep >= self.max_t else "stopped (ASHA)"
        self._update(f"trial {trial.trial_id} {row['status']}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._row(trial)["status"] = "failed"
        self._update(f"trial {trial.trial_id} failed")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self._live is not None:
            self._live.update(self.table())
            self._live.__exit__(None, None, None)
            self._live = None

    # --- rendering ---
    def _row(self, trial: Any) -> dict[str, Any]:
        if trial.trial_id not in self.rows:
            cfg = getattr(trial, "config", {}) or {}
            self.rows[trial.trial_id] = {"params": {k: cfg.get(k) for k in self.keys}, "status": "pending"}
        return self.rows[trial.trial_id]

    def _update(self, line: str) -> None:
        if not self.enabled:
            return
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True)
        if self._console.is_terminal:
            if self._live is None:
                from rich.live import Live

                self._live = Live(self.table(), console=self._console, refresh_per_second=2, transient=False)
                self._live.__enter__()
            self._live.update(self.table())
        else:
            self._console.print(f"[{time.time() - self.t0:5.0f} s] {line}", highlight=False)

    def table(self, title: Optional[str] = None):
        from rich.table import Table

        t = Table(title=title or f"study  ({time.time() - self.t0:.0f} s)")
        t.add_column("trial")
        for k in self.keys:
            t.add_column(k.split(".", 1)[1], justify="right")
        for c in ("epoch", "CV AUC", "objective", "status"):
            t.add_column(c, justify="right")
        for tid, r in self.rows.items():
            t.add_row(tid, *[_fmt(r["params"].get(k)) for k in self.keys],
                      f"{r.get('epoch') or 0}/{self.epochs}", _fmt(r.get("cv_auc")), _fmt(r.get("objective")), r["status"])
        return t
