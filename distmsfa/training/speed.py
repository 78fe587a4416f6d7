"""The single-GPU fast path of the training loop (issue 14), Ray-free and in one place:

* :func:`use_compile` - ``TrainConfig.compile`` (auto|on|off) resolved for a device.
* :class:`CompileTracker` - how many graphs torch.compile built, and the wall time of the
  steps that built them, so a fold reports its compile cost and a recompile shows.
* :func:`fixed_size` / :func:`pad_to` - the fixed batch shapes a compiled model needs.
* :class:`DevicePrefetcher` - the next batch's host->GPU copy (pinned memory, a side
  stream) issued before the current step runs; on CPU a plain pass-through.
* :func:`sum_logs` / :class:`EpochSums` - an epoch's loss and log sums kept on the device,
  read in one transfer at the epoch's end (no host sync per step).
* :func:`make_optimizer` - Adam, fused on CUDA where torch has the fused kernel.
* :class:`CompiledModel` - the compiled model with a way out: under ``compile: auto`` a
  failing compiled step falls back to eager for the rest of the run (one warning line);
  under ``compile: on`` it raises :class:`CompileError`, one line that says how to fix it.

Tensor contract of a device batch: ``x`` float32 ``(B, 2, D, H, W)`` channels (T1, FS) on
the device, ``y`` float32 ``(B,)`` in {0, 1} on the device; the host batch dict rides along
(its ``case_id`` list is what evaluation needs).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional

import torch

from distmsfa.training.batches import Batch

#: what a prefetcher yields: (host batch, x on the device, y on the device)
DeviceBatch = tuple[Batch, torch.Tensor, torch.Tensor]


def use_compile(mode: str, device: torch.device) -> bool:
    """``on``/``off`` as given; ``auto`` = on for CUDA only."""
    if mode == "auto":
        return device.type == "cuda"
    return mode == "on"


def _graph_count() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class CompileTracker:
    """Counts the graphs dynamo builds around a step and times the steps that built one.

    ``torch.compile`` compiles lazily, at the first call with a new shape, mode (train /
    eval, grad / no-grad) or autocast state; such a step's wall time is almost all compile
    time (seconds to minutes against milliseconds), so ``compile_s`` = the wall time of the
    steps during which the graph count grew.  ``graphs`` counts them; after the first epoch
    (one training and one evaluation graph set) it must stay flat - a rise is a recompile."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.graphs = 0
        self.compile_s = 0.0
        self._t = 0.0
        self._n = 0

    def begin(self) -> None:
        if self.enabled:
            self._n = _graph_count()
            self._t = time.perf_counter()

    def end(self, sync: Optional[torch.device] = None) -> None:
        if not self.enabled:
            return
        grew = _graph_count() - self._n
        if grew > 0:
            if sync is not None and sync.type == "cuda":
                torch.cuda.synchronize(sync)  # only on a compiling step: the first of a shape
            self.graphs += grew
            self.compile_s += time.perf_counter() - self._t

    def snapshot(self) -> tuple[int, float]:
        return self.graphs, self.compile_s


def fixed_size(batches: Iterable[Batch], batch_size: int) -> Iterator[Batch]:
    """Training batches of exactly ``batch_size`` cases: a short batch (the epoch's last) is
    dropped, so a compiled model never sees a second shape (see TrainConfig ``compile``)."""
    for b in batches:
        if len(b["case_id"]) == batch_size:
            yield b


