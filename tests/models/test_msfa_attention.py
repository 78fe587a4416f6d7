"""MSFA attention: fused-kernel layout, O(N) memory, and (on a GPU) the fused path taken."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from distmsfa.models.msfa import MSFA

REPO = Path(__file__).resolve().parents[2]


def _feats(b=2, c=16, d=4, h=8, w=12, **kw):
    g = torch.Generator().manual_seed(0)
    return torch.randn(b, c, d, h, w, generator=g, **kw), torch.randn(b, c, d, h, w, generator=g, **kw)


def test_layout_meets_fused_kernel_constraints():
    m = MSFA(16, attn_dim=64, heads=2)
    z1, z2 = _feats()
    q, k, v = m.qkv(z1, z2)
    n = 4 * 8 * 12
    for t in (q, k, v):
        assert t.shape == (2, 2, n, 32)  # (B, heads, N, head_dim), one head dim for q, k and v
        assert t.stride(-1) == 1  # contiguous last dim (flash / mem-efficient requirement)
        assert t.dtype == q.dtype
    assert q.shape[-1] % 8 == 0 and q.shape[-1] <= 256  # head dims the fused kernels accept


def test_matches_reference_attention_and_is_identity_at_alpha_zero():
    z1, z2 = _feats()
    m = MSFA(16, attn_dim=32, heads=2, alpha_init=0.7)
    q, k, v = m.qkv(z1, z2)
    s = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, -1)  # eq. 2, per head
    a = m.out((s @ v).transpose(1, 2).reshape(2, -1, 32))  # (B, N, C)
    ref = 0.7 * a.transpose(1, 2).reshape(z1.shape) + z1  # eq. 3
    torch.testing.assert_close(m(z1, z2), ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(MSFA(16, 32, 2, alpha_init=0.0)(z1, z2), z1)


def test_cpu_flash_kernel_is_taken_forward_and_backward():
    # With only the flash backend allowed, SDPA raises if the inputs don't qualify for it.
    m = MSFA(16, attn_dim=64, heads=2, alpha_init=1.0)
    z1, z2 = _feats(requires_grad=True)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        m(z1, z2).sum().backward()
    assert z1.grad is not None and z2.grad is not None and torch.isfinite(z2.grad).all()


_PROBE = r"""
import sys, torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from distmsfa.models.msfa import MSFA
torch.set_num_threads(1)
tokens, backend = int(sys.argv[1]), sys.argv[2]
m = MSFA(16, 64, 2, alpha_init=1.0)
def step(d):
    z1 = torch.randn(1, 16, d, 16, 16, requires_grad=True)
    z2 = torch.randn(1, 16, d, 16, 16, requires_grad=True)
    m(z1, z2).sum().backward()
