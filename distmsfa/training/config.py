"""Typed configs of one fold's training (:class:`TrainConfig`) and of a CV run (:class:`CVConfig`).

YAML lives at the edge only (``tune_configs/*.yaml``, ``--config FILE``, the embedded
profiles in :mod:`distmsfa.training.profiles`); a file has two sections, ``train:`` and
``cv:``, mapped onto these two classes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any, Optional

from distmsfa.config import Config, require

PRECISIONS = ("auto", "fp32", "bf16")
THRESHOLD_POLICIES = ("fixed", "youden")
SELECTIONS = ("inner", "val", "last")
LR_SCHEDULES = ("constant", "cosine")
COMPILE_MODES = ("auto", "on", "off")


#: ``AugmentConfig.masked`` values.
MASKED_MODES = ("auto", "on", "off")


@dataclasses.dataclass(frozen=True)
class AugmentConfig(Config):
    """Batch augmentation on the device, identical geometry for T1 and FS of a case.

    ``flip_prob``: probability of a left-right flip (array axis W; the sacroiliac joints
    are near-symmetric so a flip yields a plausible case).  ``rotate_deg``: max in-plane
    rotation (about the D axis, the coronal slab's normal).  ``scale``: max relative
    isotropic zoom.  ``intensity_scale`` / ``intensity_shift``: max per-sequence
    multiplicative / additive jitter (each sequence draws its own, since the two come
    from different acquisitions).

    ``masked``: whether the crops are masked to the ROI neighbourhood (voxels outside it are
    exactly 0 in both sequences; ``PreprocessConfig.roi_mask_mm``).  ``on``: the warp keeps
    only voxels whose whole interpolation footprint lies inside the case's mask (no blend
    of tissue and background at the rim) and the intensity jitter acts inside the mask only
    (the background stays exactly 0).  ``off``: the plain augmentation (rim blends, shifted
    background).  ``auto`` (default): the CV runner sets ``on`` when the dataset was
    preprocessed with ``roi_mask_mm`` and ``off`` otherwise (read from its fingerprint, and
    recorded resolved in the run's ``run.json``); :func:`augment_batch` called directly
    with ``auto`` augments as ``off``.  YAML's bare ``on``/``off`` (booleans) are accepted."""

    enabled: bool = True
    flip_prob: float = 0.5
    rotate_deg: float = 10.0
    scale: float = 0.1
    intensity_scale: float = 0.1
    intensity_shift: float = 0.05
    # Random in-plane translation, a fraction of the crop's extent along H and W (0.05 = up to
    # +-5 %); 0 (default) draws nothing, so runs without it are unchanged.
    translate: float = 0.0
    masked: str = "auto"

    def __post_init__(self) -> None:
        n = type(self).__name__
        if isinstance(self.masked, bool):  # YAML 1.1 reads a bare on/off as a boolean
            object.__setattr__(self, "masked", "on" if self.masked else "off")
        require(self.masked in MASKED_MODES, n, f"masked={self.masked!r} must be one of {', '.join(MASKED_MODES)} "
                                                 f"(auto: follow the dataset's roi_mask_mm)")
        require(0.0 <= self.flip_prob <= 1.0, n, f"flip_prob={self.flip_prob} must be in [0, 1]")
        require(0.0 <= self.rotate_deg <= 45.0, n, f"rotate_deg={self.rotate_deg} must be in [0, 45] (small rotations)")
        require(0.0 <= self.scale < 0.5, n, f"scale={self.scale} must be in [0, 0.5)")
        require(0.0 <= self.intensity_scale < 1.0, n, f"intensity_scale={self.intensity_scale} must be in [0, 1)")
        require(0.0 <= self.intensity_shift < 1.0, n, f"intensity_shift={self.intensity_shift} must be in [0, 1)")
        require(0.0 <= self.translate <= 0.25, n, f"translate={self.translate} must be in [0, 0.25] (a fraction of the crop)")


@dataclasses.dataclass(frozen=True)
class TrainConfig(Config):
    """One fold's training.  Defaults are the paper's (Adam, lr 1e-4, wd 1e-4, batch 6, 300 epochs).

    ``precision``: ``auto`` = bf16 autocast + channels_last_3d on CUDA, fp32 on CPU.
    ``threshold``: ``fixed`` (``threshold_value``, 0.5) or ``youden`` (Youden's J on the
    out-of-fold predictions, applied when the CV summary is computed; per-epoch metrics
    always use ``threshold_value``).  ``num_threads``: torch intra-op threads per worker
    (None = leave torch's default; the CV runner sets cores / parallel folds).
    ``deterministic``: ``torch.use_deterministic_algorithms(True, warn_only=True)``; None
    (default) = on CPU only (on CUDA deterministic 3D-conv kernels cost speed, and
    ``cudnn.benchmark`` is turned on instead).

    ``selection``: which checkpoint a fold keeps as ``best.pt`` and reports (docs/evaluation.md).
    ``inner`` (default): the best epoch on an *inner* validation split taken from the fold's
    training cases (patient-grouped, label-stratified, ``inner_fraction`` of the patients,
    seeded by ``inner_seed``); the fold's validation cases never influence the choice, so
    their score is an honest estimate.  ``val``: the best epoch on the fold's own
    validation cases (the paper's procedure; optimistic, the selection saw those labels).
    ``last``: the last epoch.  Whatever the rule, the CV summary also reports the
    best-validation-epoch (labelled optimistic) and last-epoch estimates.

    ``lr_schedule``: ``constant`` (the paper) or ``cosine`` (decay to ``lr * min_lr_ratio``
    by the last epoch); ``warmup_epochs`` of linear warm-up precede either
    (:mod:`distmsfa.training.schedule`).

    ``compile``: ``torch.compile`` of the model for training and evaluation; ``auto`` = on
    on CUDA, off on CPU (compiling a small CPU model costs more than it saves).  With
    compile on, shapes are kept fixed so nothing recompiles after the first epoch: a short
    last *training* batch is dropped (padding would enter BatchNorm's batch statistics and
    the gradient; the epoch order is reshuffled, so every case still trains), and a short
    *evaluation* batch is padded with copies of its last case whose outputs are discarded
    (eval-mode BatchNorm treats cases independently).  A compiled step that fails where the
    eager one runs (a compiler bug such as pytorch/pytorch#171622): ``auto`` goes on eagerly
    with one warning, ``on`` stops with a one-line error naming ``compile: off``.  See
    docs/training.md "GPU speed".

    ``ema_decay``: 0 (default) = off; in (0, 1) = an exponential moving average of the
    weights (and BatchNorm statistics) is updated after every optimizer step, and every
    evaluation and the kept checkpoint use it instead of the raw weights (0.99-0.999 usual;
    the horizon is about ``1 / (1 - ema_decay)`` steps).  ``ema_warmup``: the decay of the
    update after ``n`` updates is ``min(ema_decay, (1 + n) / (10 + n))`` so the early average
    follows the fast-moving first steps (:mod:`distmsfa.training.ema`; docs/training.md,
    "Weight averaging (EMA)")."""

    model: str = "msfanet"
    model_cfg: dict[str, Any] = field(default_factory=dict)
    epochs: int = 300
    batch_size: int = 6
    lr: float = 1e-4
    lr_schedule: str = "constant"
    warmup_epochs: int = 0
    min_lr_ratio: float = 0.0
    weight_decay: float = 1e-4
    grad_clip: Optional[float] = None
    seed: int = 0
    precision: str = "auto"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    threshold: str = "fixed"
    threshold_value: float = 0.5
    num_threads: Optional[int] = None
    deterministic: Optional[bool] = None
    selection: str = "inner"
    inner_fraction: float = 0.2
    inner_seed: int = 0
    compile: str = "auto"
    ema_decay: float = 0.0
    ema_warmup: bool = True

    def __post_init__(self) -> None:
        n = type(self).__name__
        require(isinstance(self.model, str) and bool(self.model), n, "model must be a registry name (see `distmsfa models`)")
        require(isinstance(self.model_cfg, dict), n, "model_cfg must be a mapping of model keyword arguments")
        require(isinstance(self.epochs, int) and self.epochs >= 1, n, f"epochs={self.epochs!r} must be an integer >= 1")
        require(isinstance(self.batch_size, int) and self.batch_size >= 2, n,
                f"batch_size={self.batch_size!r} must be an integer >= 2 (BatchNorm needs two cases)")
        require(self.lr > 0, n, f"lr={self.lr} must be > 0 (paper: 1e-4)")
        require(self.lr_schedule in LR_SCHEDULES, n, f"lr_schedule={self.lr_schedule!r}; use one of {LR_SCHEDULES}")
        require(isinstance(self.warmup_epochs, int) and 0 <= self.warmup_epochs < self.epochs, n,
                f"warmup_epochs={self.warmup_epochs!r} must be an integer in [0, epochs={self.epochs})")
        require(0.0 <= self.min_lr_ratio <= 1.0, n, f"min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        require(self.weight_decay >= 0, n, f"weight_decay={self.weight_decay} must be >= 0 (paper: 1e-4)")
        require(self.grad_clip is None or self.grad_clip > 0, n, f"grad_clip={self.grad_clip} must be > 0 or null")
        require(self.precision in PRECISIONS, n, f"precision={self.precision!r}; use one of {PRECISIONS}")
        require(self.threshold in THRESHOLD_POLICIES, n, f"threshold={self.threshold!r}; use one of {THRESHOLD_POLICIES}")
        require(0.0 < self.threshold_value < 1.0, n, f"threshold_value={self.threshold_value} must be in (0, 1)")
        require(self.num_threads is None or self.num_threads >= 1, n, f"num_threads={self.num_threads} must be >= 1 or null")
        require(self.selection in SELECTIONS, n,
                f"selection={self.selection!r}; use one of {SELECTIONS} (inner = honest, val = the paper's, optimistic)")
        require(0.05 <= self.inner_fraction <= 0.5, n,
                f"inner_fraction={self.inner_fraction} must be in [0.05, 0.5] (share of the training patients held out)")
        require(isinstance(self.augment, AugmentConfig), n, "augment must be a mapping of AugmentConfig keys")
        if isinstance(self.compile, bool):  # YAML 1.1 reads a bare on/off as a boolean
            object.__setattr__(self, "compile", "on" if self.compile else "off")
        require(self.compile in COMPILE_MODES, n,
                f"compile={self.compile!r}; use one of {COMPILE_MODES} (auto = on for CUDA, off on CPU)")
        require(isinstance(self.ema_decay, (int, float)) and not isinstance(self.ema_decay, bool)
                and 0.0 <= self.ema_decay < 1.0, n,
                f"ema_decay={self.ema_decay!r} must be in [0, 1): 0 = no weight averaging, e.g. 0.99 or 0.999 "
                f"to average over about 100 or 1000 steps")
        require(isinstance(self.ema_warmup, bool), n, f"ema_warmup={self.ema_warmup!r} must be true or false")


@dataclasses.dataclass(frozen=True)
class CVConfig(Config):
    """How a CV run is laid onto the cluster.

    ``folds``: which folds to run (None = all in folds.parquet).  ``gpus_per_fold``: GPU
    share of a fold's worker; 1.0 = one GPU each, 0.5 = two folds share a GPU (only when
    asked).  ``cpus_per_fold``: CPUs reserved by a fold's worker.  ``data_cpus``: CPU
    share of each Ray Data loading task (small, so loading is never starved by the
    workers).  ``max_parallel``: cap on folds running at once (None = what the cluster
    fits).  ``max_failures``: worker failures a fold recovers from (from its last
    checkpoint).  ``materialize_train``: load the fold's training pairs into the object
    store once (False: stream them from storage every epoch, for sets larger than the
    object store; costs a Ray Data execution per epoch).  ``materialize_val``: keep each fold's validation pairs in the object
    store instead of re-reading them every epoch.  ``read_concurrency``: cap on a fold's
    parallel Ray Data read tasks (None = Ray Data decides; each task is a process).
    ``workers_per_fold``: Ray Train workers (DDP ranks) per fold, each with
    ``gpus_per_fold`` GPU and ``cpus_per_fold`` CPUs; > 1 when there are more GPUs than
    folds (docs/training.md, "Several GPUs per fold"); ``batch_size`` is then per worker."""

    folds: Optional[tuple[int, ...]] = None
    gpus_per_fold: float = 1.0
    cpus_per_fold: float = 1.0
    data_cpus: float = 0.25
    max_parallel: Optional[int] = None
    max_failures: int = 3
    materialize_train: bool = True
    materialize_val: bool = True
    read_concurrency: Optional[int] = 2
    workers_per_fold: int = 1

    def __post_init__(self) -> None:
        n = type(self).__name__
        require(self.folds is None or (len(self.folds) > 0 and all(isinstance(f, int) and f >= 0 for f in self.folds)),
                n, f"folds={self.folds!r} must be a non-empty list of fold numbers, e.g. [0, 1, 2, 3]")
        require(self.folds is None or len(set(self.folds)) == len(self.folds), n, f"folds={self.folds!r} repeats a fold")
        require(0 < self.gpus_per_fold <= 8, n, f"gpus_per_fold={self.gpus_per_fold} must be in (0, 8]; 0.5 = two folds per GPU")
        require(self.cpus_per_fold > 0, n, f"cpus_per_fold={self.cpus_per_fold} must be > 0")
        require(0 < self.data_cpus <= 4, n, f"data_cpus={self.data_cpus} must be in (0, 4]")
        require(self.max_parallel is None or self.max_parallel >= 1, n, f"max_parallel={self.max_parallel} must be >= 1 or null")
        require(self.read_concurrency is None or self.read_concurrency >= 1, n,
                f"read_concurrency={self.read_concurrency} must be >= 1 or null")
        require(isinstance(self.workers_per_fold, int) and 1 <= self.workers_per_fold <= 64, n,
                f"workers_per_fold={self.workers_per_fold!r} must be an integer in [1, 64] (DDP workers per fold)")
        require(self.workers_per_fold == 1 or self.gpus_per_fold >= 1, n,
                f"gpus_per_fold={self.gpus_per_fold} with workers_per_fold={self.workers_per_fold}: a fold's DDP "
                f"workers need a whole GPU each (NCCL refuses two ranks on one GPU); use gpus_per_fold: 1")
        require(self.max_failures >= -1, n, f"max_failures={self.max_failures} must be >= 0 (or -1 = unlimited)")
