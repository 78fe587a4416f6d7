"""What the training loop consumes, independent of the transport.

A *batch* is a dict ``{"case_id": list[str], "x": (B, 2, D, H, W) array/tensor, "label": (B,)}``
with channel order ``(T1, FS)`` and values in [0, 1] (float16 as stored, or float32).
A :class:`BatchSource` yields the training batches of an epoch and the validation batches.

The epoch's training order is a pure function of ``(case ids, seed, epoch)``
(:func:`epoch_plan`): cases sorted by a keyed hash.  The plain loader and the Ray Data
path both follow the plan, so the same seed gives the same batches, hence the same
metrics, on either path.  Validation is ordered by case_id.
"""
from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Iterator, Protocol, Sequence

import numpy as np
import pandas as pd

from distmsfa.data.index import load_pair

Batch = dict[str, Any]


class BatchSource(Protocol):
    def train_batches(self, epoch: int) -> Iterable[Batch]: ...

    def val_batches(self) -> Iterable[Batch]: ...


def order_key(case_id: str, seed: int, epoch: int) -> int:
    h = hashlib.blake2b(f"{seed}:{epoch}:{case_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") >> 1  # fits int64 (Arrow sort keys)


def epoch_plan(case_ids: Sequence[str], seed: int, epoch: int, batch_size: int) -> list[str]:
    """The epoch's training order.  A trailing batch of one case is dropped (BatchNorm
    cannot train on a single case); every other case is seen once per epoch."""
    order = sorted(case_ids, key=lambda c: (order_key(c, seed, epoch), c))
    if len(order) % batch_size == 1:
        order = order[:-1]
    return order


def val_plan(case_ids: Sequence[str]) -> list[str]:
    return sorted(case_ids)


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def training_rows(index: pd.DataFrame, fold: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, val) rows of one fold: labelled, non-external cases; val = the fold itself."""
    lab = index[index["label"].notna() & index["fold"].notna() & ~index["is_external"].astype(bool)]
    val = lab[lab["fold"] == fold]
    train = lab[lab["fold"] != fold]
    if val.empty:
        folds = sorted(int(f) for f in lab["fold"].dropna().unique())
        raise ValueError(f"fold {fold} has no labelled cases; the dataset's folds are {folds}")
    if train["label"].nunique() < 2:
        raise ValueError(f"fold {fold}: the training folds hold one class only; need both axSpA and non-axSpA cases")
    return train.reset_index(drop=True), val.reset_index(drop=True)


class PlainSource:
    """Loads pairs from the dataset root with :func:`load_pair`; a thread prefetches batches."""

    def __init__(self, root: str, train: pd.DataFrame, val: pd.DataFrame, batch_size: int, seed: int,
                 prefetch: int = 2, workers: int = 4) -> None:
        self.root = str(root)
        self.batch_size = batch_size
        self.seed = seed
        self.prefetch = prefetch
        self.workers = workers
        self._rows = {r["case_id"]: r for r in pd.concat([train, val]).to_dict("records")}
        self.train_ids = list(train["case_id"])
        self.val_ids = list(val["case_id"])

    def _load(self, ids: Sequence[str]) -> Batch:
        rows = [self._rows[c] for c in ids]
        x = np.stack([load_pair(self.root, r) for r in rows])
        return {"case_id": list(ids), "x": x, "label": np.array([float(r["label"]) for r in rows], dtype=np.float32)}

    def _iterate(self, ids: Sequence[str]) -> Iterator[Batch]:
        groups = list(chunks(ids, self.batch_size))
        with ThreadPoolExecutor(self.workers) as pool:
            futures = [pool.submit(self._load, g) for g in groups[: self.prefetch]]
            for i in range(len(groups)):
                batch = futures[i].result()
                nxt = i + self.prefetch
                if nxt < len(groups):
                    futures.append(pool.submit(self._load, groups[nxt]))
                futures[i] = None  # type: ignore[call-overload]  # free the batch
                yield batch

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        return self._iterate(epoch_plan(self.train_ids, self.seed, epoch, self.batch_size))

    def val_batches(self) -> Iterator[Batch]:
        return self._iterate(val_plan(self.val_ids))