def pad_to(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Pad a short evaluation batch to ``batch_size`` with copies of its last case.

    Returns ``(x, y, n)``, ``n`` = the real cases (the first ``n`` outputs).  In eval mode
    every case's output depends on that case alone (BatchNorm uses running statistics), so
    the padding changes nothing of the real cases' outputs."""
    n = int(x.shape[0])
    if n >= batch_size:
        return x, y, n
    k = batch_size - n
    x = torch.cat([x, x[-1:].expand(k, *x.shape[1:])]).contiguous(memory_format=_fmt(x))
    return x, torch.cat([y, y[-1:].expand(k)]), n


def _fmt(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous():
        return torch.channels_last_3d
    return torch.contiguous_format


def _check(x: torch.Tensor) -> None:
    if x.dim() != 5 or x.shape[1] != 2:
        raise ValueError(f"batch x must be (B, 2, D, H, W) with channels (T1, FS), got {tuple(x.shape)}")


class DevicePrefetcher:
    """Iterate host batches as device batches, one batch ahead.

    On CUDA, when batch ``i`` is handed out, batch ``i+1`` has already been fetched from
    the source, pinned and its copy enqueued (``non_blocking``) on a side stream, so the
    copy overlaps step ``i``'s kernels.  Before a batch is handed out the compute stream
    waits for the side stream (``wait_stream``: the copy is complete before any kernel
    reads it) and the tensors are marked as used by the compute stream (``record_stream``:
    the caching allocator does not reuse their memory for a later copy while step ``i``'s
    kernels may still read them).  ``wait_s`` is the host time spent waiting for the
    source (the loop's ``data_wait_s``).  On CPU a pass-through: ``torch.as_tensor`` +
    ``float()``, as the loop always did."""

    def __init__(self, batches: Iterable[Batch], device: torch.device) -> None:
        self.device = torch.device(device)
        self._it = iter(batches)
        self.wait_s = 0.0
        self._cuda = self.device.type == "cuda"
        self._stream = torch.cuda.Stream(self.device) if self._cuda else None
        self._next: Optional[DeviceBatch] = None
        self._done = False
        if self._cuda:
            self._preload()

    def _fetch(self) -> Optional[Batch]:
        t = time.perf_counter()
        try:
            return next(self._it)
        except StopIteration:
            return None
        finally:
            self.wait_s += time.perf_counter() - t

    def _host(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.as_tensor(batch["x"])
        _check(x)
        return x, torch.as_tensor(batch["label"])

    def _preload(self) -> None:
        batch = self._fetch()
        if batch is None:
            self._next, self._done = None, True
            return
        x, y = self._host(batch)
        x = x if x.is_pinned() else x.pin_memory()
        y = y if y.is_pinned() else y.pin_memory()
        assert self._stream is not None
        with torch.cuda.stream(self._stream):
            xd = x.to(self.device, non_blocking=True).float()
            yd = y.to(self.device, non_blocking=True).float()
        self._next = (batch, xd, yd)

    def __iter__(self) -> "DevicePrefetcher":
        return self

    def __next__(self) -> DeviceBatch:
        if not self._cuda:
            batch = self._fetch()
            if batch is None:
                raise StopIteration
            x, y = self._host(batch)
            return batch, x.to(self.device).float(), y.to(self.device).float()
        if self._done and self._next is None:
            raise StopIteration
        assert self._next is not None and self._stream is not None
        cur = torch.cuda.current_stream(self.device)
        cur.wait_stream(self._stream)
        batch, x, y = self._next
        x.record_stream(cur)
        y.record_stream(cur)
        self._preload()  # the next copy is enqueued before this step's kernels
        return batch, x, y


def sum_logs(logs: dict[str, Any], b: int, dev: dict[str, torch.Tensor], host: dict[str, float]) -> None:
    """Add ``logs`` (weighted by the batch size ``b``) to the running sums: tensor values on
    their device, in float64 (the same arithmetic as summing ``float(v) * b`` on the host)."""
    for k, v in (logs or {}).items():
        if torch.is_tensor(v):
            v = v.detach().double() * b
            dev[k] = v if k not in dev else dev[k] + v
        else:
            host[k] = host.get(k, 0.0) + float(v) * b


def _read_once(named: dict[str, torch.Tensor]) -> dict[str, float]:
    """All device scalars to the host in one transfer (one sync)."""
    if not named:
        return {}
    values = torch.stack([v.reshape(()).double() for v in named.values()]).cpu().tolist()
    return dict(zip(named, values))


@dataclass
class EpochSums:
    """A training epoch's sums, still on the device (:func:`train_steps`); :meth:`read`
    brings them to the host in one transfer and returns the epoch's metrics."""

    epoch: int
    batch_size: int
    compiled: bool
    n: int
    dev: dict[str, torch.Tensor]
    host: dict[str, float]
    bad: torch.Tensor  # (first step with a non-finite loss or -1, that loss)
    wait_s: float

    def read(self) -> dict[str, float]:
        if self.n == 0:
            hint = (f" (compile is on: batches shorter than batch_size={self.batch_size} are dropped)"
                    if self.compiled else "")
            raise ValueError(f"the training set yielded no batch; check the fold's case count and batch_size{hint}")
        sums = _read_once({**self.dev, "__bad_step": self.bad[0], "__bad_loss": self.bad[1]})
        bad_step, bad_loss = sums.pop("__bad_step"), sums.pop("__bad_loss")
        if bad_step >= 0:
            raise FloatingPointError(f"epoch {self.epoch} step {int(bad_step)}: loss is {bad_loss}; "
                                     "lower lr or enable grad_clip")
        sums.update(self.host)
        out = {"train_loss": sums.pop("__loss") / self.n, "train_samples": float(self.n), "data_wait_s": self.wait_s}
        out.update({f"train_{k}": v / self.n for k, v in sums.items()})  # e.g. train_w_fuse: hybrid-loss weights
        return out


def make_optimizer(params: Any, lr: float, device: torch.device) -> tuple[torch.optim.Optimizer, str]:
    """Adam; on CUDA ``fused=True`` where this torch has the fused kernel for the device,
    else ``foreach``; on CPU torch's default implementation (unchanged CPU results).
    Returns the optimizer and the implementation's name (logged with the fold)."""
    if device.type == "cuda":
        from torch.optim.optimizer import _get_fused_kernels_supported_devices

        if "cuda" in _get_fused_kernels_supported_devices():
            return torch.optim.Adam(params, lr=lr, fused=True), "fused"
        return torch.optim.Adam(params, lr=lr, foreach=True), "foreach"
    return torch.optim.Adam(params, lr=lr), "default"


# --- torch.compile with a way out -------------------------------------------------------

#: The PyTorch bug that made the fallback necessary: inductor's meta kernel for
#: ``aten.convolution_backward`` predicts a channels_last grad_weight where cuDNN returns a
#: contiguous one for a 1x1x1 feature map ("AssertionError: expected size 16==16, stride
#: 27==1 ... Error in op: torch.ops.aten.convolution_backward.default"), seen on an H100 with
#: torch 2.11 and the tiny preset (docs/training.md "GPU speed").
UPSTREAM_ISSUE = "pytorch/pytorch#171622"
FIX_HINT = "set train.compile: off (distmsfa cv --compile off)"
log = logging.getLogger("distmsfa.training")


class CompileError(RuntimeError):
    """A compiled step failed where the same step runs eagerly (``compile: on``); one line."""


def _first_line(exc: BaseException, limit: int = 240) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


class CompiledModel:
    """``torch.compile(model, dynamic=False)`` for the training and evaluation steps, and
    what happens when a compiled step fails.

    A compiled step may fail where the eager one runs: a dynamo or inductor error while
    compiling, or a wrong prediction of the compiled code found when it runs (the
    convolution-backward bug :data:`UPSTREAM_ISSUE` fails in the compiled *backward*, after
    the compiled forward already updated BatchNorm's running statistics).  :meth:`step` then
    zeroes the gradients, restores the buffers and the RNG state saved before the step (saved
    only until a step of that kind has succeeded once: the first step compiles, later ones
    reuse its graph, fixed shapes) and runs the same step eagerly.  If the eager step fails
    too, its error is raised: the fault is not the compiler's.  Otherwise, with ``mode``
    ``auto``, the rest of the run is eager (``fallback`` holds the reason, logged once as one
    warning line) and the numbers are those of an eager run; with ``on`` a one-line
    :class:`CompileError` says how to fix it.  With DDP (``dist``) nothing is retried (a
    half-run backward leaves the reducer mid-iteration): the step raises :class:`CompileError`.

    ``train_net``: the module the training steps run through (the DDP wrapper), compiled
    separately; default: ``model``.  ``backend``: torch.compile's (tests use ``aot_eager``).
    ``compiled``: an already compiled module or function to use instead (``model`` may then
    be None: inference, where nothing is restored); ``hint``: how the user turns compile off."""

    def __init__(self, model: Optional[torch.nn.Module], mode: str = "auto", *,
                 train_net: Optional[torch.nn.Module] = None, backend: Optional[str] = None, dist: bool = False,
                 compiled: Any = None, hint: str = FIX_HINT) -> None:
        if mode not in ("auto", "on"):
            raise ValueError(f"CompiledModel mode {mode!r}: use 'auto' (fall back to eager) or 'on' (raise)")
        kw: dict[str, Any] = {"dynamic": False, **({"backend": backend} if backend else {})}
        self.model, self.mode, self.dist, self.hint = model, mode, dist, hint
        self.eval_net = compiled if compiled is not None else torch.compile(model, **kw)
        self.train_net = self.eval_net if train_net is None or train_net is model else torch.compile(train_net, **kw)
        self.fallback: Optional[str] = None  # why the run went eager (None: still compiled)
        self._proven: set[str] = set()

    @classmethod
    def of(cls, compiled: "CompiledModel | torch.nn.Module", model: torch.nn.Module) -> "CompiledModel":
        """An already ``torch.compile``-d module (as tests build one) as a ``mode='on'`` guard."""
        return compiled if isinstance(compiled, cls) else cls(model, "on", compiled=compiled)

    @property
    def active(self) -> bool:
        return self.fallback is None

    def _saved(self, kind: str) -> Optional[dict[str, Any]]:
        if kind != "train" or kind in self._proven or self.model is None:  # eval mode changes no state
            return None
        dev = next((b.device for b in self.model.buffers()), None)
        cuda = dev is not None and dev.type == "cuda"
        return {"buffers": [b.detach().clone() for b in self.model.buffers()],
                "cpu_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(dev) if cuda else None, "dev": dev}

    def _restore(self, saved: Optional[dict[str, Any]]) -> None:
        if saved is None:
            return
        with torch.no_grad():
            for b, v in zip(self.model.buffers(), saved["buffers"]):
                b.copy_(v)
        torch.set_rng_state(saved["cpu_rng"])
        if saved["cuda_rng"] is not None:
            torch.cuda.set_rng_state(saved["cuda_rng"], saved["dev"])

    def _message(self, exc: BaseException, kind: str, then: str, retried: bool = True) -> str:
        why = ("the same step runs eagerly, so this is a compiler fault" if retried
               else "not retried eagerly under DDP; likely a compiler fault")
        return (f"torch.compile failed in a compiled {kind} step ({_first_line(exc)}); {why} (e.g. {UPSTREAM_ISSUE} "
                f"on convolutions over 1x1x1 feature maps); {then}")

    def step(self, kind: str, fn, eager_net: torch.nn.Module,
             optimizer: Optional[torch.optim.Optimizer] = None) -> Any:
        """``fn(net)`` with the compiled ``kind`` ("train", else the eval net) net; on a failure, as
        the class says: ``fn(eager_net)`` after restoring, then fall back or raise."""
        if not self.active:
            return fn(eager_net)
        saved = self._saved(kind)
        try:
            out = fn(self.train_net if kind == "train" else self.eval_net)
        except Exception as exc:  # noqa: BLE001 - classified below by running the step eagerly
            if self.dist:
                raise CompileError(self._message(exc, kind, f"{self.hint} for DDP folds", retried=False)) from exc
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)  # a half-run backward may have left grads
            self._restore(saved)
            out = fn(eager_net)  # a genuine error of the step raises here, unchanged
            if self.mode == "on":
                raise CompileError(self._message(exc, kind, f"{self.hint}, or compile: auto to fall back to eager")) from exc
            self.fallback = self._message(exc, kind, f"the rest of this run is eager ({self.hint} to skip compiling)")
            log.warning(self.fallback)
            return out
        self._proven.add(kind)
        return out
