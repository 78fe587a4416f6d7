"""The Ray-free training loop: one fold, epoch by epoch.  The plain run and the Ray Train
worker call :func:`fit_fold` with different :class:`~distmsfa.training.batches.BatchSource`
and :class:`Reporter` objects; everything else is this code."""
from __future__ import annotations

import contextlib
import copy
import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Protocol

import numpy as np
import pandas as pd
import torch

from distmsfa.evaluation.metrics import binary_metrics
from distmsfa.training.augment import augment_batch
from distmsfa.training.batches import Batch, BatchSource
from distmsfa.training.config import TrainConfig
from distmsfa.training.distributed import DistContext, gather_predictions, reduce_train_metrics
from distmsfa.training.ema import WeightEMA
from distmsfa.training.schedule import make_scheduler
from distmsfa.training.speed import (CompiledModel, CompileTracker, DevicePrefetcher, EpochSums, fixed_size,
                                     make_optimizer, pad_to, sum_logs, use_compile)

BEST_FILE = "best.pt"
LAST_FILE = "last.pt"


class Reporter(Protocol):
    """Receives every epoch's metrics and the full training state (to checkpoint it)."""

    def on_epoch(self, fold: int, metrics: dict[str, float], state: dict[str, Any], is_best: bool) -> None: ...


@dataclass
class Runtime:
    device: torch.device
    amp_dtype: Optional[torch.dtype]  # None = fp32
    channels_last: bool


@dataclass
class EvalOutput:
    case_ids: list[str]
    labels: np.ndarray
    prob: np.ndarray  # model.predict_proba: the prediction used for metrics
    head_probs: dict[str, np.ndarray]
    loss: float

    def frame(self, fold: int) -> pd.DataFrame:
        df = pd.DataFrame({"case_id": self.case_ids, "fold": fold, "label": self.labels.astype(int), "prob": self.prob})
        for h, p in self.head_probs.items():
            df[f"prob_{h}"] = p
        return df


@dataclass
class FoldResult:
    fold: int
    history: list[dict[str, float]]
    best_epoch: int
    best_metrics: dict[str, float]
    predictions: pd.DataFrame  # validation predictions of the selected checkpoint (cfg.selection)
    resumed_from_epoch: int = -1  # epoch of the checkpoint this run resumed from (-1 = fresh)
    # "best_val" (optimistic), "last", "inner" -> {"epoch", "metrics", "predictions"}
    estimates: dict[str, dict[str, Any]] = field(default_factory=dict)
    external: Optional[pd.DataFrame] = None  # the selected checkpoint on the external site
    selection: str = "val"
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_runtime(precision: str, device: str | torch.device | None = None) -> Runtime:
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        amp = None if precision == "fp32" else torch.bfloat16
        return Runtime(dev, amp, channels_last=True)
    return Runtime(dev, torch.bfloat16 if precision == "bf16" else None, channels_last=False)


def build_model(cfg: TrainConfig, rt: Runtime) -> torch.nn.Module:
    from distmsfa.models import registry

    from distmsfa.models.device import prepare_for_device

    model = registry.create_model(cfg.model, **cfg.model_cfg)
    fmt = torch.channels_last_3d if rt.channels_last else torch.contiguous_format
    return prepare_for_device(model, rt.device, memory_format=fmt)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _autocast(rt: Runtime):
    if rt.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(rt.device.type, dtype=rt.amp_dtype)


