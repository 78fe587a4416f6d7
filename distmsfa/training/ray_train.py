"""Ray Train V2 side of the Ray path: one TorchTrainer per fold, folds in parallel.

* :func:`train_func` is the V2 ``train_func(config)`` run by each fold's worker (module
  level, so it pickles).  It resumes from ``ray.train.get_checkpoint()`` (set after a
  worker failure, and when a run with the same ``RunConfig(name, storage_path)`` is
  started again after a driver kill), trains with :func:`distmsfa.training.loop.fit_fold`,
  reports every epoch with a checkpoint of the full state, and pushes the epoch's metrics
  to the run's :class:`MetricsHub` actor so that the driver (or a Ray Tune trial wrapping
  the CV run) sees every fold's progress while it runs.
* :func:`fit_fold_job` runs one fold's ``TorchTrainer.fit()`` on a driver thread;
  :func:`run_folds` keeps up to ``max_parallel`` of them in flight and polls the hub on
  the caller's thread.  Each ``fit()`` starts its own Train controller actor (0 CPU) and
  one worker; a Ray Tune trial that calls the CV run does the same from its actor, which
  is Tune's supported nesting (a TorchTrainer launched inside a trial).
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from typing import Any, Callable

import pandas as pd
import ray
import torch

from distmsfa.training.config import TrainConfig
from distmsfa.training.loop import fit_fold, load_state
from distmsfa.training.outputs import FileReporter, write_fold_outputs

HUB_NAMESPACE = "distmsfa"
STATE_FILE = "state.pt"
PID_FILE = "worker_pids.txt"
PG_FILE = "placement_groups.txt"
TIMELINE_FILE = "timeline.jsonl"

#: Set when the driver is interrupted: fold threads that have not yet started their
#: trainer do not start it.
_STOP = threading.Event()


class MetricsHub:
    """Collects ``(fold, epoch metrics)`` events from the workers; the driver polls it.

    Created with ``ray.remote(num_cpus=0)`` under a run-specific name in namespace
    ``distmsfa``; workers look it up by name (it is not passed through the train config)."""

    def __init__(self) -> None:
        self._events: list[dict[str, Any]] = []
        self._controllers: list[Any] = []

    def add_controller(self, handle: Any) -> None:
        """Each fold's Train controller registers here, so an interrupted driver can abort it."""
        self._controllers.append(handle)

    def controllers(self) -> list[Any]:
        return list(self._controllers)

    def push(self, event: dict[str, Any]) -> int:
        self._events.append(event)
        return len(self._events)

    def events_since(self, cursor: int) -> list[dict[str, Any]]:
        return self._events[cursor:]


def hub_name(run_id: str) -> str:
    return f"distmsfa-cv-{run_id}"


def _controller_callbacks(run_id: str) -> list[Any]:
    """A Train controller callback that registers the controller with the run's hub.

    ``TorchTrainer.fit()`` on a driver thread never exposes its controller actor (Ray only
    wires Ctrl-C to it when ``fit()`` runs on the main thread); the driver needs it to abort
    the fold on SIGINT/SIGTERM (``controller.abort``: workers stopped, committed
    checkpoints kept).  Uses Ray Train V2's internal ``ControllerCallback``; where it has
    moved, no callback is added and an interrupt falls back to ending the session."""
    try:
        from ray.train.v2._internal.execution.callback import ControllerCallback
    except ImportError:  # pragma: no cover - other Ray versions
        return []

    class _RegisterController(ControllerCallback):
        def __init__(self, rid: str) -> None:
            self.run_id = rid

        def after_controller_start(self, train_run_context: Any) -> None:
            try:
                hub = ray.get_actor(hub_name(self.run_id), namespace=HUB_NAMESPACE)
                hub.add_controller.remote(ray.get_runtime_context().current_actor)
            except Exception:  # noqa: BLE001 - no hub (driver gone): nothing to register with
                pass

    return [_RegisterController(run_id)]


def abort_folds(hub: Any, timeout_s: float = 3.0) -> int:
    """Abort every registered fold controller of the run (their workers stop; committed
    checkpoints stay); force-kill those that do not answer within ``timeout_s``."""
    try:
        ctrls = ray.get(hub.controllers.remote(), timeout=timeout_s)
    except Exception:  # noqa: BLE001
        return 0
    refs = [c.abort.remote() for c in ctrls]
    try:
        ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    except Exception:  # noqa: BLE001
        pass
    for c in ctrls:
        try:
            ray.kill(c, no_restart=True)
        except Exception:  # noqa: BLE001 - already exited (abort ends the actor)
            pass
    return len(ctrls)


def start_hub(run_id: str):
    return ray.remote(num_cpus=0)(MetricsHub).options(
        name=hub_name(run_id), namespace=HUB_NAMESPACE, get_if_exists=True).remote()


