"""The single-GPU fast path (issue 14): device-side epoch sums equal the old per-step host
sums, the prefetcher's order, evaluation padding, compile without recompiles and with
resume; on a GPU, no host sync inside a training epoch."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from distmsfa.data.index import read_index
from distmsfa.models import create_model
from distmsfa.training.augment import augment_batch
from distmsfa.training.batches import PlainSource, fold_rows
from distmsfa.training.config import TrainConfig
from distmsfa.training.loop import (LAST_FILE, Runtime, evaluate, fit_fold, load_state, resolve_runtime,
                                    train_epoch, train_steps)
from distmsfa.training.speed import CompiledModel, DevicePrefetcher, fixed_size, make_optimizer, pad_to, use_compile
from tests.training._tiny import make_tiny_dataset

TINY = {"preset": "tiny"}
CPU = Runtime(torch.device("cpu"), None, channels_last=False)


def _batches(sizes=(3, 3, 2), shape=(2, 4, 16, 16), seed=0):
    g = np.random.default_rng(seed)
    out, i = [], 0
    for b in sizes:
        out.append({"case_id": [f"c{i + k}" for k in range(b)],
                    "x": g.random((b, *shape), dtype=np.float32).astype(np.float16),
                    "label": np.array([(i + k) % 2 for k in range(b)], dtype=np.float32)})
        i += b
    return out


# --- what the loop computed before issue 14 (per-step host reads), kept as the reference ---

def _old_train_epoch(model, optimizer, batches, cfg, epoch):
    model.train()
    total, n, logs_sum = 0.0, 0, {}
    for step, batch in enumerate(batches):
        x = torch.as_tensor(batch["x"]).float()
        y = torch.as_tensor(batch["label"]).float()
        x = augment_batch(x, cfg.augment, cfg.seed, epoch, step)
        out = {k: v.float() for k, v in model(x).items()}
        loss, logs = model.loss(out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        b = int(y.shape[0])
        total += float(loss.detach()) * b
        n += b
        for k, v in logs.items():
            logs_sum[k] = logs_sum.get(k, 0.0) + float(v) * b
    return {"train_loss": total / n, "train_samples": float(n), **{f"train_{k}": v / n for k, v in logs_sum.items()}}


@torch.no_grad()
def _old_evaluate(model, batches):
    model.eval()
    probs, total, n = [], 0.0, 0
    for batch in batches:
        x, y = torch.as_tensor(batch["x"]).float(), torch.as_tensor(batch["label"]).float()
        out = {k: v.float() for k, v in model(x).items()}
        total += float(model.loss(out, y)[0]) * int(y.shape[0])
        n += int(y.shape[0])
        probs.append(model.predict_proba(out).numpy())
    return np.concatenate(probs), total / n


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["hybrid", "equal"])
def test_epoch_metrics_equal_the_per_step_host_computation(loss):
    cfg = TrainConfig(model_cfg={**TINY, "loss": loss}, batch_size=3, lr=1e-3, epochs=2)
    models, opts = [], []
    for _ in range(2):
        torch.manual_seed(0)
        m = create_model("msfanet", **cfg.model_cfg)
        models.append(m)
        opts.append(torch.optim.Adam(m.param_groups(cfg.weight_decay), lr=cfg.lr))
    batches = _batches()
    for epoch in range(2):
        torch.manual_seed(epoch)
        old = _old_train_epoch(models[0], opts[0], batches, cfg, epoch)
        torch.manual_seed(epoch)
        new = train_epoch(models[1], opts[1], batches, cfg, epoch, CPU)
        assert set(old) <= set(new) and {"train_w_fuse", "train_loss_fuse"} <= set(new)
        for k, v in old.items():
            assert new[k] == pytest.approx(v, rel=1e-6, abs=1e-9), (epoch, k)
    prob_old, loss_old = _old_evaluate(models[0], batches)
    ev = evaluate(models[1], batches, CPU)
    np.testing.assert_allclose(ev.prob, prob_old, rtol=1e-6, atol=1e-7)
    assert ev.loss == pytest.approx(loss_old, rel=1e-6)
    assert ev.case_ids == [c for b in batches for c in b["case_id"]] and ev.labels.dtype == np.float32


def test_evaluation_padding_changes_no_prediction():
    torch.manual_seed(0)
    m = create_model("msfanet", **TINY)
    batches = _batches((3, 3, 1))
    plain = evaluate(m, batches, CPU)
    padded = evaluate(m, batches, CPU, pad_to_size=3)
    assert padded.case_ids == plain.case_ids and len(padded.prob) == 7
    np.testing.assert_allclose(padded.prob, plain.prob, rtol=1e-5, atol=1e-6)
    for h in plain.head_probs:
        np.testing.assert_allclose(padded.head_probs[h], plain.head_probs[h], rtol=1e-5, atol=1e-6)
    assert padded.loss == pytest.approx(plain.loss, rel=1e-5)
    x, y, n = pad_to(torch.rand(2, 2, 2, 4, 4), torch.tensor([0.0, 1.0]), 5)
    assert n == 2 and x.shape[0] == 5 and torch.equal(x[2:], x[1:2].expand(3, -1, -1, -1, -1))
    assert y.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0]


def test_a_nonfinite_loss_fails_the_epoch_naming_the_first_bad_step():
    torch.manual_seed(0)
    m = create_model("msfanet", **TINY)
    opt = torch.optim.Adam(m.param_groups(0.0), lr=1e-3)
    batches = _batches((3, 3, 3))
    batches[1]["x"][0, 0, 0, 0, 0] = np.nan
    sums = train_steps(m, opt, batches, TrainConfig(model_cfg=TINY, batch_size=3), 4, CPU)  # no raise yet: no sync
    with pytest.raises(FloatingPointError, match="epoch 4 step 1: loss is nan"):
        sums.read()


def test_prefetcher_yields_every_batch_in_order_on_cpu():
    batches = _batches((3, 2, 3, 1))
    pulled = []

    def source():
        for b in batches:
            pulled.append(b["case_id"][0])
            yield b

    feed = DevicePrefetcher(source(), torch.device("cpu"))
    seen = []
    for i, (b, x, y) in enumerate(feed):
        assert b is batches[i] and len(pulled) == i + 1  # CPU: a pass-through, nothing read ahead
        assert x.dtype == torch.float32 and torch.equal(x, torch.as_tensor(batches[i]["x"]).float())
        assert torch.equal(y, torch.as_tensor(batches[i]["label"]))
        seen.extend(b["case_id"])
    assert seen == [f"c{i}" for i in range(9)] and feed.wait_s >= 0.0
    assert list(DevicePrefetcher(iter([]), torch.device("cpu"))) == []
    with pytest.raises(ValueError, match=r"\(B, 2, D, H, W\)"):
        next(DevicePrefetcher([{"case_id": ["a"], "x": np.zeros((1, 3, 2, 2, 2)), "label": [0.0]}], torch.device("cpu")))
    assert [len(b["case_id"]) for b in fixed_size(batches, 3)] == [3, 3]


def test_compile_modes_and_optimizer_choice():
    assert use_compile("auto", torch.device("cpu")) is False and use_compile("auto", torch.device("cuda")) is True
    assert use_compile("on", torch.device("cpu")) is True and use_compile("off", torch.device("cuda")) is False
    assert TrainConfig.from_dict({"compile": False}).compile == "off"  # YAML reads a bare `off` as false
    _, impl = make_optimizer([torch.nn.Parameter(torch.zeros(2))], 1e-3, torch.device("cpu"))
    assert impl == "default"


def _source(ds: Path, cfg: TrainConfig, fold: int):
    r = fold_rows(read_index(ds), fold, cfg.selection)
    return PlainSource(str(ds), r.train, r.val, cfg.batch_size, cfg.seed, external=r.external)


class _GraphsPerEpoch:
    """Reads dynamo's graph counter after every epoch and keeps the first epoch's state."""

    def __init__(self):
        self.graphs, self.first_state = [], None

    def on_epoch(self, fold, metrics, state, is_best):
        from torch._dynamo.utils import counters

        self.graphs.append(int(counters["stats"]["unique_graphs"]))
        assert not any("_orig_mod." in k for k in state["model"])  # checkpoints of the plain module
        if self.first_state is None:  # what last.pt held after epoch 1 (as a stopped fold leaves it)
            self.first_state = copy.deepcopy(state)


@pytest.mark.slow
def test_compiled_fold_two_epochs_no_recompile_and_resume(tmp_path):
    # 15 cases: fold 1 trains on 8 (batch 3: 3, 3 and a short 2, dropped) and validates on 7
    # (3, 3 and a short 1, padded); 2 external cases (padded).
    ds = make_tiny_dataset(tmp_path / "data", n=15)
    cfg = TrainConfig(model_cfg=TINY, epochs=2, batch_size=3, lr=1e-3, num_threads=1, selection="val", compile="on")
    torch._dynamo.reset()
    rep = _GraphsPerEpoch()
    res = fit_fold(cfg, _source(ds, cfg, 1), 1, out_dir=str(tmp_path / "full"), reporter=rep)
    h0, h1 = res.history
    assert h0["compile_graphs"] >= 2 and h0["compile_s"] > 0  # a training and an evaluation graph
    assert h1["compile_graphs"] == 0 and h1["compile_s"] == 0  # no recompile in epoch 2 ...
    assert rep.graphs[1] == rep.graphs[0]  # ... by dynamo's own counter too
    assert h0["train_samples"] == h1["train_samples"] == 6  # the short batch was dropped
    assert len(res.predictions) == 7 and res.external is not None and len(res.external) == 2
    sp = res.extra["speed"]
    assert sp["compile"] is True and sp["compile_s"] >= h0["compile_s"] and sp["optimizer"] == "default"
    state = load_state(str(tmp_path / "full" / LAST_FILE))
    assert not any("_orig_mod." in k for k in state["model"])

    # the fold stopped after epoch 1 and resumed, compiled, from that state
    resumed = fit_fold(cfg, _source(ds, cfg, 1), 1, out_dir=str(tmp_path / "cut"), resume=rep.first_state)
    assert resumed.resumed_from_epoch == 0 and len(resumed.history) == 2
    for k in ("train_loss", "val_loss"):
        assert resumed.history[1][k] == pytest.approx(h1[k], rel=1e-4), k
    assert math.isfinite(resumed.best_metrics["loss"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("compile_mode", ["off", "on"])
def test_gpu_training_epoch_never_syncs_the_host(compile_mode):
    cfg = TrainConfig(model_cfg=TINY, batch_size=3, lr=1e-3, compile=compile_mode)
    rt = resolve_runtime("auto", "cuda")
    from distmsfa.training.loop import build_model

    torch.manual_seed(0)
    model = build_model(cfg, rt)
    opt, impl = make_optimizer(model.param_groups(cfg.weight_decay), cfg.lr, rt.device)
    assert impl in ("fused", "foreach")
    # one guard for both epochs, as fit_fold keeps it (its first-step snapshot is then behind us)
    compiled = CompiledModel(model, "on") if compile_mode == "on" else None
    # 8x32x32, not 4x16x16: the tiny preset's deepest feature map stays 2x2x2 (at 1x1x1 the
    # compiled conv backward hits pytorch/pytorch#171622; tests/training/test_compile_fallback.py)
    batches = _batches((3, 3, 3, 3), shape=(2, 8, 32, 32))
    train_epoch(model, opt, batches, cfg, 0, rt, compiled=compiled)  # warm-up: compile, cudnn autotune
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        sums = train_steps(model, opt, batches, cfg, 1, rt, compiled=compiled)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    m = sums.read()  # the epoch's one transfer
    assert m["train_samples"] == 12 and math.isfinite(m["train_loss"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_prefetcher_copies_one_batch_ahead():
    batches = _batches((3, 2, 3))
    pulled = []

    def source():
        for b in batches:
            pulled.append(b["case_id"][0])
            yield b

    feed = DevicePrefetcher(source(), torch.device("cuda"))
    assert len(pulled) == 1  # the first copy is enqueued at construction
    for i, (b, x, y) in enumerate(feed):
        assert len(pulled) == min(i + 2, len(batches))  # batch i+1 is on its way while i runs
        assert x.is_cuda and x.dtype == torch.float32
        torch.testing.assert_close(x.cpu(), torch.as_tensor(batches[i]["x"]).float())
        assert y.cpu().tolist() == batches[i]["label"].tolist()
    assert i == len(batches) - 1
