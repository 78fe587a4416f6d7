"""One fold over several processes (PyTorch DDP): the Ray-free part.

The training loop (:func:`distmsfa.training.loop.fit_fold`) takes an optional
:class:`DistContext`; a Ray Train worker builds one (``ray_train.py``) after Ray Train
has set up the torch process group (gloo on CPU, NCCL on GPU), and a test can build one
in processes it spawned itself.  Everything here is plain ``torch.distributed``.

Contract (docs/training.md, "Several GPUs per fold"):

* **Training data**: each rank takes a rank-strided share of the epoch's plan
  (:func:`shard_plan`): ``plan[r::world]`` after the plan is cut to a multiple of
  ``world``, so the shards are disjoint, equally long (DDP needs every rank to take the
  same number of steps) and step ``i`` of all ranks together is the single-worker plan's
  ``i``-th block of ``batch_size * world`` cases.
* **Gradients**: all-reduced (averaged) by ``DistributedDataParallel``; parameters stay
  identical on every rank.  BatchNorm statistics are per rank (no SyncBatchNorm), and
  :meth:`DistContext.sync_state` copies rank 0's buffers to every rank before an
  evaluation, so every rank scores with the weights rank 0 checkpoints.
* **Evaluation**: each rank scores ``ids[r::world]`` of the (case_id-sorted) validation,
  inner and external cases; :func:`gather_predictions` puts every rank's predictions
  together in case_id order before any metric is computed, so the AUC is the one a
  single worker computes on the same weights.
* **Files**: only rank 0 (:attr:`DistContext.is_main`) writes checkpoints and metrics.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

if TYPE_CHECKING:  # torch is imported where used: Ray Data read tasks import the sharding helpers
    import torch


def shard_plan(plan: Sequence[str], rank: int, world: int, batch_size: int) -> list[str]:
    """Rank ``rank``'s share of an epoch's training plan (identity for ``world == 1``).

    The plan is cut to a multiple of ``world`` (at most ``world - 1`` cases of the
    epoch's random order are left out, different ones every epoch), then strided; a
    trailing batch of one case is dropped on every rank alike (BatchNorm cannot train on
    one case), so every rank takes the same number of steps."""
    if world == 1:
        return list(plan)
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in [0, {world})")
    n = len(plan) // world * world
    shard = list(plan[:n][rank::world])
    if len(shard) % batch_size == 1:
        shard = shard[:-1]
    return shard


def shard_ids(ids: Sequence[str], rank: int, world: int) -> list[str]:
    """Rank ``rank``'s share of an evaluation set (all cases are scored by some rank)."""
    return list(ids[rank::world])


def reduce_train_metrics(parts: list[dict[str, float]]) -> dict[str, float]:
    """One epoch's training metrics of every rank -> the fold's: losses averaged weighted by
    the rank's cases, ``train_samples`` summed, ``data_wait_s`` the slowest rank's."""
    if len(parts) == 1:
        return dict(parts[0])
    n = sum(p["train_samples"] for p in parts)
    out: dict[str, float] = {}
    for k in parts[0]:
        if k == "train_samples":
            out[k] = float(n)
        elif k == "data_wait_s":
            out[k] = max(p[k] for p in parts)
        else:
            out[k] = sum(p[k] * p["train_samples"] for p in parts) / max(n, 1)
    return out


def gather_predictions(all_gather: Callable[[Any], list[Any]], ids: list[str], labels: np.ndarray,
                       probs: np.ndarray, heads: dict[str, np.ndarray], loss_sum: float):
    """Every rank's evaluation outputs, put together in case_id order (the single-worker
    order: evaluation sets are sorted by case_id).  Returns ``(ids, labels, probs, heads,
    loss_sum)`` of the whole set; a rank with no cases contributes nothing."""
    parts = all_gather((ids, labels, probs, heads, loss_sum))
    parts = [p for p in parts if len(p[0])]
    if not parts:
        return [], np.zeros(0, np.float32), np.zeros(0, np.float32), {}, 0.0
    all_ids = [c for p in parts for c in p[0]]
    order = np.argsort(np.array(all_ids, dtype=object), kind="stable")
    lab = np.concatenate([p[1] for p in parts])[order]
    prob = np.concatenate([p[2] for p in parts])[order]
    hds = {k: np.concatenate([p[3][k] for p in parts])[order] for k in parts[0][3]}
    if len(set(all_ids)) != len(all_ids):
        raise RuntimeError("gather_predictions: a case was scored by two ranks (overlapping evaluation shards)")
    return [all_ids[i] for i in order], lab, prob, hds, float(sum(p[4] for p in parts))


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a fold's process group, and the collectives the loop uses.

    ``all_gather(obj)`` returns every rank's ``obj`` in rank order (any picklable object).
    ``find_unused_parameters``: passed to DDP (only for models with
    parameters that some step leaves without a gradient; it costs a graph traversal)."""

    rank: int
    world_size: int
    all_gather: Callable[[Any], list[Any]]
    find_unused_parameters: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_process_group(cls, **kwargs: Any) -> "DistContext":
        """From torch's default process group (set up by Ray Train's TorchTrainer, or by the caller)."""
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("DistContext.from_process_group: torch.distributed has no process group")
        world = dist.get_world_size()

        def all_gather(obj: Any) -> list[Any]:
            out: list[Any] = [None] * world
            dist.all_gather_object(out, obj)
            return out

        return cls(dist.get_rank(), world, all_gather, **kwargs)

    def wrap(self, model: "torch.nn.Module", device: "torch.device") -> "torch.nn.Module":
        """The module the training steps run through: DDP around ``model`` (which stays the
        one whose ``state_dict`` is checkpointed, so checkpoints carry no ``module.`` prefix)."""
        import torch
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=self.find_unused_parameters)

    def sync_state(self, model: "torch.nn.Module", buffers_only: bool = True) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics; with ``buffers_only=False``
        every tensor of the state) to every rank."""
        import torch
        import torch.distributed as dist

        if self.world_size == 1:
            return
        tensors = list(model.buffers()) if buffers_only else list(model.state_dict().values())
        with torch.no_grad():
            for t in tensors:
                dist.broadcast(t, src=0)