class RayReporter:
    """Reports each epoch to Ray Train (with a checkpoint of the full state), then logs
    it to the fold folder and pushes it to the hub."""

    def __init__(self, fold_dir: str, run_id: str, main: bool = True) -> None:
        self.main = main  # rank 0 of the fold; the other ranks only take part in the report
        self.files = FileReporter(fold_dir)
        self.hub = None
        if not main:
            return
        try:
            self.hub = ray.get_actor(hub_name(run_id), namespace=HUB_NAMESPACE)
        except ValueError:  # the driver is gone; training still checkpoints
            self.hub = None

    def on_epoch(self, fold: int, metrics: dict[str, float], state: dict[str, Any], is_best: bool) -> None:
        import ray.train

        # The hub first: an epoch must never go missing from the driver's view (a Tune trial
        # waits for every fold's epoch).  A worker killed before the checkpoint below is
        # committed re-runs the epoch and pushes it again: consumers keep the last value.
        name = f"checkpoint_epoch{int(metrics['epoch']):04d}"
        if not self.main:  # report() is collective in Train V2: every rank calls it, rank 0 checkpoints
            ray.train.report(dict(metrics), checkpoint=None, checkpoint_dir_name=name)
            return
        if self.hub is not None:
            self.hub.push.remote({**metrics, "pid": os.getpid()})
        with tempfile.TemporaryDirectory(prefix="distmsfa-ckpt-") as tmp:
            torch.save(state, os.path.join(tmp, STATE_FILE))
            ray.train.report(dict(metrics), checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=name)
        # The controller registers a reported checkpoint when it next polls the worker; a
        # worker killed before that restarts without it.  Wait for the commit, so that an
        # epoch in metrics.jsonl is always one a restart resumes after.
        ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
        self.files.on_epoch(fold, metrics, state, is_best)


