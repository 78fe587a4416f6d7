"""Ray Data side of the Ray path: read a fold's pairs (local disk or object storage through
``pyarrow.fs``, via :func:`distmsfa.data.index.load_pair`) and hand them to the worker in
the transport-independent order of :func:`distmsfa.training.batches.epoch_plan`.

Two modes for the training set (``CVConfig.materialize_train``):

* materialized (default): Ray Data loads the fold's pairs once into the object store
  (parallel read tasks), one block per case; each epoch the worker fetches the block
  references in the epoch's order (``ray.get`` with a read-ahead thread) and concatenates
  them into batches: reordering copies no voxel and costs no Ray Data execution per epoch
  (an execution started inside a worker costs about 1 s, measured, which would dominate
  short GPU epochs);
* streamed (``materialize_train=False``, for training sets larger than the object store):
  each epoch builds ``from_pandas(rows in plan order) -> map_batches(load)`` and iterates
  it with ``iter_torch_batches``, ``preserve_order`` keeping the plan.

Batches are ``{"case_id": list[str], "x": (B, 2, D, H, W) float16 tensor, "label": (B,)}``
(``Collate`` keeps ``case_id`` as strings, which Ray's default collate refuses).
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import pandas as pd
import ray
from ray.data.collate_fn import NumpyBatchCollateFn

from distmsfa.data.index import load_pair
from distmsfa.training.batches import Batch, epoch_plan, val_plan
from distmsfa.training.distributed import shard_ids, shard_plan

_COLUMNS = ["case_id", "label", "pair_path", "pair_sha256"]


def configure_data_context() -> None:
    """Keep block order (the epoch plan) and keep Ray Data's progress bars out of the logs."""
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def load_pairs(batch: dict[str, np.ndarray], root: str, verify: bool = True) -> dict[str, np.ndarray]:
    """map_batches function: index rows -> ``{case_id, x (n, 2, D, H, W) float16, label}``.

    ``verify``: each pair file is checked against its recorded ``pair_sha256`` the first
    time this read process loads it (a damaged file fails naming its case)."""
    n = len(batch["case_id"])
    pairs = [load_pair(root, {"pair_path": batch["pair_path"][i], "pair_sha256": batch["pair_sha256"][i],
                              "case_id": str(batch["case_id"][i])}, verify=verify)
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

    x = batch["x"]
    if not x.flags.writeable:  # arrays viewed from the object store are read-only; torch wants writable
        x = x.copy()
    return {"case_id": [str(c) for c in batch["case_id"]], "x": torch.from_numpy(np.ascontiguousarray(x)),
            "label": torch.tensor(np.asarray(batch["label"], dtype=np.float32))}


class Collate(NumpyBatchCollateFn):
    """``iter_torch_batches`` collate function (Ray >= 2.47 wants a class): keeps
    ``case_id`` a list of strings, which Ray's default collate refuses."""

    def __call__(self, batch: dict[str, np.ndarray]) -> Batch:
        return collate(batch)


class RaySource:
    """The Ray Data :class:`~distmsfa.training.batches.BatchSource` used inside a Train worker.

    ``val_iter``: a ``DataIterator`` (e.g. ``ray.train.get_dataset_shard("val")``) to take
    the validation batches from, or None (default) to build the validation dataset here,
    ordered by case_id and, with ``materialize_val``, kept in the object store.

    ``rank``/``world``: this worker's place in a fold trained with DDP over ``world``
    workers: it yields its rank-strided share of each epoch's plan and of the validation,
    inner and external cases (:mod:`distmsfa.training.distributed`).  Each rank
    materializes the whole training set (the plan, hence a rank's share, changes every
    epoch)."""

    def __init__(self, root: str, train: pd.DataFrame, val: pd.DataFrame, batch_size: int, seed: int,
                 data_cpus: float = 0.25, materialize_train: bool = True, val_iter: Any = None,
                 prefetch_batches: int = 2, materialize_val: bool = True, concurrency: int | None = None,
                 on_first_batch: Any = None, inner: pd.DataFrame | None = None,
                 external: pd.DataFrame | None = None, rank: int = 0, world: int = 1) -> None:
        configure_data_context()
        self.rank, self.world = rank, world
        self.root, self.batch_size, self.seed = str(root), batch_size, seed
        self.data_cpus, self.prefetch = data_cpus, prefetch_batches
        self.train = train.set_index(train["case_id"].astype(str), drop=False)
        self.train_ids = list(self.train.index)
        self.val = self._eval_rows(val)
        self.val_iter = val_iter
        # inner selection split (scored every epoch, kept like the validation set) and the
        # external site (scored once at the end): both in case_id order, like validation
        self.inner = None if inner is None or not len(inner) else self._eval_rows(inner)
        self.external = None if external is None or not len(external) else self._eval_rows(external)
        self._inner_refs: list[Any] | None = None
        self.concurrency = concurrency
        self.materialize_val = materialize_val
        self.on_first_batch = on_first_batch  # called once, when the first training batch arrives
        self._refs: dict[str, Any] | None = None
        self._val_refs: list[Any] | None = None
        self._keep: list[Any] = []  # materialized datasets: holding them keeps their blocks alive
        self._loading = None
        if materialize_train:
            # Load in the background: the worker builds its model meanwhile (imports, init).
            from concurrent.futures import ThreadPoolExecutor

            self._loader = ThreadPoolExecutor(1, thread_name_prefix="distmsfa-materialize")
            self._loading = self._loader.submit(self._materialize, self.train)

    def _eval_rows(self, rows: pd.DataFrame) -> pd.DataFrame:
        """An evaluation set in case_id order, this rank's share of it (may be empty)."""
        ids = shard_ids(val_plan(list(rows["case_id"].astype(str))), self.rank, self.world)
        return rows.set_index(rows["case_id"].astype(str), drop=False).loc[ids]

    def _materialize(self, rows: pd.DataFrame) -> list[Any]:
        """Load ``rows`` into the object store with Ray Data; one block reference per case, in order."""
        ds = cases_dataset(self.root, rows, self.data_cpus, concurrency=self.concurrency).materialize()
        refs = ds.to_arrow_refs()
        if len(refs) != len(rows):  # one block per case is what reordering relies on
            raise RuntimeError(f"expected {len(rows)} blocks (one per case), got {len(refs)}")
        self._keep.append(ds)
        return refs

    def _fetch(self, refs: list[Any]) -> Batch:
        from ray.data.block import BlockAccessor

        cols = [BlockAccessor.for_block(t).to_numpy() for t in ray.get(refs)]
        return collate({k: np.concatenate([c[k] for c in cols]) for k in ("case_id", "x", "label")})

    def _iter_refs(self, refs: list[Any]) -> Iterator[Batch]:
        """Batches from materialized blocks in the given order; a thread fetches ahead."""
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        groups = [refs[i : i + self.batch_size] for i in range(0, len(refs), self.batch_size)]
        with ThreadPoolExecutor(1, thread_name_prefix="distmsfa-fetch") as pool:
            futs = deque(pool.submit(self._fetch, g) for g in groups[: max(1, self.prefetch)])
            nxt = len(futs)
            while futs:
                batch = futs.popleft().result()
                if nxt < len(groups):
                    futs.append(pool.submit(self._fetch, groups[nxt]))
                    nxt += 1
                yield batch

    def _iterate(self, ds: "ray.data.Dataset") -> Iterator[Batch]:
        yield from ds.iter_torch_batches(batch_size=self.batch_size, collate_fn=Collate(),
                                         prefetch_batches=self.prefetch, drop_last=False)

    def train_batches(self, epoch: int) -> Iterator[Batch]:  # a generator: nothing starts before next()
        plan = shard_plan(epoch_plan(self.train_ids, self.seed, epoch, self.batch_size), self.rank, self.world,
                          self.batch_size)
        if self._loading is not None:
            self._refs = dict(zip(self.train_ids, self._loading.result()))
            self._loading = None
            self._loader.shutdown(wait=False)
        if self._refs is not None:
            batches = self._iter_refs([self._refs[c] for c in plan])
        else:
            batches = self._iterate(cases_dataset(self.root, self.train.loc[plan], self.data_cpus,
                                                  concurrency=self.concurrency))
        for batch in batches:
            if self.on_first_batch is not None:
                self.on_first_batch()
                self.on_first_batch = None
            yield batch

    def val_batches(self) -> Iterator[Batch]:
        if self.val_iter is not None:
            return self.val_iter.iter_torch_batches(batch_size=self.batch_size, collate_fn=Collate(),
                                                    prefetch_batches=self.prefetch)
        if not len(self.val):  # a rank of a fold with fewer validation cases than ranks
            return iter(())
        if self.materialize_val:
            if self._val_refs is None:
                self._val_refs = self._materialize(self.val)
            return self._iter_refs(self._val_refs)
        return self._iterate(cases_dataset(self.root, self.val, self.data_cpus, concurrency=self.concurrency))

    def inner_batches(self) -> Iterator[Batch]:
        if self.inner is None or not len(self.inner):
            return iter(())
        if self.materialize_val:
            if self._inner_refs is None:
                self._inner_refs = self._materialize(self.inner)
            return self._iter_refs(self._inner_refs)
        return self._iterate(cases_dataset(self.root, self.inner, self.data_cpus, concurrency=self.concurrency))

    def external_batches(self) -> Iterator[Batch]:
        if self.external is None or not len(self.external):
            return iter(())
        return self._iterate(cases_dataset(self.root, self.external, self.data_cpus, concurrency=self.concurrency))


