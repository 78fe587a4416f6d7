"""Honest CV estimates: the inner selection split, the three labelled estimates, and the
external site scored by every fold model."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from distmsfa.config import ConfigError
from distmsfa.data.index import read_index
from distmsfa.training import run_cv
from distmsfa.training.batches import PlainSource, fold_rows, inner_split
from distmsfa.training.config import TrainConfig
from distmsfa.training.loop import fit_fold, load_state

TINY = {"preset": "tiny"}


def _index(n_patients: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = int(p % 3 == 0)
        for k in range(1 + int(rng.random() < 0.3)):  # some patients scanned twice
            rows.append({"case_id": f"c{p:03d}_{k}", "patient_id": f"p{p:03d}", "label": label, "fold": p % 4,
                         "is_external": False})
    for e in range(4):
        rows.append({"case_id": f"x{e}", "patient_id": f"x{e}", "label": e % 2 if e < 3 else pd.NA,
                     "fold": pd.NA, "is_external": True})
    df = pd.DataFrame(rows)
    df["label"] = df["label"].astype("Int8")
    df["fold"] = df["fold"].astype("Int8")
    return df


def test_inner_split_is_patient_grouped_stratified_seeded_and_never_touches_validation():
    idx = _index()
    for fold in range(4):
        r = fold_rows(idx, fold, "inner", 0.25, inner_seed=3)
        val_p, tr_p, in_p = (set(d["patient_id"]) for d in (r.val, r.train, r.inner))
        assert not (in_p & val_p) and not (in_p & tr_p) and not (tr_p & val_p)
        assert set(r.inner["case_id"]).isdisjoint(r.val["case_id"])
        assert (r.inner["fold"] != fold).all() and (r.val["fold"] == fold).all()
        # the inner split and the remaining training rows are the fold's training rows
        whole = idx[~idx["is_external"] & (idx["fold"] != fold)]
        assert sorted(r.inner["case_id"]) == sorted(set(whole["case_id"]) - set(r.train["case_id"]))
        # stratified: each class loses about the same share of its patients
        for lab in (0, 1):
            n_all = whole[whole["label"] == lab]["patient_id"].nunique()
            n_in = r.inner[r.inner["label"] == lab]["patient_id"].nunique()
            assert n_in == max(1, round(0.25 * n_all))
        assert list(r.external["case_id"]) == ["x0", "x1", "x2"]  # labelled external cases only
    a = fold_rows(idx, 0, "inner", 0.25, 3).inner  # same seed -> same split, whatever the row order
    shuffled = fold_rows(idx.sample(frac=1, random_state=1), 0, "inner", 0.25, 3).inner
    assert set(shuffled["case_id"]) == set(a["case_id"])
    assert set(fold_rows(idx, 0, "inner", 0.25, 4).inner["case_id"]) != set(a["case_id"])
    assert fold_rows(idx, 0, "val").inner.empty


def test_inner_split_refuses_a_class_with_one_patient():
    idx = _index(8)
    idx.loc[idx["label"] == 1, "label"] = 0
    idx.loc[idx["case_id"].str.startswith("c000"), "label"] = 1
    with pytest.raises(ValueError, match="inner split"):
        inner_split(idx[~idx["is_external"]], 0.2, 0)
    with pytest.raises(ConfigError, match="selection"):
        TrainConfig(selection="best")


def _source(ds, cfg, index=None):
    r = fold_rows(index if index is not None else read_index(ds), 0, cfg.selection, cfg.inner_fraction, cfg.inner_seed)
    return PlainSource(str(ds), r.train, r.val, cfg.batch_size, cfg.seed, inner=r.inner, external=r.external), r


def test_inner_selection_ignores_the_validation_labels(tiny_dataset, tmp_path):
    cfg = TrainConfig(model_cfg=TINY, epochs=4, batch_size=4, lr=3e-3, num_threads=1, selection="inner",
                      inner_fraction=0.25)
    src, rows = _source(tiny_dataset, cfg)
    res = fit_fold(cfg, src, 0, out_dir=str(tmp_path / "a"))
    hist = pd.DataFrame(res.history)
    assert {"inner_auc", "inner_loss", "val_auc"} <= set(hist.columns)
    assert set(res.estimates) == {"best_val", "last", "inner"}
    # best.pt is the inner-selected epoch; the optimistic estimate is the max of the val curve
    best = load_state(str(tmp_path / "a" / "best.pt"))
    assert best["epoch"] == res.best_epoch == res.estimates["inner"]["epoch"] and best["selection"] == "inner"
    inner_best = hist.sort_values(["inner_auc", "inner_loss"], ascending=[False, True]).iloc[0]["epoch"]
    assert res.best_epoch == int(inner_best)
    assert res.estimates["best_val"]["metrics"]["auc"] == pytest.approx(hist["val_auc"].max())
    assert res.estimates["last"]["epoch"] == 3
    assert res.predictions.equals(res.estimates["inner"]["predictions"])
    # the external site is scored by the selected checkpoint
    assert sorted(res.external["case_id"]) == sorted(rows.external["case_id"]) and res.external["prob"].between(0, 1).all()

    # flip the validation labels: the inner-selected epoch and its weights cannot change
    idx = read_index(tiny_dataset)
    flip = idx["fold"].eq(0).fillna(False).astype(bool)
    idx.loc[flip, "label"] = 1 - idx.loc[flip, "label"]
    src2, _ = _source(tiny_dataset, cfg, idx)
    res2 = fit_fold(cfg, src2, 0, out_dir=str(tmp_path / "b"))
    assert res2.best_epoch == res.best_epoch
    np.testing.assert_allclose(res2.predictions["prob"], res.predictions["prob"], rtol=1e-6)
    np.testing.assert_allclose(res2.external["prob"], res.external["prob"], rtol=1e-6)


def test_cv_summary_labels_every_estimate_and_scores_the_external_site(tiny_dataset, tmp_path):
    from rich.console import Console

    con = Console(record=True, width=200)
    res = run_cv(tiny_dataset, "msfanet", profile="cpu", out=tmp_path / "run", plain=True, progress=False,
                 overrides={"epochs": 2, "num_threads": 1, "inner_fraction": 0.25}, console=con)
    s = json.loads((tmp_path / "run" / "summary.json").read_text(encoding="utf-8"))
    assert s["selection"] == "inner" and s["estimate"] == "inner" and "honest" in s["estimate_label"]
    assert set(s["estimates"]) == {"best_val", "last", "inner"}
    assert "OPTIMISTIC" in s["estimates"]["best_val"]["label"]
    assert s["estimates"]["inner"]["mean"] == pytest.approx(s["mean"], nan_ok=True)
    for f in ("0", "1"):  # (a) is the best val AUC of the fold's curve
        h = res.histories[int(f)]
        assert s["estimates"]["best_val"]["folds"][f]["auc"] == pytest.approx(h["val_auc"].max())
        assert s["estimates"]["last"]["folds"][f]["auc"] == pytest.approx(h["val_auc"].iloc[-1])
    ext = pd.read_csv(tmp_path / "run" / "external_predictions.csv", dtype={"case_id": str})
    assert list(ext.columns) == ["case_id", "label", "prob_fold0", "prob_fold1", "prob"]
    assert sorted(ext["case_id"]) == ["c016", "c017"]
    np.testing.assert_allclose(ext["prob"], ext[["prob_fold0", "prob_fold1"]].mean(axis=1))
    assert s["external"]["n_cases"] == 2 and set(s["external"]["folds"]) == {"0", "1"}
    for f in (0, 1):
        per = pd.read_csv(tmp_path / "run" / "folds" / f"fold{f}" / "external_predictions.csv", dtype={"case_id": str})
        np.testing.assert_allclose(per.sort_values("case_id")["prob"], ext[f"prob_fold{f}"], rtol=1e-6)
    text = con.export_text()
    assert "OPTIMISTIC" in text and "inner-selected" in text and "fold ensemble" in text
