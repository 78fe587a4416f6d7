"""The Ray-free loop: order, augmentation, resume, configs, profiles, every model for one epoch."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from distmsfa.config import ConfigError
from distmsfa.data.index import read_index
from distmsfa.models import list_models
from distmsfa.training.augment import augment_batch
from distmsfa.training.batches import PlainSource, epoch_plan, fold_rows
from distmsfa.training.config import AugmentConfig, CVConfig, TrainConfig
from distmsfa.training.loop import fit_fold, load_state
from distmsfa.training.profiles import PROFILES

REPO = Path(__file__).resolve().parents[2]
TINY = {"preset": "tiny"}


def test_epoch_plan_is_a_seeded_permutation_per_epoch():
    ids = [f"c{i}" for i in range(13)]
    p0 = epoch_plan(ids, seed=1, epoch=0, batch_size=4)
    assert p0 == epoch_plan(list(reversed(ids)), seed=1, epoch=0, batch_size=4)  # input order is irrelevant
    assert len(p0) == 12 and set(p0) < set(ids)  # 13 % 4 == 1: the lone last case is dropped (BatchNorm)
    assert p0 != epoch_plan(ids, seed=1, epoch=1, batch_size=4)
    assert p0 != epoch_plan(ids, seed=2, epoch=0, batch_size=4)
    assert sorted(epoch_plan(ids, 1, 0, batch_size=5)) == sorted(ids)  # nothing dropped when the tail is >1


def test_augment_same_geometry_for_both_sequences_and_seeded():
    g = torch.Generator().manual_seed(0)
    vol = torch.rand(3, 1, 6, 24, 20, generator=g)
    x = torch.cat([vol, vol], 1)
    cfg = AugmentConfig(flip_prob=0.5, rotate_deg=15, scale=0.1, intensity_scale=0.0, intensity_shift=0.0)
    a = augment_batch(x, cfg, seed=3, epoch=1, step=2)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a[:, 0], a[:, 1])  # identical warp of T1 and FS
    assert not torch.allclose(a, x)
    assert torch.equal(a, augment_batch(x, cfg, seed=3, epoch=1, step=2))
    assert not torch.equal(a, augment_batch(x, cfg, seed=3, epoch=1, step=3))
    jit = augment_batch(x, AugmentConfig(), seed=0, epoch=0, step=0)
    assert float(jit.min()) >= 0.0 and float(jit.max()) <= 1.0


def test_augment_pure_flip_is_a_left_right_flip():
    x = torch.rand(2, 2, 4, 8, 10)
    cfg = AugmentConfig(flip_prob=1.0, rotate_deg=0.0, scale=0.0, intensity_scale=0.0, intensity_shift=0.0)
    assert torch.allclose(augment_batch(x, cfg, 0, 0, 0), torch.flip(x, dims=[4]), atol=1e-5)
    assert torch.equal(augment_batch(x, AugmentConfig(enabled=False), 0, 0, 0), x)


def test_augment_translate_moves_both_sequences_within_the_range():
    x = torch.zeros(2, 2, 3, 20, 20)
    x[:, :, :, 8:12, 8:12] = 1.0  # a centred square in both sequences
    pure = dict(flip_prob=0.0, rotate_deg=0.0, scale=0.0, intensity_scale=0.0, intensity_shift=0.0)
    moved = augment_batch(x, AugmentConfig(translate=0.2, **pure), seed=1, epoch=0, step=0)
    assert torch.equal(moved[:, 0], moved[:, 1])  # one shift for T1 and FS
    com = lambda v, ax: float((v.sum(dim=tuple(i for i in range(3) if i != ax)) * torch.arange(v.shape[ax])).sum() / v.sum())
    shifts = [(com(moved[i, 0], 1) - 9.5, com(moved[i, 0], 2) - 9.5) for i in range(2)]
    assert all(abs(s) <= 0.2 * 20 + 0.5 for pair in shifts for s in pair)  # within +-20 % of the extent
    assert max(abs(s) for pair in shifts for s in pair) > 0.5  # and it did move
    assert abs(float(moved[0, 0].sum()) - float(x[0, 0].sum())) < 1e-3 * float(x[0, 0].sum()) + 1e-3  # stayed inside
    with pytest.raises(ConfigError, match="translate"):
        AugmentConfig(translate=0.5)


def test_configs_refuse_bad_values_with_a_fix():
    with pytest.raises(ConfigError, match="batch_size"):
        TrainConfig(batch_size=1)
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig(precision="fp16")
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ConfigError, match="folds"):
        CVConfig(folds=(0, 0))
    cfg = TrainConfig.from_dict({"augment": {"rotate_deg": 5}, "model_cfg": TINY})
    assert isinstance(cfg.augment, AugmentConfig) and cfg.augment.rotate_deg == 5
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_profiles_match_tune_configs_and_load():
    for name, prof in PROFILES.items():
        with open(REPO / "tune_configs" / f"{name}.yaml", encoding="utf-8") as fh:
            assert yaml.safe_load(fh) == prof, f"tune_configs/{name}.yaml differs from the embedded profile"
        TrainConfig.from_dict(prof["train"])
        CVConfig.from_dict(prof["cv"])
        if "search" in prof or "tune" in prof:  # a study profile: its search space and settings check too
            from distmsfa.hpo import load_study

            load_study(name)
    paper = TrainConfig.from_dict(PROFILES["paper"]["train"])
    assert (paper.epochs, paper.batch_size, paper.lr, paper.weight_decay) == (300, 6, 1e-4, 1e-4)


def _fold0(ds: Path, cfg: TrainConfig):
    r = fold_rows(read_index(ds), 0, cfg.selection, cfg.inner_fraction, cfg.inner_seed)
    return PlainSource(str(ds), r.train, r.val, cfg.batch_size, cfg.seed, inner=r.inner, external=r.external)


def test_resume_from_last_checkpoint_equals_an_uninterrupted_run(tiny_dataset, tmp_path):
    cfg = TrainConfig(model_cfg=TINY, epochs=3, batch_size=4, lr=1e-3, num_threads=1)
    full = fit_fold(cfg, _fold0(tiny_dataset, cfg), 0, out_dir=str(tmp_path / "full"))
    short = fit_fold(cfg.replace(epochs=2), _fold0(tiny_dataset, cfg), 0, out_dir=str(tmp_path / "cut"))
    assert len(short.history) == 2
    state = load_state(str(tmp_path / "cut" / "last.pt"))
    assert state["epoch"] == 1
    resumed = fit_fold(cfg, _fold0(tiny_dataset, cfg), 0, out_dir=str(tmp_path / "cut"), resume=state)
    assert resumed.resumed_from_epoch == 1 and len(resumed.history) == 3
    for a, b in zip(full.history, resumed.history):
        for k in ("train_loss", "val_loss", "val_auc"):
            assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-7, nan_ok=True), (k, a["epoch"])
    np.testing.assert_allclose(full.predictions["prob"], resumed.predictions["prob"], rtol=1e-6)
    assert (tmp_path / "cut" / "best.pt").exists()


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_survives_one_cpu_epoch(name, tiny_dataset):
    cfg = TrainConfig(model=name, model_cfg=TINY, epochs=1, batch_size=4, num_threads=1)
    res = fit_fold(cfg, _fold0(tiny_dataset, cfg), 0)
    h = res.history[0]
    assert math.isfinite(h["train_loss"]) and math.isfinite(h["val_loss"])
    assert "train_w_fuse" in h  # the loss's logged weights reach the epoch metrics
    assert set(res.predictions["case_id"]) == set(_fold0(tiny_dataset, cfg).val_ids)
    assert res.predictions["prob"].between(0, 1).all()
