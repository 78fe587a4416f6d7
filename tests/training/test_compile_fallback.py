"""compile: auto survives a failing torch.compile (issue 14's H100 run hit pytorch/pytorch#171622:
inductor's conv-backward meta kernel mispredicts a stride and the compiled *backward* fails);
compile: on says how to fix it in one line.

The failures here are real compiler failures, not mocks: a custom op whose fake (meta) kernel
fails, so dynamo's tracing raises (a forward that merely raises while
``torch.compiler.is_compiling()`` does not do: dynamo breaks the graph and runs that frame
eagerly), and a custom op whose fake kernel predicts the wrong strides - the same kind of bug
as #171622 - so inductor's generated backward fails its stride assertion at run time, after
the compiled forward already updated BatchNorm's running statistics and drew dropout masks."""
from __future__ import annotations

import copy
import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

from distmsfa.models import registry
from distmsfa.models.base import MultiSequenceModel
from distmsfa.training.config import TrainConfig
from distmsfa.training.loop import Runtime, evaluate, fit_fold, resolve_runtime, train_epoch
from distmsfa.training.speed import UPSTREAM_ISSUE, CompiledModel, CompileError

CPU = Runtime(torch.device("cpu"), None, channels_last=False)
LOGGER = "distmsfa.training"


@torch.library.custom_op("distmsfa_test::grad_copy", mutates_args=())
def _grad_copy(g: torch.Tensor) -> torch.Tensor:
    return g.contiguous().clone()  # the real kernel returns a row-major (B, F) ...


@_grad_copy.register_fake
def _(g):
    return g.new_empty_strided(g.shape, (1, g.shape[0]))  # ... its fake kernel predicts column-major


@torch.library.custom_op("distmsfa_test::no_fake", mutates_args=())
def _no_fake(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


@_no_fake.register_fake
def _(x):
    raise RuntimeError("this op cannot be traced")  # dynamo: TorchRuntimeError


_no_fake.register_autograd(lambda ctx, g: g)


@torch.library.custom_op("distmsfa_test::ident", mutates_args=())
def _ident(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


@_ident.register_fake
def _(x):
    return torch.empty_like(x)


_ident.register_autograd(lambda ctx, g: torch.ops.distmsfa_test.grad_copy(g))


class _Bce(nn.Module):
    def forward(self, out, y):
        return nn.functional.binary_cross_entropy_with_logits(out["fuse"], y), {}


class _Small(MultiSequenceModel):
    """A small model of the registry's contract (BatchNorm, dropout) that compiles badly:
    ``fails`` = "trace" (dynamo cannot trace it), "fake" (the compiled backward fails at run
    time, inductor only), "always" (a genuine error, compiled or not), None (compiles)."""

    def __init__(self, fails: str | None = "trace") -> None:
        super().__init__(loss=_Bce())
        self.fails = fails
        self.conv = nn.Conv3d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm3d(4)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(4, 1)

    def forward(self, x):
        if self.fails == "always":
            raise ValueError("a genuine error, compiled or not")
        h = self.drop(torch.relu(self.bn(self.conv(x))).mean((2, 3, 4)))
        if self.fails == "trace":
            h = torch.ops.distmsfa_test.no_fake(h)
        if self.fails == "fake":
            h = torch.ops.distmsfa_test.ident(h)
        return {"fuse": self.fc(h)[:, 0]}


def _batches(n_batches=3, b=3, shape=(2, 4, 8, 8), seed=0):
    g = np.random.default_rng(seed)
    return [{"case_id": [f"c{i * b + k}" for k in range(b)], "x": g.random((b, *shape), dtype=np.float32),
             "label": np.array([(i + k) % 2 for k in range(b)], dtype=np.float32)} for i in range(n_batches)]


def _train(model, cfg, epochs, compiled=None):
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    out = []
    for e in range(epochs):
        torch.manual_seed(100 + e)  # dropout, as fit_fold seeds each epoch
        out.append(train_epoch(model, opt, _batches(seed=e), cfg, e, CPU, compiled=compiled)["train_loss"])
    return out


def _one_warning(caplog) -> str:
    recs = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(recs) == 1, [r.getMessage() for r in recs]  # once per run, not per step or epoch
    msg = recs[0].getMessage()
    assert "\n" not in msg and UPSTREAM_ISSUE in msg and "--compile off" in msg
    return msg


@pytest.mark.parametrize("fails,backend", [("trace", "eager"),
                                           pytest.param("fake", "inductor", marks=pytest.mark.slow)])
def test_auto_falls_back_to_eager_with_an_eager_runs_numbers(fails, backend, caplog):
    cfg = TrainConfig(batch_size=3, lr=1e-2, compile="auto")
    torch.manual_seed(0)
    ref = _Small(fails)
    model = copy.deepcopy(ref)
    torch._dynamo.reset()
    guard = CompiledModel(model, "auto", backend=backend)
    # no cached inductor code: the cache key does not cover the fake kernel, which must run
    with torch._inductor.config.patch(force_disable_caches=True), caplog.at_level(logging.WARNING, logger=LOGGER):
        got = _train(model, cfg, 2, compiled=guard)
        ev = evaluate(model, _batches(seed=9), CPU, compiled=guard, pad_to_size=3)
    want = _train(ref, cfg, 2)  # eager throughout: the numbers the fallback must reproduce
    assert got == pytest.approx(want, rel=1e-6, abs=1e-7)
    for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values()):  # incl. BN running stats
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=k)
    torch.testing.assert_close(torch.as_tensor(ev.prob), torch.as_tensor(evaluate(ref, _batches(seed=9), CPU).prob))
    assert not guard.active and guard.fallback == _one_warning(caplog)
    assert "train step" in guard.fallback and ("TorchRuntimeError" in guard.fallback if fails == "trace"
                                               else "AssertionError: expected size" in guard.fallback)


