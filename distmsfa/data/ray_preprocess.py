"""Ray Data adapter for preprocessing: the only module of the data stage that imports Ray.

One block per case (so a slow case never holds others back), ``map`` with one CPU per
task; results stream back to the driver with ``iter_rows`` as they finish.
``process_case`` never raises.  A worker *process* that dies (a native crash in a
reader, the OOM killer) is different: Ray Data retries such tasks forever by default, so
``max_retries=MAX_RETRIES`` bounds it and ``max_errored_blocks`` lets the dataset skip
the block; the driver then reports that case as failed instead of hanging or losing the
whole run.
"""
from __future__ import annotations

import json
import warnings
from typing import Callable, Iterator

from distmsfa.data.case import process_case

#: Retries of a case whose worker process died (one retry covers a lost node).
MAX_RETRIES = 1


def _mapper(fn: Callable[[dict], dict]) -> Callable[[dict], dict]:
    def _map_row(row: dict) -> dict:
        return fn(json.loads(row["task"]))

    return _map_row


def run_tasks_ray(tasks: list[dict], *, address: str | None = None, num_workers: int | None = None,
                  fn: Callable[[dict], dict] = process_case) -> Iterator[dict]:
    """Run ``fn`` (default ``process_case``) over ``tasks`` on Ray Data; yield result dicts
    as they finish.  Tasks whose worker died are not yielded (the caller reports them).

    Connects to ``address`` (or a running Ray); starts a local Ray when none runs, and
    shuts down only a Ray it started itself."""
    import ray

    from distmsfa.runtime import ray_session

    # A local Ray started here is shut down with all its processes when the generator ends
    # or is closed (an interrupted build); a joined one keeps running (docs/operations.md).
    with ray_session(address, include_dashboard=False):
        yield from _run(tasks, num_workers, fn)


def _run(tasks: list[dict], num_workers: int | None, fn: Callable[[dict], dict]) -> Iterator[dict]:
    import ray

    ctx = ray.data.DataContext.get_current()
    saved = (ctx.enable_progress_bars, ctx.max_errored_blocks)
    try:
        if not tasks:
            return
        # process-global settings: restored in `finally` so later Ray Data users are unaffected
        ctx.enable_progress_bars = False  # the driver shows one rich bar over cases
        ctx.max_errored_blocks = len(tasks)
        ds = ray.data.from_items([{"task": json.dumps(t)} for t in tasks], override_num_blocks=len(tasks))
        cpus = int(ray.available_resources().get("CPU", 1)) or 1
        conc = max(1, min(num_workers or cpus, len(tasks)))
        with warnings.catch_warnings():
            # Ray 2.60 has no named parameter for max_retries yet (its **ray_remote_args is
            # deprecated "for Ray 2.64"); without it a crashing case is retried forever.
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            ds = ds.map(_mapper(fn), num_cpus=1, concurrency=conc, max_retries=MAX_RETRIES)
        for row in ds.iter_rows():
            yield dict(row)
    finally:
        ctx.enable_progress_bars, ctx.max_errored_blocks = saved
