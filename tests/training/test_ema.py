"""Weight averaging (``TrainConfig.ema_decay``): the EMA is the hand-computed one, it never
touches training, it is what gets scored and kept, and it survives a resume bit for bit."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from distmsfa.config import ConfigError
from distmsfa.data.index import read_index
from distmsfa.hpo.space import parse_space
from distmsfa.training.batches import PlainSource, fold_rows
from distmsfa.training.config import TrainConfig
from distmsfa.training.ema import WeightEMA, effective_decay
from distmsfa.training.loop import build_model, evaluate, fit_fold, load_state, resolve_runtime, train_steps
from distmsfa.training.speed import make_optimizer

TINY = {"preset": "tiny"}
# selection "last": no inner split, and best.pt is the last epoch's evaluated weights
BASE = dict(model_cfg=TINY, epochs=2, batch_size=4, lr=1e-3, num_threads=1, selection="last")


def _fold0(ds: Path, cfg: TrainConfig) -> PlainSource:
    r = fold_rows(read_index(ds), 0, cfg.selection, cfg.inner_fraction, cfg.inner_seed)
    return PlainSource(str(ds), r.train, r.val, cfg.batch_size, cfg.seed, inner=r.inner, external=r.external)


def _tensors(m: torch.nn.Module) -> list[torch.Tensor]:
    return [*m.parameters(), *m.buffers()]


def _hand_ema(trajectory: list[list[torch.Tensor]], decay: float, warmup: bool) -> list[torch.Tensor]:
    """e_1 = w_1; e_k = d_k e_(k-1) + (1 - d_k) w_k, d_k = min(decay, k / (9 + k)) with warm-up (in float64)."""
    ema = [t.double().clone() for t in trajectory[0]]
    for k, w in enumerate(trajectory[1:], start=2):
        d = min(decay, k / (9.0 + k)) if warmup else decay
        ema = [d * e + (1 - d) * t.double() for e, t in zip(ema, w)]
    return ema


def test_config_checks_the_decay_and_the_search_space_takes_it():
    for bad in (1.0, -0.1, 2, True):
        with pytest.raises(ConfigError, match="ema_decay"):
            TrainConfig(ema_decay=bad)
    with pytest.raises(ConfigError, match="ema_warmup"):
        TrainConfig(ema_decay=0.9, ema_warmup="yes")
    assert TrainConfig().to_dict()["ema_decay"] == 0.0  # recorded in run.json / summary.json like every field
    space = parse_space({"train.ema_decay": {"choice": [0.0, 0.99, 0.999]}}, "msfanet")
    assert space["train.ema_decay"].contains(0.99)


@pytest.mark.parametrize("warmup", [False, True])
def test_evaluated_weights_are_the_hand_computed_ema_of_the_step_trajectory(tiny_dataset, warmup):
    """After 3 optimizer steps, the averaged parameters AND BatchNorm buffers are the EMA of the
    raw weights after each step; evaluating with them swapped in equals evaluating the
    averaged module, and the swap leaves the training weights exactly as they were."""
    cfg = TrainConfig(**{**BASE, "batch_size": 2, "ema_decay": 0.6, "ema_warmup": warmup})
    rt = resolve_runtime("fp32", "cpu")
    torch.manual_seed(0)
    model = build_model(cfg, rt)
    optimizer, _ = make_optimizer(model.param_groups(cfg.weight_decay), cfg.lr, rt.device)
    ema = WeightEMA(model, cfg.ema_decay, cfg.ema_warmup)
    trajectory: list[list[torch.Tensor]] = []
    step = optimizer.step

    def recording_step(*a, **k):
        out = step(*a, **k)
        trajectory.append([t.detach().clone() for t in _tensors(model)])
        return out

    optimizer.step = recording_step
    src = _fold0(tiny_dataset, cfg)
    batches = list(src.train_batches(0))[:3]
    train_steps(model, optimizer, batches, cfg, 0, rt, ema=ema).read()
    assert len(trajectory) == 3 and ema.updates == 3
    want = _hand_ema(trajectory, cfg.ema_decay, warmup)
    for name_t, got, w in zip([n for n, _ in [*model.named_parameters(), *model.named_buffers()]],
                              _tensors(ema.module), want):
        if got.is_floating_point():
            torch.testing.assert_close(got.double(), w, rtol=1e-5, atol=1e-6, msg=name_t)
    # the average is not the raw weights (a decay that is never applied would pass the above only by luck)
    assert any(not torch.equal(a, b) for a, b in zip(_tensors(ema.module), trajectory[-1]) if a.is_floating_point())
    raw = [t.detach().clone() for t in _tensors(model)]
    with ema.swapped(model):
        swapped = evaluate(model, src.val_batches(), rt)
    direct = evaluate(ema.module, src.val_batches(), rt)
    np.testing.assert_array_equal(swapped.prob, direct.prob)
    assert all(torch.equal(a, b) for a, b in zip(raw, _tensors(model)))


def test_effective_decay_warms_up_then_holds():
    assert effective_decay(0.99, 0, True) == pytest.approx(0.1)
    assert effective_decay(0.99, 8, True) == pytest.approx(0.5)
    assert effective_decay(0.99, 10_000, True) == 0.99
    assert effective_decay(0.99, 0, False) == 0.99


def test_ema_never_changes_training_and_is_what_is_scored_and_kept(tiny_dataset, tmp_path):
    """Off: no EMA in last.pt and best.pt holds the raw weights.  On: the training losses are
    bit-identical to the run without it (the swap restores the training weights exactly and
    draws no random numbers), while the validation scores and best.pt are the EMA's."""
    off_cfg = TrainConfig(**BASE)
    on_cfg = off_cfg.replace(ema_decay=0.9)
    off = fit_fold(off_cfg, _fold0(tiny_dataset, off_cfg), 0, out_dir=str(tmp_path / "off"))
    on = fit_fold(on_cfg, _fold0(tiny_dataset, on_cfg), 0, out_dir=str(tmp_path / "on"))
    last_off, best_off = load_state(str(tmp_path / "off" / "last.pt")), load_state(str(tmp_path / "off" / "best.pt"))
    assert "ema" not in last_off
    for k, v in last_off["model"].items():
        assert torch.equal(v, best_off["model"][k]), k
    for a, b in zip(off.history, on.history):
        assert a["train_loss"] == b["train_loss"]
    assert not np.array_equal(off.predictions["prob"].to_numpy(), on.predictions["prob"].to_numpy())
    last_on, best_on = load_state(str(tmp_path / "on" / "last.pt")), load_state(str(tmp_path / "on" / "best.pt"))
    for k, v in last_off["model"].items():  # the raw weights of both runs: the same training
        assert torch.equal(v, last_on["model"][k]), k
    assert last_on["ema"]["updates"] == 2 * 2  # 8 training cases / batch 4, 2 epochs
    assert any(not torch.equal(v, last_on["model"][k]) for k, v in best_on["model"].items() if v.is_floating_point())
    for k, v in last_on["ema"]["model"].items():
        assert torch.equal(v, best_on["model"][k]), k
    # what was scored: the kept weights reproduce the reported validation predictions
    rt = resolve_runtime("fp32", "cpu")
    model = build_model(on_cfg, rt)
    model.load_state_dict(best_on["model"])
    ev = evaluate(model, _fold0(tiny_dataset, on_cfg).val_batches(), rt)
    np.testing.assert_allclose(ev.prob, on.predictions["prob"].to_numpy(), rtol=1e-6)


