"""MSFA: multi-sequence feature aggregation (paper sec. 1.3.3, eqs. 1-3).

``Z_f = alpha * softmax(Q_1 K_2^T / sqrt(d)) V_2 + Z_1`` with Q from one sequence's
features and K, V from the other's, over all N = D*H*W tokens.

Layout for the fused kernels.  ``F.scaled_dot_product_attention`` only dispatches to the
flash / memory-efficient kernels (O(N) memory; on CPU the flash-attention CPU kernel) when
q, k and v share one head dim and are laid out ``(B, heads, N, head_dim)`` with a
contiguous last dim.  The paper's ``V in R^{N x C}`` has a different width than
``Q, K in R^{N x d}``; unequal dims force the O(N^2) math kernel (tens of GB at the
paper's 13k tokens).  So V is projected to ``d`` as well and a 1x1x1 output projection
maps the ``d``-wide result back to ``C`` (as in every multi-head attention).  The 1x1x1
convs are ``nn.Linear`` over the channel axis of a token-major ``(B, N, C)`` view: the same
map, and the projections then come out head-contiguous without an extra copy.

One head by default (``head_dim = attn_dim = 64``): eq. 2 is single-head, and on an H200 the
flash kernels run a 64-wide head faster than two 32-wide ones (benchmarks, docs/models.md).

``alpha`` is a learned scalar (paper); it starts at ``alpha_init`` (default 0, as in
DANet/SAGAN) so the module starts as the identity and the network starts as its Baseline.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distmsfa.config import ConfigError


class MSFA(nn.Module):
    """Cross-sequence attention: queries from ``z1``, keys/values from ``z2``; output shaped as ``z1``."""

    def __init__(self, channels: int, attn_dim: int = 64, heads: int = 1, alpha_init: float = 0.0,
                 kv_pool: tuple[int, int, int] = (1, 1, 1)) -> None:
        super().__init__()
        if attn_dim % heads:
            raise ConfigError(f"MSFA: attn_dim={attn_dim} must be divisible by attn_heads={heads}")
        self.heads = heads
        # kv_pool > 1 average-pools the key/value sequence before projection (as PVT's
        # spatial-reduction attention): N x N/prod(kv_pool) pairs instead of N x N.  Queries
        # keep full resolution, so the output keeps z1's shape.  (1, 1, 1) = the paper.
        self.kv_pool = tuple(kv_pool)
        self.head_dim = attn_dim // heads
        self.q = nn.Linear(channels, attn_dim)
        self.kv = nn.Linear(channels, 2 * attn_dim)
        self.out = nn.Linear(attn_dim, channels)
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))

    @staticmethod
    def tokens(z: torch.Tensor) -> torch.Tensor:
        """(B, C, D, H, W) -> (B, N, C); free when ``z`` is channels_last_3d."""
        return z.flatten(2).transpose(1, 2)

    def qkv(self, z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project to ``(B, heads, N, head_dim)`` tensors whose last dim is contiguous."""
        b, n = z1.shape[0], z1.shape[2] * z1.shape[3] * z1.shape[4]
        q = self.q(self.tokens(z1)).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        if self.kv_pool != (1, 1, 1):
            z2 = F.avg_pool3d(z2, self.kv_pool, ceil_mode=True)
        m = z2.shape[2] * z2.shape[3] * z2.shape[4]
        kv = self.kv(self.tokens(z2)).view(b, m, 2, self.heads, self.head_dim)
        k, v = kv.unbind(2)
        return q, k.transpose(1, 2), v.transpose(1, 2)

    def attend(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """The attention term A (eq. 2), shaped like ``z1``."""
        b, c, d, h, w = z1.shape
        q, k, v = self.qkv(z1, z2)
        a = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, hd); scale 1/sqrt(hd)
        a = self.out(a.transpose(1, 2).reshape(b, d * h * w, -1))  # (B, N, C)
        # (B, N, C) is exactly the channels_last_3d memory of a (B, C, D, H, W) tensor.
        return a.view(b, d, h, w, c).permute(0, 4, 1, 2, 3)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        if z1.shape != z2.shape:
            raise ValueError(f"MSFA needs both sequences' features of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
        return self.alpha.to(z1.dtype) * self.attend(z1, z2) + z1