def status_kib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
step(1)  # warm up allocator and kernels, then measure the peak increase of one step
# Reset the process's RSS high-water mark (Linux clear_refs "5"), so that a peak reached
# while importing cannot hide the step's own peak.
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")
base = status_kib("VmRSS")
with sdpa_kernel([getattr(SDPBackend, backend)]):
    step(tokens // 256)
print((status_kib("VmHWM") - base) / 1024)
"""


def _peak_mib(tokens: int, backend: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", _PROBE, str(tokens), backend], env=env, check=True,
                         capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_memory_grows_linearly_with_tokens():
    n = 4096
    flash_n, flash_4n = _peak_mib(n, "FLASH_ATTENTION"), _peak_mib(4 * n, "FLASH_ATTENTION")
    math_n = _peak_mib(n, "MATH")  # the O(N^2) kernel, to show the probe can tell them apart
    # Linear: ~4x from N to 4N (quadratic would be 16x); measured ~11 MiB -> ~38 MiB.
    assert flash_4n / max(flash_n, 1.0) < 6, (flash_n, flash_4n)
    # The N^2 path needs more at N tokens than the fused one at 4N (measured ~390 vs ~38 MiB).
    assert math_n > 2 * flash_4n, (math_n, flash_4n)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_layout_qualifies_for_a_fused_kernel():
    # The CUDA kernels' own eligibility check on MSFA's q/k/v (debug=True logs why not).
    m = MSFA(16, attn_dim=64, heads=2)
    q, k, v = (t.cuda().half() for t in m.qkv(*_feats()))
    params = torch.backends.cuda.SDPAParams(q, k, v, None, 0.0, False, False)
    assert torch.backends.cuda.can_use_flash_attention(params, True) or \
        torch.backends.cuda.can_use_efficient_attention(params, True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_fused_path_taken(dtype):
    m = MSFA(64, attn_dim=64, heads=2, alpha_init=1.0).cuda()
    z1, z2 = (t.cuda().requires_grad_() for t in _feats(c=64, d=12, h=28, w=40))
    ctx = torch.autocast("cuda", dtype=dtype) if dtype != torch.float32 else torch.autocast("cuda", enabled=False)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]), ctx:
        m(z1, z2).float().sum().backward()
    assert torch.isfinite(z1.grad).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_msfanet_fast_path_linear_memory():
    from distmsfa.models import autocast, create_model, prepare_for_device, prepare_input

    m = prepare_for_device(create_model("msfanet"), "cuda")
    peaks = []
    for d in (8, 32):  # 4x the tokens
        x = prepare_input(torch.rand(2, 2, d, 224, 320), "cuda")
        torch.cuda.reset_peak_memory_stats()
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]), autocast("cuda"):
            out = m(x)
        m.loss(out, torch.ones(2, device="cuda"))[0].backward()
        peaks.append(torch.cuda.max_memory_allocated())
    assert peaks[1] / peaks[0] < 6


def test_kv_pool_keeps_output_shape_and_reduces_keys():
    m = MSFA(16, attn_dim=32, heads=1, alpha_init=1.0, kv_pool=(1, 2, 2))
    z1, z2 = _feats()
    q, k, v = m.qkv(z1, z2)
    assert q.shape[2] == 4 * 8 * 12 and k.shape[2] == v.shape[2] == 4 * 4 * 6
    assert k.stride(-1) == 1 and k.shape[-1] == q.shape[-1]
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        out = m(z1, z2)
    assert out.shape == z1.shape


def _compiled_sdpa_ops(m, z1, z2) -> tuple[torch.Tensor, list[set[str]]]:
    """Compile ``m`` with inductor, run forward + backward, and list the SDPA kernels each
    generated graph (forward, backward) calls."""
    import re

    from torch._inductor.utils import run_and_get_code

    cm = torch.compile(m, dynamic=False)

    def step():
        out = cm(z1, z2)
        out.float().sum().backward()
        return out

    out, codes = run_and_get_code(step)
    return out, [set(re.findall(r"aten\.(_scaled_dot_product_\w+?|_efficient_attention\w*|_flash_attention\w*)\b", c))
                 for c in codes]


@pytest.mark.slow
def test_compiled_msfa_keeps_the_fused_cpu_kernel_forward_and_backward():
    # Inductor may lower SDPA to plain matmul + softmax (the O(N^2) math path) when the
    # inputs do not qualify; the generated code must call the fused flash kernel instead.
    torch._dynamo.reset()
    m = MSFA(16, attn_dim=64, heads=2, alpha_init=1.0)
    z1, z2 = _feats(requires_grad=True)
    out, ops = _compiled_sdpa_ops(m, z1, z2)
    assert len(ops) == 2, ops  # a forward and a backward graph
    assert "_scaled_dot_product_flash_attention_for_cpu" in ops[0], ops
    assert "_scaled_dot_product_flash_attention_for_cpu_backward" in ops[1], ops
    torch.testing.assert_close(out, m(*_feats()), rtol=1e-4, atol=1e-5)  # and computes the same


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_compiled_msfa_keeps_a_fused_kernel():
    torch._dynamo.reset()
    m = MSFA(64, attn_dim=64, heads=2, alpha_init=1.0).cuda()
    z1, z2 = (t.cuda().requires_grad_() for t in _feats(c=64, d=12, h=28, w=40))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        _, ops = _compiled_sdpa_ops(m, z1, z2)
    fused = {"_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
             "_scaled_dot_product_cudnn_attention"}
    assert fused & ops[0], ops
    assert {f + "_backward" for f in fused} & ops[1], ops
