"""Ray Data side of the Ray path: read a fold's pairs (local disk or object storage through
``pyarrow.fs``, via :func:`distmsfa.data.index.load_pair`) and hand them to the worker in
the transport-independent order of :func:`distmsfa.training.batches.epoch_plan`.

Two modes for the training set (``CVConfig.materialize_train``):

* materialized (default when it fits): the fold's pairs are loaded once into the object
  store, one block per case; each epoch is ``ray.data.from_arrow_refs`` over the block
  references in the epoch's order, which reorders without copying a voxel;
* streamed: each epoch builds ``from_pandas(rows in plan order) -> map_batches(load)``
  and Ray Data loads the pairs in parallel read tasks, ``preserve_order`` keeping the plan.

Batches reach the loop through ``iter_torch_batches`` with a collate function that keeps
``case_id`` as a list of strings (Ray's default collate refuses string columns).
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import pandas as pd
import ray

from distmsfa.data.index import load_pair
from distmsfa.training.batches import Batch, epoch_plan, val_plan

_COLUMNS = ["case_id", "label", "pair_path", "pair_sha256"]


def configure_data_context() -> None:
    """Keep block order (the epoch plan) and keep Ray Data's progress bars out of the logs."""
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def load_pairs(batch: dict[str, np.ndarray], root: str, verify: bool = False) -> dict[str, np.ndarray]:
    """map_batches function: index rows -> ``{case_id, x (n, 2, D, H, W) float16, label}``."""
    n = len(batch["case_id"])
    pairs = [load_pair(root, {"pair_path": batch["pair_path"][i], "pair_sha256": batch["pair_sha256"][i]}, verify=verify)
             for i in range(n)]
    return {"case_id": batch["case_id"], "x": np.stack(pairs), "label": batch["label"].astype(np.float32)}


def cases_dataset(root: str, rows: pd.DataFrame, data_cpus: float, rows_per_block: int = 1,
                  concurrency: int | None = None) -> "ray.data.Dataset":
    """A lazy dataset of loaded pairs in the order of ``rows`` (one read task per block).

    ``concurrency`` caps the parallel read tasks (each task is a Python process that
    imports numpy/pyarrow; on a small machine a few of them saturate the disk anyway)."""
    df = rows[_COLUMNS].copy()
    df["label"] = df["label"].astype("float32")
    df["case_id"] = df["case_id"].astype(str)
    parts = [df.iloc[i : i + rows_per_block] for i in range(0, len(df), rows_per_block)]
    return ray.data.from_pandas(parts).map_batches(
        load_pairs, fn_kwargs={"root": str(root)}, batch_size=None, num_cpus=data_cpus, batch_format="numpy",
        concurrency=concurrency)


def collate(batch: dict[str, np.ndarray]) -> Batch:
    import torch  # here, not at module level: the read tasks import this module and need no torch

    return {"case_id": [str(c) for c in batch["case_id"]], "x": torch.from_numpy(np.ascontiguousarray(batch["x"])),
            "label": torch.from_numpy(np.asarray(batch["label"], dtype=np.float32))}


class RaySource:
    """The Ray Data :class:`~distmsfa.training.batches.BatchSource` used inside a Train worker.

    ``val_iter``: a ``DataIterator`` (e.g. ``ray.train.get_dataset_shard("val")``) to take
    the validation batches from, or None (default) to build the validation dataset here,
    ordered by case_id and, with ``materialize_val``, kept in the object store."""

    def __init__(self, root: str, train: pd.DataFrame, val: pd.DataFrame, batch_size: int, seed: int,
                 data_cpus: float = 0.25, materialize_train: bool = True, val_iter: Any = None,
                 prefetch_batches: int = 2, materialize_val: bool = True, concurrency: int | None = None,
                 on_first_batch: Any = None) -> None:
        configure_data_context()
        self.root, self.batch_size, self.seed = str(root), batch_size, seed
        self.data_cpus, self.prefetch = data_cpus, prefetch_batches
        self.train = train.set_index(train["case_id"].astype(str), drop=False)
        self.train_ids = list(self.train.index)
        self.val = val.set_index(val["case_id"].astype(str), drop=False).loc[val_plan(list(val["case_id"].astype(str)))]
        self.val_iter = val_iter
        self._val_mat = None
        self.concurrency = concurrency
        self.materialize_val = materialize_val
        self.on_first_batch = on_first_batch  # called once, when the first training batch arrives
        self._refs: dict[str, Any] | None = None
        if materialize_train:
            ds = cases_dataset(self.root, self.train, data_cpus, concurrency=concurrency).materialize()
            refs = ds.to_arrow_refs()
            if len(refs) != len(self.train_ids):  # one block per case is what reordering relies on
                raise RuntimeError(f"expected {len(self.train_ids)} blocks, got {len(refs)}")
            self._mat = ds  # keeps the blocks alive
            self._refs = dict(zip(self.train_ids, refs))

    def _iterate(self, ds: "ray.data.Dataset") -> Iterator[Batch]:
        yield from ds.iter_torch_batches(batch_size=self.batch_size, collate_fn=collate,
                                         prefetch_batches=self.prefetch, drop_last=False)

    def train_batches(self, epoch: int) -> Iterator[Batch]:  # a generator: Ray Data starts on first next()
        plan = epoch_plan(self.train_ids, self.seed, epoch, self.batch_size)
        if self._refs is not None:
            ds = ray.data.from_arrow_refs([self._refs[c] for c in plan])
        else:
            ds = cases_dataset(self.root, self.train.loc[plan], self.data_cpus, concurrency=self.concurrency)
        for batch in self._iterate(ds):
            if self.on_first_batch is not None:
                self.on_first_batch()
                self.on_first_batch = None
            yield batch

    def val_batches(self) -> Iterator[Batch]:
        if self.val_iter is not None:
            return self.val_iter.iter_torch_batches(batch_size=self.batch_size, collate_fn=collate,
                                                    prefetch_batches=self.prefetch)
        if self.materialize_val:
            if self._val_mat is None:
                self._val_mat = cases_dataset(self.root, self.val, self.data_cpus, concurrency=self.concurrency).materialize()
            return self._iterate(self._val_mat)
        return self._iterate(cases_dataset(self.root, self.val, self.data_cpus, concurrency=self.concurrency))


