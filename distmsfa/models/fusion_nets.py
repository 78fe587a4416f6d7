"""Five comparison models built from the paper's residual block (Tables 3-4).

Each keeps its source's *fusion* and uses MSFANet's residual stages (same widths
``(16, 64, 128, 256)`` and strides by default) as the per-sequence CNN, so the comparison
isolates the fusion at similar capacity (6-11 M parameters, see docs/models.md):

* ``embeddingnet`` - Yap, Yolland & Tschandl 2018 (multimodal skin-lesion classification):
  one CNN per modality -> pooled embeddings, concatenated -> MLP classifier (late fusion).
* ``centralnet`` - Vielzeuf et al. 2018 (CentralNet): two unimodal nets plus a central net
  whose input at each level is a learned-scalar weighted sum of the unimodal hidden layers
  and its own previous layer; loss = central + both unimodal losses.
* ``triplenet`` - Ge et al. 2017 (dermoscopy + clinical images): two unimodal CNNs, each
  with its classifier, plus a third classifier on their concatenated features; three losses.
* ``multistream`` - Fernandez-Quilez et al. 2022 (multi-stream 3D CNN, bi-parametric
  prostate MRI): one stream per sequence up to an intermediate stage, feature maps
  concatenated, shared stages after (intermediate fusion).
* ``mtln`` - Zhang et al. 2021 (multi-task learning network): one encoder over the
  sequences stacked as channels (input-level fusion) and its classification branch; the
  segmentation task has no labels here and is left out.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from distmsfa.config import Config, require
from distmsfa.models.base import MultiSequenceModel
from distmsfa.models.blocks import freeze_lists, Head, ResBlock3d, build_config, check_triples
from distmsfa.models.losses import LOSS_KINDS, make_loss
from distmsfa.models.registry import register_model


@dataclasses.dataclass(frozen=True)
class FusionNetConfig(Config):
    widths: tuple[int, int, int, int] = (16, 64, 128, 256)
    strides: tuple[tuple[int, int, int], ...] = ((1, 2, 2), (2, 2, 2), (1, 2, 2), (2, 2, 2))
    fusion_stage: int = 3  # multistream: number of per-sequence stages before concatenation
    embed_dim: int = 128  # embeddingnet: width of the MLP on the concatenated embeddings
    loss: str = "bce"
    log_weight_bound: float = 3.0
    prediction: str = "primary"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        n = type(self).__name__
        freeze_lists(self, "widths", "strides")
        require(len(self.widths) == 4 and all(isinstance(w, int) and w > 0 for w in self.widths), n,
                f"widths must be 4 positive ints, got {self.widths!r}")
        check_triples(n, "strides", self.strides, 4)
        require(1 <= self.fusion_stage <= 3, n, f"fusion_stage must be 1, 2 or 3, got {self.fusion_stage}")
        require(self.embed_dim > 0, n, f"embed_dim must be > 0, got {self.embed_dim}")
        require(self.loss in LOSS_KINDS, n, f"loss must be one of {LOSS_KINDS}, got {self.loss!r}")
        require(self.prediction in ("primary", "mean"), n, f"prediction must be 'primary' or 'mean', got {self.prediction!r}")
        require(0.0 <= self.dropout < 1.0, n, f"dropout must be in [0, 1), got {self.dropout}")


PRESETS = {
    "default": {},
    "tiny": {"widths": (4, 8, 16, 16), "embed_dim": 16},
    # MSFANet's "demo" preset (msfanet.py): same stages, so comparisons stay at equal capacity.
    "demo": {"widths": (8, 16, 24, 24), "strides": ((1, 2, 2), (2, 2, 2), (1, 1, 1), (1, 2, 2)), "embed_dim": 24},
}


def stages(cin: int, widths, strides, start: int = 0, stop: int = 4) -> nn.ModuleList:
    chans = (cin,) + tuple(widths)
    return nn.ModuleList(ResBlock3d(chans[i] if i > start else cin, chans[i + 1], strides[i]) for i in range(start, stop))


def run(blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    for blk in blocks:
        x = blk(x)
    return x


class _Fusion(MultiSequenceModel):
    """Shared plumbing: config, loss over the declared heads, head names."""

    HEADS: tuple[str, ...] = ("fuse",)

    def __init__(self, cfg: FusionNetConfig) -> None:
        super().__init__(make_loss(cfg.loss, self.HEADS, "fuse", cfg.log_weight_bound), cfg.prediction)
        self.cfg = cfg

    @property
    def head_names(self):
        return self.HEADS


class EmbeddingNet(_Fusion):
    def __init__(self, cfg: FusionNetConfig) -> None:
        super().__init__(cfg)
        self.enc = nn.ModuleDict({s: stages(1, cfg.widths, cfg.strides) for s in self.sequences})
        w = cfg.widths[3]
        self.mlp = nn.Sequential(nn.Linear(2 * w, cfg.embed_dim), nn.ReLU(inplace=True))
        self.head = Head(cfg.embed_dim, cfg.dropout)

    def forward(self, x):
        emb = [run(self.enc[s], self.select(x, s)).flatten(2).mean(-1) for s in self.sequences]
        return {"fuse": self.head(self.mlp(torch.cat(emb, 1)))}

    def gradcam_layers(self):
        return {s: self.enc[s][-1].conv2 for s in self.sequences}


class CentralNet(_Fusion):
    HEADS = ("fuse", "t1", "fs")

    def __init__(self, cfg: FusionNetConfig) -> None:
        super().__init__(cfg)
        self.enc = nn.ModuleDict({s: stages(1, cfg.widths, cfg.strides) for s in self.sequences})
        # central[i] maps the fused level-i features to level i+1, like the unimodal stage i+1.
        self.central = stages(cfg.widths[0], cfg.widths, cfg.strides, start=1)
        # One scalar per (level, source): sources = central, t1, fs (CentralNet eq. 1); level 0
        # has no central input.  Initialised to 1 (plain sum).
        self.fusion_weights = nn.Parameter(torch.ones(4, 3))
        self.heads = nn.ModuleDict({h: Head(cfg.widths[3], cfg.dropout) for h in self.HEADS})

    def forward(self, x):
        h = {s: self.select(x, s) for s in self.sequences}
        central = None
        for lvl in range(4):
            h = {s: self.enc[s][lvl](h[s]) for s in self.sequences}
            a = self.fusion_weights[lvl]
            z = a[1] * h["t1"] + a[2] * h["fs"]
            if central is not None:
                z = z + a[0] * central
            central = self.central[lvl](z) if lvl < 3 else z
        return {"fuse": self.heads["fuse"](central), **{s: self.heads[s](h[s]) for s in self.sequences}}

    def gradcam_layers(self):
        return {"fuse": self.central[-1].conv2, **{s: self.enc[s][-1].conv2 for s in self.sequences}}


class TripleNet(_Fusion):
    HEADS = ("fuse", "t1", "fs")

    def __init__(self, cfg: FusionNetConfig) -> None:
        super().__init__(cfg)
        self.enc = nn.ModuleDict({s: stages(1, cfg.widths, cfg.strides) for s in self.sequences})
        w = cfg.widths[3]
        self.heads = nn.ModuleDict({s: Head(w, cfg.dropout) for s in self.sequences})
        self.heads["fuse"] = Head(2 * w, cfg.dropout)

    def forward(self, x):
        f = {s: run(self.enc[s], self.select(x, s)).flatten(2).mean(-1) for s in self.sequences}
        out = {"fuse": self.heads["fuse"](torch.cat([f["t1"], f["fs"]], 1))}
        out.update({s: self.heads[s](f[s]) for s in self.sequences})
        return out

    def gradcam_layers(self):
        return {s: self.enc[s][-1].conv2 for s in self.sequences}


class MultiStream(_Fusion):
    def __init__(self, cfg: FusionNetConfig) -> None:
        super().__init__(cfg)
        k = cfg.fusion_stage
        self.streams = nn.ModuleDict({s: stages(1, cfg.widths, cfg.strides, 0, k) for s in self.sequences})
        widths = list(cfg.widths)
        # The first shared stage reads both streams' maps (2x channels); later stages as usual.
        self.shared = nn.ModuleList(
            ResBlock3d(2 * widths[i - 1] if i == k else widths[i - 1], widths[i], cfg.strides[i]) for i in range(k, 4))
        self.head = Head(widths[3], cfg.dropout)

    def forward(self, x):
        z = torch.cat([run(self.streams[s], self.select(x, s)) for s in self.sequences], 1)
        return {"fuse": self.head(run(self.shared, z))}

    def gradcam_layers(self):
        return {"fuse": self.shared[-1].conv2, **{s: self.streams[s][-1].conv2 for s in self.sequences}}


class MTLN(_Fusion):
    def __init__(self, cfg: FusionNetConfig) -> None:
        super().__init__(cfg)
        w = cfg.widths
        self.encoder = stages(2, w, cfg.strides)
        # Classification branch of the multi-task net: one more block at the deepest level.
        self.cls_block = ResBlock3d(w[3], w[3])
        self.head = Head(w[3], cfg.dropout)

    def forward(self, x):
        return {"fuse": self.head(self.cls_block(run(self.encoder, x)))}

    def gradcam_layers(self):
        return {"fuse": self.cls_block.conv2}


def _factory(cls, defaults):
    def make(**cfg):
        return cls(build_config(FusionNetConfig, PRESETS, {**defaults, **cfg}))

    return make


register_model("embeddingnet")(_factory(EmbeddingNet, {}))
register_model("centralnet")(_factory(CentralNet, {"loss": "equal"}))  # central + unimodal losses
register_model("triplenet")(_factory(TripleNet, {"loss": "equal"}))  # three losses
register_model("multistream")(_factory(MultiStream, {}))
register_model("mtln")(_factory(MTLN, {}))
