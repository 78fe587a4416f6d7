"""A rank of a fold trained with DDP in processes this test spawned (gloo on CPU, no Ray):
the loop's side of ``workers_per_fold > 1`` on its own."""
from __future__ import annotations

import os
import pickle

TINY = {"preset": "tiny"}


def cfg_dict(epochs: int = 2, ema_decay: float = 0.0) -> dict:
    return {"model_cfg": TINY, "epochs": epochs, "batch_size": 4, "lr": 1e-3, "precision": "fp32",
            "selection": "last", "num_threads": 1, "seed": 0, "ema_decay": ema_decay}


def run_rank(rank: int, world: int, port: int, root: str, out: str, ema_decay: float = 0.0) -> None:
    import torch.distributed as dist

    from distmsfa.data.index import read_index
    from distmsfa.training.batches import PlainSource, fold_rows
    from distmsfa.training.config import TrainConfig
    from distmsfa.training.distributed import DistContext
    from distmsfa.training.loop import fit_fold

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cfg = TrainConfig.from_dict(cfg_dict(ema_decay=ema_decay))
        rows = fold_rows(read_index(root), 0, "last")
        src = PlainSource(root, rows.train, rows.val, cfg.batch_size, cfg.seed, workers=1, external=rows.external,
                          rank=rank, world=world)
        ctx = DistContext.from_process_group()
        res = fit_fold(cfg, src, 0, out_dir=os.path.join(out, "fold") if ctx.is_main else None, dist=ctx)
        with open(os.path.join(out, f"rank{rank}.pkl"), "wb") as fh:
            pickle.dump({"history": res.history, "predictions": res.predictions, "metrics": res.best_metrics,
                         "external": res.external, "pid": os.getpid()}, fh)
        # Leave together, so no rank tears gloo down while its peer still sends (rank 0 scores
        # and writes last).  A suspected cause, not a proven one, of an occasional SIGABRT of a
        # rank ("terminate called without an active exception"): seen in 1 of 4 runs of the
        # old code and 1 of 12 with the barrier on the 2-core machine; still open.
        dist.barrier()
    finally:
        dist.destroy_process_group()
