"""The fast path per device, in one place, so the training loop, benchmark and server agree.

On CUDA: bf16 autocast plus ``torch.channels_last_3d`` for model and input (3-4x the
throughput of fp32/NCDHW for 3D convs on H100/H200, see benchmarks/bench_models.py).
On CPU: fp32, default layout (bf16 on CPU is slower on most machines; channels_last_3d
gains nothing measurable for these small 3D nets there).

    model = prepare_for_device(model, device)
    for x, y in loader:
        x = prepare_input(x, device)
        with autocast(device):
            out = model(x)
        loss, logs = model.loss(out, y)      # losses compute in fp32 internally
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn


def _dev(device: str | torch.device) -> torch.device:
    return torch.device(device)


def default_precision(device: str | torch.device) -> torch.dtype | None:
    """Autocast dtype for ``device``: ``torch.bfloat16`` on CUDA with bf16 support, else None (fp32)."""
    d = _dev(device)
    if d.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def default_memory_format(device: str | torch.device) -> torch.memory_format:
    return torch.channels_last_3d if _dev(device).type == "cuda" else torch.contiguous_format


def prepare_for_device(model: nn.Module, device: str | torch.device,
                       memory_format: torch.memory_format | None = None) -> nn.Module:
    """Move ``model`` to ``device`` in its fast memory format (channels_last_3d on CUDA)."""
    fmt = memory_format or default_memory_format(device)
    model = model.to(_dev(device))
    if fmt is not torch.contiguous_format:
        model = model.to(memory_format=fmt)
    return model


def prepare_input(x: torch.Tensor, device: str | torch.device,
                  memory_format: torch.memory_format | None = None) -> torch.Tensor:
    """Move a (B, 2, D, H, W) batch to ``device`` in the model's memory format."""
    fmt = memory_format or default_memory_format(device)
    x = x.to(_dev(device), non_blocking=True)
    return x.contiguous(memory_format=fmt) if x.dim() == 5 else x


def autocast(device: str | torch.device, dtype: torch.dtype | None = None):
    """``torch.autocast`` with ``default_precision(device)``; a no-op context where that is fp32."""
    d = _dev(device)
    dtype = dtype if dtype is not None else default_precision(d)
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(d.type, dtype=dtype)