def to_device(batch: Batch, rt: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.as_tensor(batch["x"])
    y = torch.as_tensor(batch["label"]).float()
    if x.dim() != 5 or x.shape[1] != 2:
        raise ValueError(f"batch x must be (B, 2, D, H, W) with channels (T1, FS), got {tuple(x.shape)}")
    x = x.to(rt.device, non_blocking=True).float()
    return x, y.to(rt.device, non_blocking=True)


def _forward(model, x: torch.Tensor, rt: Runtime) -> dict[str, torch.Tensor]:
    """Model heads as float32 logits: the layout and autocast of ``rt`` applied to ``x``."""
    if rt.channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    with _autocast(rt):
        out = model(x)
    return {k: v.float() for k, v in out.items()}


def train_steps(model, optimizer, batches: Iterable[Batch], cfg: TrainConfig, epoch: int, rt: Runtime, *,
                compiled: Optional[CompiledModel | torch.nn.Module] = None, tracker: Optional[CompileTracker] = None,
                net: Optional[torch.nn.Module] = None, dist: Optional[DistContext] = None,
                ema: Optional[WeightEMA] = None) -> EpochSums:
    """The steps of one training epoch, without a single host sync: the loss and log sums
    stay on the device (read them with ``.read()``), and so does the non-finite-loss
    check (the epoch fails when read, naming the first bad step).  ``compiled``: the
    :class:`CompiledModel` to run the steps with (a bare ``torch.compile``-d ``model`` is
    taken as ``mode='on'``); a short last batch is then dropped (fixed shapes, see
    ``TrainConfig.compile``); a failing compiled step falls back to eager or raises.
    ``net``: the module the steps run through when not compiled (DDP around ``model`` on
    several ranks; default ``model``); ``dist``: this rank's place in the fold's DDP group
    (distinct augmentation draws).  ``ema``: updated from ``model`` after every optimizer step."""
    model.train()
    eager = model if net is None else net
    guard = None if compiled is None else CompiledModel.of(compiled, model)
    tracker = tracker or CompileTracker(False)
    if guard is not None:
        batches = fixed_size(batches, cfg.batch_size)
    feed = DevicePrefetcher(batches, rt.device)
    n = 0
    dev_sums: dict[str, torch.Tensor] = {}
    host_sums: dict[str, float] = {}
    bad = torch.full((2,), -1.0, dtype=torch.float64, device=rt.device)
    for step, (_, x, y) in enumerate(feed):
        tracker.begin()
        x = augment_batch(x, cfg.augment, cfg.seed, epoch, _aug_step(step, dist))

        def forward_backward(n, x=x, y=y):
            loss, logs = model.loss(_forward(n, x, rt), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            return loss, logs

        if guard is None:
            loss, logs = forward_backward(eager)
        else:
            loss, logs = guard.step("train", forward_backward, eager, optimizer)
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        if ema is not None:
            ema.update(model)
        tracker.end(rt.device)
        b = int(y.shape[0])
        lv = loss.detach()
        first_bad = (bad[0] < 0) & ~torch.isfinite(lv)
        bad = torch.where(first_bad, torch.stack([torch.full_like(lv, step).double(), lv.double()]), bad)
        sum_logs({"__loss": lv, **logs}, b, dev_sums, host_sums)
        n += b
    return EpochSums(epoch, cfg.batch_size, guard is not None, n, dev_sums, host_sums, bad, feed.wait_s)


def train_epoch(model, optimizer, batches: Iterable[Batch], cfg: TrainConfig, epoch: int, rt: Runtime, *,
                compiled: Optional[CompiledModel | torch.nn.Module] = None, tracker: Optional[CompileTracker] = None,
                net: Optional[torch.nn.Module] = None, dist: Optional[DistContext] = None,
                ema: Optional[WeightEMA] = None) -> dict[str, float]:
    """One training epoch's metrics (this rank's): :func:`train_steps`, then one device->host transfer."""
    return train_steps(model, optimizer, batches, cfg, epoch, rt, compiled=compiled, tracker=tracker, net=net,
                       dist=dist, ema=ema).read()


def _aug_step(step: int, dist: Optional[DistContext]) -> int:
    """Augmentation draw index of a step: distinct per rank (ranks see different cases)."""
    return step if dist is None else step * dist.world_size + dist.rank


@torch.no_grad()
def evaluate(model, batches: Iterable[Batch], rt: Runtime, what: str = "validation",
             allow_empty: bool = False, *, compiled: Optional[CompiledModel | torch.nn.Module] = None,
             pad_to_size: Optional[int] = None, tracker: Optional[CompileTracker] = None,
             dist: Optional[DistContext] = None) -> Optional[EvalOutput]:
    """Predictions and mean loss over ``batches``; the device results come to the host in one
    transfer at the end.  ``pad_to_size``: short batches are padded to it (copies of their
    last case, outputs discarded) so a ``compiled`` model sees one shape.  Scored with
    ``model`` (or its compiled form), never the DDP wrapper: ranks may hold different numbers
    of batches.  With ``dist``, ``batches`` are this rank's share and every rank's
    predictions are gathered (case_id order) before anything is computed."""
    model.eval()
    guard = None if compiled is None else CompiledModel.of(compiled, model)
    tracker = tracker or CompileTracker(False)
    ids: list[str] = []
    labels, probs, heads = [], [], {}
    total = torch.zeros((), dtype=torch.float64, device=rt.device)
    for batch, x, y in DevicePrefetcher(batches, rt.device):
        n = int(x.shape[0])
        if pad_to_size is not None:
            x, _, n = pad_to(x, y, pad_to_size)
        tracker.begin()
        if guard is None:
            out = _forward(model, x, rt)
        else:
            out = guard.step("eval", lambda n, x=x: _forward(n, x, rt), model)
        tracker.end(rt.device)
        out = {k: v[:n] for k, v in out.items()}
        loss, _ = model.loss(out, y)
        total = total + loss.detach().double() * n
        ids.extend(str(c) for c in batch["case_id"])
        labels.append(y.float())
        probs.append(model.predict_proba(out).float())
        for k, v in out.items():
            heads.setdefault(k, []).append(torch.sigmoid(v).float())
    m = len(ids)
    if m:
        parts = [torch.cat(labels), torch.cat(probs)] + [torch.cat(v) for v in heads.values()]
        flat = torch.cat([p.double() for p in parts] + [total.view(1)]).cpu().numpy()  # the one transfer
        cols = [flat[i * m:(i + 1) * m].astype(np.float32) for i in range(len(parts))]
        lab, prob, hd, loss_sum = cols[0], cols[1], dict(zip(heads, cols[2:])), float(flat[-1])
    else:
        lab, prob, hd, loss_sum = np.zeros(0, np.float32), np.zeros(0, np.float32), {}, 0.0
    if dist is not None:
        ids, lab, prob, hd, loss_sum = gather_predictions(dist.all_gather, ids, lab, prob, hd, loss_sum)
    if not ids:
        if allow_empty:
            return None
        raise ValueError(f"the {what} set yielded no batch")
    return EvalOutput(ids, lab, prob, hd, loss_sum / len(ids))


def _better(auc: float, loss: float, best_auc: float, best_loss: float) -> bool:
    a = -math.inf if math.isnan(auc) else auc
    b = -math.inf if math.isnan(best_auc) else best_auc
    return a > b or (a == b and loss < best_loss)


def _atomic_save(obj: Any, path: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


@contextlib.contextmanager
def _torch_settings(cfg: TrainConfig, rt: Runtime):
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_threads = torch.get_num_threads()
    prev_bench = torch.backends.cudnn.benchmark
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    det = cfg.deterministic if cfg.deterministic is not None else rt.device.type == "cpu"
    if det:
        torch.use_deterministic_algorithms(True, warn_only=True)
    elif rt.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest conv kernels once
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev_det, warn_only=True)
        torch.set_num_threads(prev_threads)
        torch.backends.cudnn.benchmark = prev_bench


def plain_state_dict(sd: dict[str, Any]) -> dict[str, Any]:
    """``sd`` without torch.compile's ``_orig_mod.`` key prefix (a state dict taken from a
    compiled module loads into the plain one)."""
    return {k.replace("_orig_mod.", ""): v for k, v in sd.items()}


def load_state(path: str) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


def _rank_offset(dist: Optional[DistContext]) -> int:
    return 0 if dist is None else 7919 * dist.rank


SELECTED_ESTIMATE = {"val": "best_val", "inner": "inner", "last": "last"}


def _optional_batches(source: Any, name: str):
    fn = getattr(source, name, None)
    return None if fn is None else fn()


def _frame_records(ev: EvalOutput, fold: int) -> dict[str, list]:
    return ev.frame(fold).to_dict("list")


def fit_fold(cfg: TrainConfig, source: BatchSource, fold: int, *, out_dir: str | None = None,
             reporter: Reporter | None = None, resume: dict[str, Any] | None = None,
             device: str | torch.device | None = None, save_last_every_epoch: bool = True,
             dist: Optional[DistContext] = None) -> FoldResult:
    """Train one fold for ``cfg.epochs`` epochs; evaluate on the validation fold every epoch
    (and on the inner selection split with ``selection: inner``).

    Three estimates are kept (docs/evaluation.md): the validation predictions at the best
    validation epoch (``best_val``, optimistic), at the last epoch (``last``), and at the
    best inner-split epoch (``inner``).  The selection rule ``cfg.selection`` names the one
    reported as the fold's result, whose weights are ``best.pt`` (ties on AUC broken by
    the lower loss); after training it also scores the source's external cases, if any.

    ``out_dir``: where ``best.pt`` and ``last.pt`` (full state, written every epoch unless
    ``save_last_every_epoch=False``, then at the end) go.  ``resume``: a state dict as
    handed to the reporter / saved in last.pt; the run continues at the epoch after it, and
    is bit-identical to an uninterrupted run on CPU because every epoch reseeds from
    ``(seed, epoch)``.

    ``dist``: this process is one rank of the fold's DDP group (:mod:`distmsfa.training.distributed`):
    ``source`` yields this rank's shard, metrics are the whole fold's (gathered), and only
    rank 0 should be given ``out_dir`` and a writing ``reporter``."""
    rt = resolve_runtime(cfg.precision, device)
    use_inner = cfg.selection == "inner"
    if use_inner and not hasattr(source, "inner_batches"):
        raise ValueError("selection 'inner' needs a source with an inner split (batches.fold_rows(..., selection='inner'))")
    with _torch_settings(cfg, rt):
        seed_everything(cfg.seed)
        model = build_model(cfg, rt)
        optimizer, opt_impl = make_optimizer(model.param_groups(cfg.weight_decay), cfg.lr, rt.device)
        scheduler = make_scheduler(optimizer, cfg)
        net = model if dist is None else dist.wrap(model, rt.device)
        # EMA of the weights (cfg.ema_decay > 0): every rank keeps one; DDP keeps the parameters
        # equal on all ranks, and its buffers are made rank 0's by sync_state after each epoch,
        # so every rank evaluates (and rank 0 checkpoints) the same averaged weights.
        ema = WeightEMA(model, cfg.ema_decay, cfg.ema_warmup) if cfg.ema_decay > 0 else None
        history: list[dict[str, float]] = []
        best = {"auc": math.nan, "loss": math.inf, "epoch": -1}  # by the fold's validation cases
        best_inner = {"auc": math.nan, "loss": math.inf, "epoch": -1}  # by the inner split
        preds: dict[str, list[dict[str, Any]]] = {}  # estimate -> validation predictions
        sel_weights: dict[str, Any] | None = None
        start, resumed_from = 0, -1
        if resume is not None:
            model.load_state_dict(plain_state_dict(resume["model"]))
            optimizer.load_state_dict(resume["optimizer"])
            if "scheduler" in resume:
                scheduler.load_state_dict(resume["scheduler"])
            else:  # a checkpoint from before schedules: the factor is a function of the epoch
                with warnings.catch_warnings():  # "step() before optimizer.step()": intended here
                    warnings.simplefilter("ignore", UserWarning)
                    for _ in range(int(resume["epoch"]) + 1):
                        scheduler.step()
            history = list(resume["history"])
            best = dict(resume["best"])
            best_inner = dict(resume.get("best_inner", best_inner))
            preds = dict(resume.get("preds", {}))
            resumed_from = int(resume["epoch"])
            start = resumed_from + 1
            if ema is not None:
                if resume.get("ema") is not None:
                    ema.load_state_dict(resume["ema"])
                else:  # a checkpoint written without EMA: the average starts from its weights
                    ema.start_from(model)
            sel_weights = resume.get("best_model")
            if sel_weights is None and out_dir and os.path.exists(os.path.join(out_dir, BEST_FILE)):
                sel_weights = load_state(os.path.join(out_dir, BEST_FILE))["model"]
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
        # The compiled module shares ``model``'s parameters; checkpoints are always taken
        # from ``model`` itself, so their keys carry no ``_orig_mod.`` prefix.  Training steps
        # run through DDP on several ranks: the wrapper is compiled there (torch's DDP-aware
        # compile), the module itself otherwise; evaluation runs the plain module, compiled.
        # A failing compiled step: eager from then on (auto) or a one-line error (on).
        compile_on = use_compile(cfg.compile, rt.device)
        compiled = (CompiledModel(model, "on" if cfg.compile == "on" else "auto", train_net=net, dist=dist is not None)
                    if compile_on else None)
        tracker = CompileTracker(compile_on)
        fast = {"compiled": compiled, "tracker": tracker}
        pad = cfg.batch_size if compile_on else None
        for epoch in range(start, cfg.epochs):
            graphs0, compile0 = tracker.snapshot()
            t0 = time.perf_counter()
            torch.manual_seed(cfg.seed * 1_000_003 + epoch + _rank_offset(dist))  # dropout etc.: same on resume
            tr = train_epoch(model, optimizer, source.train_batches(epoch), cfg, epoch, rt, net=net, dist=dist,
                             ema=ema, **fast)
            if dist is not None:
                tr = reduce_train_metrics(dist.all_gather(tr))
                dist.sync_state(model)  # every rank scores with rank 0's BatchNorm statistics
                if ema is not None:
                    dist.sync_state(ema.module)  # and so does the EMA
            t_train = time.perf_counter() - t0
            # Scored and kept below: the EMA's weights when on, swapped into ``model`` (its
            # compiled / DDP views stay valid) and swapped out before the checkpoint.  Not a
            # ``with`` block: an exception ends the fit, and the weights left in ``model`` then.
            scoring = contextlib.nullcontext() if ema is None else ema.swapped(model)
            scoring.__enter__()
            lr_used = float(optimizer.param_groups[0]["lr"])
            scheduler.step()  # the next epoch's lr; stepped before the checkpoint below
            ev = evaluate(model, source.val_batches(), rt, pad_to_size=pad, dist=dist, **fast)
            m = binary_metrics(ev.labels, ev.prob, cfg.threshold_value)
            metrics = {"fold": float(fold), "epoch": float(epoch), **{f"val_{k}": v for k, v in m.items()},
                       "val_loss": ev.loss}
            if use_inner:
                iv = evaluate(model, source.inner_batches(), rt, pad_to_size=pad, dist=dist, **fast,
                              what="inner selection (build the source from batches.fold_rows(..., selection='inner'))")
                im = binary_metrics(iv.labels, iv.prob, cfg.threshold_value)
                metrics.update({f"inner_{k}": v for k, v in im.items()}, inner_loss=iv.loss)
            metrics.update({**tr, "lr": lr_used,
                            "epoch_time_s": time.perf_counter() - t0,
                            "epoch_end_unix": time.time(),  # wall clock: lines up folds run at once
                            "train_samples_per_s": tr["train_samples"] / max(t_train, 1e-9),
                            "resumed_from_epoch": float(resumed_from),
                            # per epoch: graphs built and the wall time of the steps that built
                            # them; after the first epoch both stay 0 (no recompiles)
                            "compile_graphs": float(tracker.graphs - graphs0),
                            "compile_s": tracker.compile_s - compile0})
            history.append(metrics)
            records = {"records": _frame_records(ev, fold), "loss": ev.loss}
            preds["last"] = records
            if _better(m["auc"], ev.loss, best["auc"], best["loss"]):
                best = {"auc": m["auc"], "loss": ev.loss, "epoch": epoch}
                preds["best_val"] = records
            if use_inner and _better(metrics["inner_auc"], metrics["inner_loss"], best_inner["auc"], best_inner["loss"]):
                best_inner = {"auc": metrics["inner_auc"], "loss": metrics["inner_loss"], "epoch": epoch}
                preds["inner"] = records
            sel_epoch = {"val": best["epoch"], "inner": best_inner["epoch"], "last": epoch}[cfg.selection]
            is_best = sel_epoch == epoch
            if is_best:
                sel_weights = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
                if out_dir and (cfg.selection != "last" or epoch == cfg.epochs - 1):
                    _atomic_save({"model": sel_weights, "epoch": epoch, "metrics": metrics, "config": cfg.to_dict(),
                                  "fold": fold, "selection": cfg.selection}, os.path.join(out_dir, BEST_FILE))
            scoring.__exit__(None, None, None)  # the training weights again
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "epoch": epoch,
                     "history": history, "best": best, "best_inner": best_inner, "preds": preds,
                     "config": cfg.to_dict(), "fold": fold}
            if ema is not None:
                state["ema"] = ema.state_dict()
            if not out_dir:
                state["best_model"] = sel_weights
            last = out_dir and (save_last_every_epoch or epoch == cfg.epochs - 1)
            if last:
                _atomic_save(state, os.path.join(out_dir, LAST_FILE))
            if reporter is not None:
                reporter.on_epoch(fold, metrics, state, is_best)
        if out_dir and not os.path.exists(os.path.join(out_dir, LAST_FILE)) and resume is not None:
            _atomic_save(resume, os.path.join(out_dir, LAST_FILE))
        epochs = {"best_val": int(best["epoch"]), "last": len(history) - 1, "inner": int(best_inner["epoch"])}
        estimates: dict[str, dict[str, Any]] = {}
        for key, rec in preds.items():
            df = pd.DataFrame(rec["records"])
            mm = {**binary_metrics(df["label"], df["prob"], cfg.threshold_value), "loss": rec["loss"]}
            estimates[key] = {"epoch": epochs[key], "metrics": mm, "predictions": df}
        external = None
        if sel_weights is not None:
            model.load_state_dict(plain_state_dict(sel_weights))
        if dist is not None:  # a resumed rank > 0 may not hold the selected weights: rank 0's count
            dist.sync_state(model, buffers_only=False)
        key = SELECTED_ESTIMATE[cfg.selection]
        if key not in estimates:  # resumed from a checkpoint written before the estimates were kept
            ev = evaluate(model, source.val_batches(), rt, pad_to_size=pad, dist=dist, **fast)
            estimates[key] = {"epoch": epochs[key], "predictions": ev.frame(fold),
                              "metrics": {**binary_metrics(ev.labels, ev.prob, cfg.threshold_value), "loss": ev.loss}}
        chosen = estimates[key]
        ext_batches = _optional_batches(source, "external_batches")
        if ext_batches is not None:
            xe = evaluate(model, ext_batches, rt, what="external", allow_empty=True, pad_to_size=pad, dist=dist, **fast)
            external = None if xe is None else xe.frame(fold)
        speed = {"compile": compile_on, "optimizer": opt_impl, "device": str(rt.device),
                 # why compile: auto went eager mid-run (None: it did not)
                 "compile_fallback": None if compiled is None else compiled.fallback,
                 # this run's epochs and final scoring (a resumed fold: since the resume)
                 "compile_s": tracker.compile_s, "compile_graphs": tracker.graphs,
                 "compile_s_all_epochs": float(sum(h.get("compile_s", 0.0) or 0.0 for h in history))}
        return FoldResult(fold, history, int(chosen["epoch"]), dict(chosen["metrics"]), chosen["predictions"],
                          resumed_from, estimates=estimates, external=external, selection=cfg.selection,
                          extra={"speed": speed})
