"""``distmsfa paper --data D --profile cpu|paper --out OUT [--models ...]``: the paper's whole
experiment. Every model of Tables 3-6 is cross-validated as its own CV run (folds in
parallel on Ray; models in parallel as the cluster allows), each run scores the external
site, and the report of all runs is written.

    OUT/runs/<model>/      one `distmsfa cv` run folder per model (reused when finished,
                           resumed when stopped)
    OUT/report/            `distmsfa report` of every run (report.html, .md, tables/, figures/)
    OUT/paper.json         models, which were reused / resumed / run, wall time per model

The run folders are ordinary CV runs: ``distmsfa report``, ``distmsfa bundle export`` and
``distmsfa cv --resume`` work on them as on any other.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from distmsfa.evaluation.paper_tables import TABLE_MODELS

#: Every model of the paper's Tables 3-6, MSFANet first.
PAPER_MODELS: tuple[str, ...] = tuple(dict.fromkeys(("msfanet", *TABLE_MODELS["table3"], *TABLE_MODELS["table5"],
                                                    *TABLE_MODELS["table6"])))


def run_state(run_dir: Path) -> str:
    """``done`` (a finished run: summary.json after every fold), ``stopped`` or ``new``."""
    from distmsfa.evaluation.runs import ReportError, load_run

    if not (run_dir / "run.json").exists():
        return "new"
    try:
        load_run(run_dir)
        return "done"
    except ReportError:
        return "stopped"


def run_paper(data: str | os.PathLike[str], out: str | os.PathLike[str], *, profile: str = "cpu",
              models: Optional[Sequence[str]] = None, config: Optional[str] = None,
              overrides: Optional[Mapping[str, Any]] = None, address: Optional[str] = None, plain: bool = False,
              parallel_models: Optional[int] = None, lesions: Optional[str] = None, gradcam: bool = True,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or reuse) one CV run per model, then the report; return the paper.json record."""
    from distmsfa.evaluation.report import make_report
    from distmsfa.models.registry import list_models
    from distmsfa.training.cv import run_cv

    models = list(models or PAPER_MODELS)
    unknown = [m for m in models if m not in list_models()]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; see `distmsfa models`")
    out = Path(out).resolve()
    (out / "runs").mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"data": str(data), "profile": profile, "models": {}, "started":
                              _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    todo = []
    for m in models:
        st = run_state(out / "runs" / m)
        record["models"][m] = {"state_before": st, "run": str(out / "runs" / m)}
        if st == "done":
            log(f"{m}: finished run reused ({out / 'runs' / m})")
        else:
            todo.append((m, st == "stopped"))

    import contextlib

    from distmsfa.runtime import ray_session

    # One quiet Ray session for every model's CV run; a Ray it started ends with all its
    # processes, also on Ctrl-C (docs/operations.md).
    session = contextlib.nullcontext() if plain else ray_session(address, num_cpus=max(4, os.cpu_count() or 1))
    session.__enter__()
    try:
        par = parallel_models or _models_in_parallel(plain)

        def one(item: tuple[str, bool]) -> tuple[str, Optional[str], float]:
            m, resume = item
            t0 = time.perf_counter()
            try:
                run_cv(data, m, config, profile=profile, out=out / "runs" / m, resume=resume, plain=plain,
                       overrides=overrides, progress=par == 1)
                err = None
            except Exception as exc:  # noqa: BLE001 - one model's failure is reported, the others go on
                err = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            return m, err, time.perf_counter() - t0

        with ThreadPoolExecutor(max_workers=max(1, par)) as pool:
            for m, err, wall in pool.map(one, todo):
                record["models"][m].update(wall_s=round(wall, 1), error=err)
                log(f"{m}: {'failed: ' + err if err else 'done'} ({wall:.0f} s)")
    finally:
        session.__exit__(None, None, None)
    finished = [m for m in models if run_state(out / "runs" / m) == "done"]
    record["finished"] = finished
    if finished:
        res = make_report([out / "runs" / m for m in finished], out / "report", lesions=lesions, gradcam=gradcam)
        record["report"] = str(res.out / "report.html")
    record["ended"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    (out / "paper.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    failed = {m: v["error"] for m, v in record["models"].items() if v.get("error")}
    if failed:
        raise RuntimeError("model(s) failed (the others are in the report): "
                           + "; ".join(f"{m}: {e}" for m, e in failed.items()))
    return record


def _models_in_parallel(plain: bool) -> int:
    """Models at once: the cluster's fold slots over the folds of one run (at least 1)."""
    if plain:
        return 1
    import ray

    res = ray.cluster_resources()
    gpus = res.get("GPU", 0)
    slots = int(gpus) if gpus else int(res.get("CPU", 1) // 1.25)
    return max(1, slots // 4)