def mark(fold_dir: str, event: str, **extra: Any) -> None:
    """Append a timestamped event to ``fold_dir/timeline.jsonl`` (start-up cost, benchmark (b))."""
    with open(os.path.join(fold_dir, TIMELINE_FILE), "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"event": event, "t": time.time(), "pid": os.getpid(), **extra}) + "\n")


def train_func(config: dict[str, Any]) -> None:
    """Ray Train V2 worker entry point; ``config`` is the fold spec built by the CV runner."""
    import ray.train

    from distmsfa.training.distributed import DistContext
    from distmsfa.training.ray_data import RaySource

    fold, fold_dir = int(config["fold"]), config["fold_dir"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    main = rank == 0
    os.makedirs(fold_dir, exist_ok=True)
    with open(os.path.join(fold_dir, PID_FILE), "a", encoding="utf-8") as fh:
        fh.write(f"{os.getpid()}\n")  # lets tests (and users) find the worker processes (every rank)
    pg = ray.util.get_current_placement_group()
    if pg is not None and main:  # lets a Tune trial's driver remove it if Tune stops the trial mid-run (docs/tuning.md)
        with open(os.path.join(fold_dir, PG_FILE), "a", encoding="utf-8") as fh:
            fh.write(f"{pg.id.hex()}\n")
    mark(fold_dir, "worker_start", node_id=ray.get_runtime_context().get_node_id(), rank=rank)
    cfg = TrainConfig.from_dict(config["train"])
    resume = None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            resume = load_state(os.path.join(d, STATE_FILE))
    cols = ["case_id", "patient_id", "label", "pair_path", "pair_sha256"]
    train, val = pd.DataFrame(config["train_rows"]), pd.DataFrame(config["val_rows"])
    inner = pd.DataFrame(config.get("inner_rows") or [], columns=cols)
    external = pd.DataFrame(config.get("external_rows") or [], columns=cols)
    source = RaySource(config["root"], train, val, cfg.batch_size, cfg.seed, data_cpus=config["data_cpus"],
                       inner=inner, external=external,
                       materialize_train=config["materialize_train"], materialize_val=config["materialize_val"],
                       concurrency=config.get("read_concurrency"),
                       on_first_batch=(lambda: mark(fold_dir, "first_batch")) if main else None,
                       rank=rank, world=world)
    if main:
        mark(fold_dir, "source_ready")
    # DDP over the fold's workers: Ray Train's TorchTrainer has set up the process group
    # (gloo on CPU, NCCL on GPU); the loop only sees a DistContext (docs/training.md).
    dist = DistContext.from_process_group() if world > 1 else None
    result = fit_fold(cfg, source, fold, out_dir=fold_dir if main else None,
                      reporter=RayReporter(fold_dir, config["run_id"], main=main),
                      resume=resume, device=_device(), save_last_every_epoch=False, dist=dist)
    if main:
        write_fold_outputs(fold_dir, result)


def _device() -> torch.device:
    if torch.cuda.is_available():
        import ray.train.torch

        return ray.train.torch.get_device()
    return torch.device("cpu")


def fit_fold_job(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one fold's ``TorchTrainer.fit()`` (called on a driver thread); return a small dict.

    No ``datasets=``: the worker builds its own Ray Data pipelines (see ray_data.py),
    because the epoch order changes every epoch, and because Train's dataset split
    coordinator is one more process per fold to start (seconds on a small machine)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    t0 = time.time()
    if _STOP.is_set():
        raise RuntimeError("the run was interrupted before this fold started")
    mark(spec["fold_dir"], "trainer_start")
    trainer = TorchTrainer(
        train_func,
        train_loop_config=spec,
        scaling_config=fold_scaling_config(spec),
        run_config=ray.train.RunConfig(
            name=spec["name"], storage_path=spec["storage_path"],
            failure_config=ray.train.FailureConfig(max_failures=spec["max_failures"]),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            callbacks=_controller_callbacks(spec["run_id"])),
    )
    trainer.fit()
    return {"fold": spec["fold"], "wall_s": time.time() - t0}


def fold_scaling_config(spec: dict[str, Any]) -> "ray.train.ScalingConfig":
    """A fold's workers: ``workers_per_fold`` of them (one DDP rank each), each with
    ``cpus_per_fold`` CPUs and, on a GPU cluster, ``gpus_per_fold`` GPU (fractional: several
    folds share a GPU).  Ray Train reserves them as one placement group of
    ``workers_per_fold`` bundles (:func:`fold_bundles`), PACK strategy."""
    import ray.train

    use_gpu = spec["gpus_per_fold"] > 0 and spec["use_gpu"]
    res = {"CPU": spec["cpus_per_fold"], **({"GPU": spec["gpus_per_fold"]} if use_gpu else {})}
    return ray.train.ScalingConfig(num_workers=int(spec.get("workers_per_fold", 1)), use_gpu=use_gpu,
                                   resources_per_worker=res)


def fold_bundles(scaling: "ray.train.ScalingConfig") -> list[dict[str, float]]:
    """The placement-group bundles Ray Train V2 reserves for ``scaling`` (its worker group
    asks ``placement_group([resources_per_worker] * num_workers, placement_strategy)``)."""
    return [dict(scaling._resources_per_worker_not_none)] * scaling.num_workers


def cluster_parallelism(gpus_per_fold: float, cpus_per_fold: float, data_cpus: float, use_gpu: bool,
                        workers_per_fold: int = 1) -> int:
    """How many folds fit at once: by GPUs where asked for, else by CPUs (a fold's workers
    plus one loading task, so Ray Data is never starved by the workers)."""
    total = ray.cluster_resources()
    if use_gpu:
        return max(1, int(total.get("GPU", 0) / (gpus_per_fold * workers_per_fold) + 1e-9))
    return max(1, int(total.get("CPU", 1) // (cpus_per_fold * workers_per_fold + data_cpus)))


def run_folds(specs: list[dict[str, Any]], max_parallel: int, hub: Any,
              on_event: Callable[[dict[str, Any]], None], poll_s: float = 0.5) -> dict[int, str | None]:
    """Run the fold specs, ``max_parallel`` at a time; return ``{fold: None | error message}``.

    A failed fold does not stop the others.  ``on_event`` receives each epoch's metrics
    (with ``fold``, ``epoch`` and ``pid``) as the hub gets them, on the caller's thread."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    pending = list(specs)
    running: dict[Any, int] = {}
    outcome: dict[int, str | None] = {}
    cursor = 0
    _STOP.clear()
    pool = ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix="distmsfa-fold")

    def drain() -> None:
        nonlocal cursor
        events = ray.get(hub.events_since.remote(cursor))
        cursor += len(events)
        for e in events:
            on_event(e)

    try:
        while pending or running:
            while pending and len(running) < max_parallel:
                spec = pending.pop(0)
                mark(spec["fold_dir"], "submit")
                running[pool.submit(fit_fold_job, spec)] = spec["fold"]
            done, _ = wait(list(running), timeout=poll_s, return_when=FIRST_COMPLETED)
            drain()
            for fut in done:
                fold = running.pop(fut)
                exc = fut.exception()
                outcome[fold] = None if exc is None else _one_line(exc)
        drain()
    except BaseException:  # KeyboardInterrupt / distmsfa.runtime.Interrupted: stop the folds now
        _stop_running(hub, running, pending)
        raise
    finally:
        pool.shutdown(wait=not running, cancel_futures=True)
    return outcome


def _stop_running(hub: Any, running: dict[Any, int], pending: list, wait_s: float = 5.0) -> None:
    """Abort the running folds' controllers until their ``fit()`` threads return (a fold
    whose controller registers after the first round is aborted in the next one)."""
    from concurrent.futures import wait

    pending.clear()
    _STOP.set()
    deadline = time.monotonic() + wait_s
    while running and time.monotonic() < deadline:
        abort_folds(hub, timeout_s=1.0)
        done, _ = wait(list(running), timeout=0.5)
        for fut in done:
            running.pop(fut, None)


def _one_line(exc: BaseException) -> str:
    cause = exc
    while getattr(cause, "cause", None) is not None:
        cause = cause.cause
    text = str(cause).strip().splitlines()
    last = [t for t in text if t.strip()]
    return f"{type(cause).__name__}: {last[-1] if last else ''}"[:500]


def dump_spec(spec: dict[str, Any], path: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump({k: v for k, v in spec.items() if not k.endswith("_rows")}, fh, indent=2, default=str)