def test_an_evaluation_that_fails_to_compile_falls_back_too(caplog):
    torch.manual_seed(0)
    model = _Small("trace")
    guard = CompiledModel(model, "auto", backend="eager")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        ev = evaluate(model, _batches(n_batches=2), CPU, compiled=guard, pad_to_size=3)
    want = evaluate(model, _batches(n_batches=2), CPU)
    np.testing.assert_array_equal(ev.prob, want.prob)
    assert "eval step" in _one_warning(caplog)


def test_on_raises_one_line_that_says_how_to_fix_it():
    torch.manual_seed(0)
    model = _Small("trace")
    guard = CompiledModel(model, "on", backend="eager")
    with pytest.raises(CompileError) as err:
        _train(model, TrainConfig(batch_size=3, compile="on"), 1, compiled=guard)
    msg = str(err.value)
    assert "\n" not in msg and "compile: off" in msg and "--compile off" in msg and UPSTREAM_ISSUE in msg
    assert isinstance(err.value.__cause__, Exception)  # dynamo's own error stays in the traceback


def test_a_genuine_error_is_not_blamed_on_the_compiler(caplog):
    torch.manual_seed(0)
    model = _Small("always")
    guard = CompiledModel(model, "auto", backend="eager")
    with caplog.at_level(logging.WARNING, logger=LOGGER), pytest.raises(ValueError, match="a genuine error"):
        _train(model, TrainConfig(batch_size=3), 1, compiled=guard)
    assert guard.active and not [r for r in caplog.records if r.name == LOGGER]


def test_a_step_that_compiles_stays_compiled(caplog):
    torch.manual_seed(0)
    model = _Small(None)
    guard = CompiledModel(model, "auto", backend="eager")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        losses = _train(model, TrainConfig(batch_size=3, lr=1e-2), 2, compiled=guard)
    assert guard.active and all(math.isfinite(v) for v in losses) and guard._proven == {"train"}
    assert not [r for r in caplog.records if r.name == LOGGER]


