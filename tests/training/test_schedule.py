"""Learning-rate schedules: the curve, the config checks, and resume along the same curve."""
from __future__ import annotations

import pytest

from distmsfa.config import ConfigError
from distmsfa.training.config import TrainConfig
from distmsfa.training.loop import fit_fold, load_state
from distmsfa.training.schedule import lr_factor

from tests.training.test_training_loop import TINY, _fold0


def test_constant_is_the_default_and_flat():
    cfg = TrainConfig(epochs=5)
    assert cfg.lr_schedule == "constant" and cfg.warmup_epochs == 0
    assert [lr_factor(cfg, e) for e in range(5)] == [1.0] * 5


def test_warmup_then_cosine_to_the_floor():
    cfg = TrainConfig(epochs=12, lr_schedule="cosine", warmup_epochs=2, min_lr_ratio=0.1)
    f = [lr_factor(cfg, e) for e in range(12)]
    assert f[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])  # linear warm-up, then the peak
    assert all(a > b for a, b in zip(f[2:], f[3:]))  # strictly decreasing after the warm-up
    assert 0.1 < f[-1] < 0.15  # the last epoch is close to lr * min_lr_ratio
    const = TrainConfig(epochs=6, warmup_epochs=2)  # warm-up also precedes 'constant'
    assert [lr_factor(const, e) for e in range(6)] == pytest.approx([1 / 3, 2 / 3, 1, 1, 1, 1])


def test_schedule_config_errors_say_what_to_use():
    with pytest.raises(ConfigError, match="lr_schedule"):
        TrainConfig(lr_schedule="linear")
    with pytest.raises(ConfigError, match="warmup_epochs"):
        TrainConfig(epochs=3, warmup_epochs=3)
    with pytest.raises(ConfigError, match="min_lr_ratio"):
        TrainConfig(min_lr_ratio=1.5)


class _Stop(Exception):
    pass


class _StopAfter:
    """A reporter that interrupts the run after an epoch (last.pt of that epoch is written)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch(self, fold, metrics, state, is_best):
        if metrics["epoch"] == self.epoch:
            raise _Stop


def test_cosine_run_follows_the_curve_and_resumes_on_it(tiny_dataset, tmp_path):
    cfg = TrainConfig(model_cfg=TINY, epochs=4, batch_size=4, lr=1e-3, lr_schedule="cosine", warmup_epochs=1,
                      num_threads=1)
    full = fit_fold(cfg, _fold0(tiny_dataset, cfg), 0, out_dir=str(tmp_path / "full"))
    assert [h["lr"] for h in full.history] == pytest.approx([1e-3 * lr_factor(cfg, e) for e in range(4)])
    cut = tmp_path / "cut"
    with pytest.raises(_Stop):
        fit_fold(cfg, _fold0(tiny_dataset, cfg), 0, out_dir=str(cut), reporter=_StopAfter(1))
    state = load_state(str(cut / "last.pt"))
    assert state["epoch"] == 1 and "scheduler" in state
    resumed = fit_fold(cfg, _fold0(tiny_dataset, cfg), 0, out_dir=str(cut), resume=state)
    assert len(resumed.history) == 4
    for a, b in zip(full.history, resumed.history):  # same lr curve, same training after the cut
        for k in ("lr", "train_loss", "val_loss"):
            assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-7), (k, a["epoch"])
    # A checkpoint without scheduler state (written before schedules existed) resumes on the curve too.
    old = {k: v for k, v in state.items() if k != "scheduler"}
    again = fit_fold(cfg, _fold0(tiny_dataset, cfg), 0, out_dir=str(tmp_path / "old"), resume=old)
    assert [h["lr"] for h in again.history] == pytest.approx([h["lr"] for h in full.history])
