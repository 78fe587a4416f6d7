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
from dataclasses import dataclass
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Iterator, Protocol, Sequence

import numpy as np
import pandas as pd

from distmsfa.data.index import load_pair
from distmsfa.training.distributed import shard_ids, shard_plan

Batch = dict[str, Any]


class BatchSource(Protocol):
    """``inner_batches()`` (the inner selection split) and ``external_batches()`` (the
    external site) are optional: a source without those rows yields nothing."""

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


def _patient_label(df: pd.DataFrame) -> pd.Series:
    # A patient scanned twice has one label; mixed labels (possible in hand-made indexes)
    # count as axSpA, so such a patient still lands in one stratum.
    return df.groupby("patient_id")["label"].agg(lambda s: int(round(float(pd.Series(s).astype(float).mean()) + 1e-9)))


def inner_split(train: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a fold's training rows into (train, inner): whole patients, label-stratified.

    Per label stratum, ``round(fraction * patients)`` patients (at least one) go to the
    inner split, chosen by a seeded keyed hash of the patient id (stable under row order).
    Raises ValueError when either part would miss a class."""
    plabel = _patient_label(train)
    inner_patients: list[str] = []
    for lab, pats in plabel.groupby(plabel):
        ordered = sorted(pats.index.astype(str), key=lambda p: (order_key(p, seed, -1), p))
        k = max(1, int(round(fraction * len(ordered))))
        if k >= len(ordered):
            raise ValueError(f"inner split: only {len(ordered)} patient(s) with label {int(lab)} in the fold's training "
                             f"cases; need at least 2 (use selection: val or last, or a larger dataset)")
        inner_patients.extend(ordered[:k])
    is_inner = train["patient_id"].astype(str).isin(set(inner_patients))
    inner, rest = train[is_inner], train[~is_inner]
    if inner["label"].nunique() < 2 or rest["label"].nunique() < 2:
        raise ValueError("inner split: a part holds one class only; use selection: val or last, or a larger dataset")
    return rest.reset_index(drop=True), inner.reset_index(drop=True)


@dataclass
class FoldRows:
    """A fold's index rows: ``train`` (what the model learns from), ``val`` (the fold, scored
    for the CV estimate), ``inner`` (selection split from the training folds, may be empty),
    ``external`` (labelled external-site cases, scored at the end, may be empty)."""

    train: pd.DataFrame
    val: pd.DataFrame
    inner: pd.DataFrame
    external: pd.DataFrame


def external_rows(index: pd.DataFrame) -> pd.DataFrame:
    """Labelled external-site cases (the paper's Table 4 set)."""
    return index[index["is_external"].astype(bool) & index["label"].notna()].reset_index(drop=True)


def fold_rows(index: pd.DataFrame, fold: int, selection: str = "val", inner_fraction: float = 0.2,
              inner_seed: int = 0) -> FoldRows:
    """The rows of one fold for a selection rule (``inner`` splits the training rows)."""
    train, val = training_rows(index, fold)
    inner = train.iloc[0:0]
    if selection == "inner":
        try:
            train, inner = inner_split(train, inner_fraction, inner_seed)
        except ValueError as exc:
            raise ValueError(f"fold {fold}: {exc}") from None
    return FoldRows(train, val, inner, external_rows(index))


class PlainSource:
    """Loads pairs from the dataset root with :func:`load_pair`; a thread prefetches batches.

    ``rank``/``world``: yield only this rank's share, for a fold trained with DDP over
    ``world`` processes (:mod:`distmsfa.training.distributed`)."""

    def __init__(self, root: str, train: pd.DataFrame, val: pd.DataFrame, batch_size: int, seed: int,
                 prefetch: int = 2, workers: int = 4, inner: pd.DataFrame | None = None,
                 external: pd.DataFrame | None = None, rank: int = 0, world: int = 1) -> None:
        self.rank, self.world = rank, world
        self.root = str(root)
        self.batch_size = batch_size
        self.seed = seed
        self.prefetch = prefetch
        self.workers = workers
        parts = [d for d in (train, val, inner, external) if d is not None]
        self._rows = {r["case_id"]: r for r in pd.concat(parts).to_dict("records")}
        self.train_ids = list(train["case_id"])
        self.val_ids = list(val["case_id"])
        self.inner_ids = [] if inner is None else list(inner["case_id"])
        self.external_ids = [] if external is None else list(external["case_id"])

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
        plan = epoch_plan(self.train_ids, self.seed, epoch, self.batch_size)
        return self._iterate(shard_plan(plan, self.rank, self.world, self.batch_size))

    def _eval_ids(self, ids: Sequence[str]) -> list[str]:
        return shard_ids(val_plan(ids), self.rank, self.world)

    def val_batches(self) -> Iterator[Batch]:
        return self._iterate(self._eval_ids(self.val_ids))

    def inner_batches(self) -> Iterator[Batch]:
        return self._iterate(self._eval_ids(self.inner_ids))

    def external_batches(self) -> Iterator[Batch]:
        return self._iterate(self._eval_ids(self.external_ids))