@pytest.mark.slow
def test_fit_fold_compile_on_fails_with_the_fix(tmp_path, monkeypatch):
    from tests.training._tiny import make_tiny_dataset
    from tests.training.test_speed import _source

    monkeypatch.setitem(registry._REGISTRY, "compile_breaker", lambda **kw: _Small("trace"))
    ds = make_tiny_dataset(tmp_path / "data", n=8)
    cfg = TrainConfig(model="compile_breaker", model_cfg={}, epochs=1, batch_size=2, num_threads=1, selection="val",
                      compile="on")
    torch._dynamo.reset()
    with pytest.raises(CompileError, match=r"train\.compile: off \(distmsfa cv --compile off\)"):
        fit_fold(cfg, _source(ds, cfg, 0), 0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_auto_trains_the_tiny_preset_that_hit_171622(caplog):
    """The H100 run: the tiny preset at 4x16x16 reaches a 1x1x1 feature map, where the compiled
    conv backward failed.  compile: auto must train on (compiled if torch fixed the bug, else
    eager after one warning) and end with the numbers of a finite, working run."""
    from distmsfa.training.loop import build_model
    from tests.training.test_speed import _batches as tiny_batches

    cfg = TrainConfig(model_cfg={"preset": "tiny"}, batch_size=3, lr=1e-3, compile="auto")
    rt = resolve_runtime("auto", "cuda")
    torch.manual_seed(0)
    model = build_model(cfg, rt)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    torch._dynamo.reset()
    guard = CompiledModel(model, "auto")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for e in range(2):
            m = train_epoch(model, opt, tiny_batches((3, 3, 3, 3)), cfg, e, rt, compiled=guard)
            assert m["train_samples"] == 12 and math.isfinite(m["train_loss"])
        ev = evaluate(model, tiny_batches((3, 2)), rt, compiled=guard, pad_to_size=3)
    assert np.isfinite(ev.prob).all() and len(ev.prob) == 5
    if guard.fallback is not None:
        assert _one_warning(caplog) == guard.fallback
    print("compile fallback:", guard.fallback)  # -s shows whether #171622 still fires


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_the_bundle_inference_path_shares_the_fallback(mode, caplog):
    from distmsfa.bundle.predictor import make_fold_fn, run_models

    torch.manual_seed(0)
    models = [_Small("trace").eval() for _ in range(2)]  # two "folds" that dynamo cannot trace
    x = torch.rand(2, 2, 4, 8, 8)
    want = run_models(models, x, CPU)  # eager
    torch._dynamo.reset()
    fold_fn = make_fold_fn(True, mode)
    if mode == "on":
        with pytest.raises(CompileError, match=r"compile='off' \(distmsfa evaluate --compile off\)"):
            run_models(models, x, CPU, fold_fn=fold_fn, pad_to=3)
        return
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        got = run_models(models, x, CPU, fold_fn=fold_fn, pad_to=3)
        again = run_models(models, x, CPU, fold_fn=fold_fn, pad_to=3)  # eager now, no second warning
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    np.testing.assert_array_equal(again[0], got[0])
    assert "inference step" in _one_warning(caplog) and fold_fn.guard.fallback is not None


@pytest.mark.slow
def test_cli_cv_compile_on_is_one_error_line(tiny_dataset, tmp_path, monkeypatch):
    import typer
    from typer.testing import CliRunner

    from distmsfa.cli.cv import cv

    monkeypatch.setitem(registry._REGISTRY, "compile_breaker", lambda **kw: _Small("trace"))
    app = typer.Typer()
    app.command("cv")(cv)
    app.command("noop")(lambda: None)
    torch._dynamo.reset()
    r = CliRunner().invoke(app, ["cv", "--data", str(tiny_dataset), "--model", "compile_breaker", "--plain",
                                 "--profile", "cpu", "--folds", "0", "--compile", "on", "--out", str(tmp_path / "run")])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert "torch.compile failed" in lines[0] and "--compile off" in lines[0]