def test_resume_with_ema_equals_an_uninterrupted_run(tiny_dataset, tmp_path):
    cfg = TrainConfig(**{**BASE, "epochs": 3, "ema_decay": 0.8})
    full = fit_fold(cfg, _fold0(tiny_dataset, cfg), 0, out_dir=str(tmp_path / "full"))
    fit_fold(cfg.replace(epochs=2), _fold0(tiny_dataset, cfg), 0, out_dir=str(tmp_path / "cut"))
    state = load_state(str(tmp_path / "cut" / "last.pt"))
    assert state["epoch"] == 1 and state["ema"]["updates"] == 4
    resumed = fit_fold(cfg, _fold0(tiny_dataset, cfg), 0, out_dir=str(tmp_path / "cut"), resume=state)
    assert resumed.resumed_from_epoch == 1
    for a, b in zip(full.history, resumed.history):
        for k in ("train_loss", "val_loss", "val_auc"):
            assert a[k] == b[k] or (np.isnan(a[k]) and np.isnan(b[k])), (k, a["epoch"])
    np.testing.assert_array_equal(full.predictions["prob"], resumed.predictions["prob"])
    ema_full = load_state(str(tmp_path / "full" / "last.pt"))["ema"]
    ema_cut = load_state(str(tmp_path / "cut" / "last.pt"))["ema"]
    assert ema_full["updates"] == ema_cut["updates"] == 6
    for k, v in ema_full["model"].items():
        assert torch.equal(v, ema_cut["model"][k]), k


def test_resume_of_a_checkpoint_without_ema_starts_the_average_from_its_weights(tiny_dataset, tmp_path, monkeypatch):
    """A last.pt written with EMA off, resumed with it on: the average of one is the checkpoint's
    raw weights, then the resumed epoch's steps are averaged in (warm-up counting from 1)."""
    import distmsfa.training.loop as loop

    seen: list[list[torch.Tensor]] = []

    class Recording(WeightEMA):
        def update(self, model):
            super().update(model)
            seen.append([t.detach().clone() for t in _tensors(model)])

    monkeypatch.setattr(loop, "WeightEMA", Recording)
    cfg = TrainConfig(**BASE)
    fit_fold(cfg.replace(epochs=1), _fold0(tiny_dataset, cfg), 0, out_dir=str(tmp_path / "run"))
    state = load_state(str(tmp_path / "run" / "last.pt"))
    assert "ema" not in state and not seen
    on = cfg.replace(ema_decay=0.9)
    fit_fold(on, _fold0(tiny_dataset, on), 0, out_dir=str(tmp_path / "run"), resume=state)
    after = load_state(str(tmp_path / "run" / "last.pt"))
    assert after["ema"]["updates"] == 1 + 2 and len(seen) == 2  # the start, then epoch 1's two steps
    rt = resolve_runtime("fp32", "cpu")
    model = build_model(on, rt)
    model.load_state_dict(state["model"])
    want = _hand_ema([[t.detach().clone() for t in _tensors(model)], *seen], 0.9, warmup=True)
    model.load_state_dict(after["ema"]["model"])
    for got, w in zip(_tensors(model), want):
        if got.is_floating_point():
            torch.testing.assert_close(got.double(), w, rtol=1e-5, atol=1e-6)
