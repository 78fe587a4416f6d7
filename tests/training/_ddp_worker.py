"""A rank of a fold trained with DDP in processes this test spawned (gloo on CPU, no Ray):
the loop's side of ``workers_per_fold > 1`` on its own.

The occasional SIGABRT of a rank ("terminate called without an active exception", a
std::terminate: typically a joinable std::thread destroyed) and why the rank imports
``torch.distributed.nn.functional`` before ``init_process_group``:

* What was alive at exit (found, deterministic, every run, both ranks): the gloo process
  group.  ``torch.distributed.nn.functional``'s ten collectives take ``group=group.WORLD`` as
  a *default argument*, evaluated at import.  Nothing of ours imports it, but
  ``DistributedDataParallel.__init__`` imports ``torch._dynamo`` (``get_optimize_ddp_mode``),
  which does; with a group up, those defaults keep it (torch 2.13: its refcount goes
  10 -> 20 at the first DDP wrap).  ``destroy_process_group()`` then frees nothing: the two
  ``pt_gloo_runloop`` workers, ``gloo_tcp_loop`` and rank 0's ``pt_tcpstore_uv`` TCPStore
  server kept running, and gdb (a one-process group, same leak) shows ``~ProcessGroupGloo``
  run only inside ``Py_FinalizeEx`` (``finalize_modules``' last collection): the threads are
  joined and its sockets closed while the interpreter is half torn down and the peer process
  is exiting too - the timing-dependent teardown this abort comes from, as far as we can tell.
  Imported before the group exists, the defaults are ``None`` and ``destroy_process_group()``
  frees the group (whose destructor joins those threads) while everything is alive; the rank
  records that (``pg_freed``) and the test asserts it (checked: it fails with the old worker,
  whose group was never freed).  In 40 runs with the fix none of those threads was left
  after ``destroy_process_group()`` (read from ``/proc``; not asserted, since a joined
  thread's ``/proc`` entry may outlive the join by a moment).
* Excluded: Python threads (``PlainSource``'s executor is joined per pass; only the main
  thread is left at exit); arrow's CPU thread pool (its three threads live to the end, but
  gdb saw no ``~ThreadPool`` at the exit of a process reading the index); EMA (the abort was seen with ``ema_decay`` 0.0).
* Counts on the shared 2-core machine, all runs at nice 10: the abort did not reproduce here,
  before or after.  Unchanged worker: 0 aborts in 160 spawns (40 plain, 40 with
  ``ema_decay`` 0.8, 40 in the test's loopback-only namespace, 40 there with both ranks
  pinned to one core) and in 20 runs of this test (10 pytest sessions, both cases); with the
  fix: 0 in 40.  Reported before this change: 1 run in 4 without the barrier below, 1 in 12
  with it.
  So the link from the leaked group to the abort is the mechanism above, not a before/after
  count; the leak itself is gone and tested.
* The product's DDP path (Ray Train workers, ``workers_per_fold > 1``) has the same leak
  (Ray Train sets the group up before our code runs), but Ray Train V2 ends each worker with
  ``ray.kill`` after ``destroy_process_group()``: no interpreter finalization runs there.
"""
from __future__ import annotations

import gc
import os
import pickle
import weakref

TINY = {"preset": "tiny"}


def cfg_dict(epochs: int = 2, ema_decay: float = 0.0) -> dict:
    return {"model_cfg": TINY, "epochs": epochs, "batch_size": 4, "lr": 1e-3, "precision": "fp32",
            "selection": "last", "num_threads": 1, "seed": 0, "ema_decay": ema_decay}


def run_rank(rank: int, world: int, port: int, root: str, out: str, ema_decay: float = 0.0) -> None:
    import torch.distributed as dist
    import torch.distributed.nn.functional  # noqa: F401  # before the group exists: see the module docstring

    from distmsfa.data.index import read_index
    from distmsfa.training.batches import PlainSource, fold_rows
    from distmsfa.training.config import TrainConfig
    from distmsfa.training.distributed import DistContext
    from distmsfa.training.loop import fit_fold

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    group = weakref.ref(dist.group.WORLD)
    try:
        cfg = TrainConfig.from_dict(cfg_dict(ema_decay=ema_decay))
        rows = fold_rows(read_index(root), 0, "last")
        src = PlainSource(root, rows.train, rows.val, cfg.batch_size, cfg.seed, workers=1, external=rows.external,
                          rank=rank, world=world)
        ctx = DistContext.from_process_group()
        res = fit_fold(cfg, src, 0, out_dir=os.path.join(out, "fold") if ctx.is_main else None, dist=ctx)
        # Leave together, so no rank tears gloo down while its peer still sends (rank 0 scores
        # and writes last).
        dist.barrier()
    finally:
        dist.destroy_process_group()
    gc.collect()  # what a cycle alone keeps is not a leak
    result = {"history": res.history, "predictions": res.predictions, "metrics": res.best_metrics,
              "external": res.external, "pid": os.getpid(),
              # the group (and with it its threads) is gone now, not at interpreter exit
              "pg_freed": group() is None}
    with open(os.path.join(out, f"rank{rank}.pkl"), "wb") as fh:
        pickle.dump(result, fh)
