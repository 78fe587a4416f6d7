"""MSFANet (paper sec. 1.3) and its ablation Baselines (Tables 5-6), one configurable network.

Layout (strides/widths are config; defaults in brackets, paper input (D, H, W) = (24, 224, 320)):

    x (B, 2, D, H, W) -> T1 and FS stacked along the batch: (2B, 1, D, H, W)
    shared shallow module: RB(1->w0, s0) -> RB(w0->w1, s1)     [16, 64; (1,2,2), (2,2,2)]
    split back into T1 and FS features f1, f2 (weights shared, one pass over 2B)
    T1 branch:  a1 = RB(w1->w2, s2)(f1);  RB(w2->w3, s3)(a1) -> head "t1"      [128, 256]
    FS branch:  a2 = RB(w1->w2, s2)(f2);  RB(w2->w3, s3)(a2) -> head "fs"
    Fuse branch: z1 = MSFA(Q=a1, KV=a2), z2 = MSFA(Q=a2, KV=a1)   (tokens at stride (2,8,8):
                 12*28*40 = 13,440 at the paper size), RB(2*w2->w3, s3)(cat(z1, z2)) -> head "fuse"

Baseline (``fusion='concat'``) is the same network with ``z1, z2 = a1, a2`` (concatenation
instead of MSFA).  With ``alpha_init=0`` MSFANet starts exactly as its Baseline.
With ``loss='bce'`` (= 'fuse_only') the T1/FS heads and the blocks only they use are not
built (they would never learn); their Grad-CAM layer is then the branch's first block.
Single-sequence Baselines (``sequences=('t1',)``) keep the shallow module, the sequence
branch (head named after the sequence) and the fuse-branch block over that sequence alone
(head "fuse", the primary), so 'bce' and 'hybrid' mean the same as for the two-sequence nets.

Input front (``input_norm``, ``morph``, ``input_erode``; front.py, docs/models.md): off by
default (the network above, bit for bit); on, each read sequence is background-subtracted,
divided by its ROI median, closed (T1) / opened (FS) in-plane and masked before the shallow
module.

Any input size works (convs pad; odd sizes round up); sizes divisible by the total stride
``prod(strides)`` [(4, 16, 16)] keep Grad-CAM maps aligned voxel-for-voxel.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from distmsfa.config import Config, require
from distmsfa.models.base import MultiSequenceModel
from distmsfa.models.blocks import HEAD_POOLS, freeze_lists, Head, ResBlock3d, build_config, check_triples, total_stride
from distmsfa.models.front import NORMALIZE, InputFront
from distmsfa.models.losses import LOSS_KINDS, make_loss
from distmsfa.models.msfa import MSFA
from distmsfa.models.registry import register_model

_SEQ_SETS = (("t1", "fs"), ("t1",), ("fs",))


@dataclasses.dataclass(frozen=True)
class MSFANetConfig(Config):
    widths: tuple[int, int, int, int] = (16, 64, 128, 256)
    strides: tuple[tuple[int, int, int], ...] = ((1, 2, 2), (2, 2, 2), (1, 2, 2), (2, 2, 2))
    fusion: str = "msfa"  # 'msfa' (MSFANet) | 'concat' (Baseline)
    sequences: tuple[str, ...] = ("t1", "fs")
    attn_dim: int = 64  # d of Q, K (and V, see msfa.py); head_dim = attn_dim / attn_heads
    attn_heads: int = 1
    kv_pool: tuple[int, int, int] = (1, 1, 1)  # >1: pool K/V tokens (cheaper attention); 1 = paper
    alpha_init: float = 0.0
    loss: str = "hybrid"  # hybrid | equal | fuse_only | bce
    log_weight_bound: float = 3.0
    prediction: str = "primary"  # primary (fuse head) | mean (of heads)
    dropout: float = 0.0
    head_pool: str = "avg"  # avg (paper) | max | avgmax: the heads' global pooling (blocks.Head)
    # Input front (front.py; docs/models.md "Input front"): all off = the paper's network.
    input_norm: str = "none"  # none | roi_median (each sequence / its median over the ROI)
    morph: int = 0  # 0 | odd >= 3: in-plane grey closing (T1) / opening (FS) window
    input_erode: int = 0  # voxels of in-plane ROI rim zeroed by the front (the augmentation's blended rim)

    def __post_init__(self) -> None:
        n = type(self).__name__
        freeze_lists(self, "widths", "strides", "sequences", "kv_pool")
        require(len(self.widths) == 4 and all(isinstance(w, int) and w > 0 for w in self.widths), n,
                f"widths must be 4 positive ints (shallow1, shallow2, branch1, branch2), got {self.widths!r}")
        check_triples(n, "strides", self.strides, 4)
        require(self.fusion in ("msfa", "concat"), n, f"fusion must be 'msfa' or 'concat', got {self.fusion!r}")
        require(tuple(self.sequences) in _SEQ_SETS, n,
                f"sequences must be one of {_SEQ_SETS}, got {self.sequences!r}")
        require(self.fusion == "concat" or len(self.sequences) == 2, n,
                "MSFA fusion needs both sequences; use fusion='concat' for a single-sequence Baseline")
        require(self.attn_dim > 0 and self.attn_heads > 0 and self.attn_dim % self.attn_heads == 0, n,
                f"attn_dim ({self.attn_dim}) must be a positive multiple of attn_heads ({self.attn_heads})")
        require(len(self.kv_pool) == 3 and all(isinstance(k, int) and k >= 1 for k in self.kv_pool), n,
                f"kv_pool must be 3 positive ints (D, H, W pooling of keys/values), got {self.kv_pool!r}")
        require(self.loss in LOSS_KINDS, n, f"loss must be one of {LOSS_KINDS}, got {self.loss!r}")
        require(self.log_weight_bound > 0, n, f"log_weight_bound must be > 0, got {self.log_weight_bound}")
        require(self.prediction in ("primary", "mean"), n, f"prediction must be 'primary' or 'mean', got {self.prediction!r}")
        require(0.0 <= self.dropout < 1.0, n, f"dropout must be in [0, 1), got {self.dropout}")
        require(self.head_pool in HEAD_POOLS, n, f"head_pool must be one of {HEAD_POOLS}, got {self.head_pool!r}")
        require(self.input_norm in NORMALIZE, n,
                f"input_norm must be one of {NORMALIZE} (roi_median: divide each sequence by its ROI median), "
                f"got {self.input_norm!r}")
        require(isinstance(self.morph, int) and not isinstance(self.morph, bool)
                and (self.morph == 0 or (self.morph >= 3 and self.morph % 2 == 1)), n,
                f"morph must be 0 (off) or an odd in-plane window >= 3 (e.g. 3), got {self.morph!r}")
        require(isinstance(self.input_erode, int) and not isinstance(self.input_erode, bool) and self.input_erode >= 0, n,
                f"input_erode must be an int >= 0 (voxels of in-plane ROI rim to zero), got {self.input_erode!r}")

    @property
    def front_on(self) -> bool:
        return self.input_norm != "none" or self.morph > 0 or self.input_erode > 0

    @property
    def total_stride(self) -> tuple[int, int, int]:
        return total_stride(self.strides)


PRESETS = {
    "default": {},
    # For CPU tests and the demo: ~60k parameters, seconds per epoch at (8, 48, 64).
    "tiny": {"widths": (4, 8, 16, 16), "attn_dim": 16, "attn_heads": 1},
    # The demo crop (8, 48, 64) at 5 x 2.5 x 2.5 mm: the sequences meet at stride (2, 4, 4),
    # tokens 10 mm apart (768 of them), so a 7-20 mm lesion spans several tokens instead of
    # ~one at the default strides' (2, 8, 8) (docs/models.md, "The demo preset").
    "demo": {"widths": (8, 16, 24, 24), "strides": ((1, 2, 2), (2, 2, 2), (1, 1, 1), (1, 2, 2)),
             "attn_dim": 16, "attn_heads": 1},
}


class MSFANet(MultiSequenceModel):
    def __init__(self, cfg: MSFANetConfig) -> None:
        # With a fuse-only loss the sequence heads would get no gradient: leave them (and the
        # second branch blocks feeding them) out rather than carry parameters that never learn
        # (and break DDP's unused-parameter check).
        self.deep_supervision = cfg.loss not in ("fuse_only", "bce")
        heads = ("fuse",) + (tuple(cfg.sequences) if self.deep_supervision else ())
        super().__init__(make_loss(cfg.loss, heads, "fuse", cfg.log_weight_bound), cfg.prediction)
        self.cfg = cfg
        self.sequences = tuple(cfg.sequences)
        # The front is parameter-free (no state_dict keys) and left out when off, so the default
        # network is today's bit for bit.  Its output is a ratio to the ROI median (marrow ~1,
        # STIR-bright ~3-6) instead of [0, 1]: the first conv needs no change, as the BatchNorm
        # after it (and on its skip) rescales whatever range the input has.
        self.front = InputFront(self.sequences, cfg.input_norm, cfg.morph, cfg.input_erode) if cfg.front_on else None
        w0, w1, w2, w3 = cfg.widths
        s0, s1, s2, s3 = cfg.strides
        self.shallow = nn.Sequential(ResBlock3d(1, w0, s0), ResBlock3d(w0, w1, s1))
        self.branch1 = nn.ModuleDict({s: ResBlock3d(w1, w2, s2) for s in self.sequences})
        self.branch2 = nn.ModuleDict(
            {s: ResBlock3d(w2, w3, s3) for s in self.sequences} if self.deep_supervision else {})
        self.msfa = None
        if cfg.fusion == "msfa":
            # msfa["t1"]: queries from T1, keys/values from FS; msfa["fs"]: the other direction.
            self.msfa = nn.ModuleDict({s: MSFA(w2, cfg.attn_dim, cfg.attn_heads, cfg.alpha_init, cfg.kv_pool) for s in self.sequences})
        self.fuse_block = ResBlock3d(w2 * len(self.sequences), w3, s3)
        self.heads = nn.ModuleDict({h: Head(w3, cfg.dropout, cfg.head_pool) for h in heads})

    @property
    def head_names(self):
        return tuple(self.heads)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        b = x.shape[0]
        if self.front is not None:
            # (B, S, D, H, W) in self.sequences order, background 0; back to the input's dtype.
            v = self.front(x)[0].to(x.dtype if x.is_floating_point() else torch.float32)
            stacked = torch.cat(v.split(1, 1), 0)
        else:
            stacked = torch.cat([self.select(x, s) for s in self.sequences], 0)
        f = self.shallow(stacked).split(b, 0)
        a = {s: self.branch1[s](fs) for s, fs in zip(self.sequences, f)}
        out = {s: self.heads[s](self.branch2[s](a[s])) for s in self.branch2}
        if self.msfa is not None:
            t1, fs = a["t1"], a["fs"]
            z = [self.msfa["t1"](t1, fs), self.msfa["fs"](fs, t1)]
        else:
            z = [a[s] for s in self.sequences]
        fused = self.fuse_block(torch.cat(z, 1) if len(z) > 1 else z[0])
        return {"fuse": self.heads["fuse"](fused), **out}

    def gradcam_layers(self) -> dict[str, nn.Module]:
        # A branch's last conv: its second block, or its first where the loss leaves that out.
        layers = {s: (self.branch2[s] if s in self.branch2 else self.branch1[s]).conv2 for s in self.sequences}
        return {**layers, "fuse": self.fuse_block.conv2}


def _factory(defaults: dict):
    def make(**cfg) -> MSFANet:
        return MSFANet(build_config(MSFANetConfig, PRESETS, {**defaults, **cfg}))

    return make


# One registered name per row of the paper's tables (docs/models.md maps them).
for _name, _defaults in {
    "msfanet": {"fusion": "msfa", "loss": "hybrid"},            # Tables 3-6 "MSFANet"
    "msfanet_bce": {"fusion": "msfa", "loss": "bce"},           # Table 5 MSFANet + BCE
    "baseline": {"fusion": "concat", "loss": "bce"},            # Table 5 Baseline + BCE = Table 6 Baseline^TF
    "baseline_hybrid": {"fusion": "concat", "loss": "hybrid"},  # Table 5 Baseline + hybrid
    "baseline_t1": {"fusion": "concat", "loss": "bce", "sequences": ("t1",)},  # Table 6
    "baseline_fs": {"fusion": "concat", "loss": "bce", "sequences": ("fs",)},  # Table 6
}.items():
    register_model(_name)(_factory(_defaults))
