"""Findings: what each class and subtype carries, and how a finding changes each sequence.

Every finding is a smooth, slightly irregular ellipsoid in the anatomy's local frame with
its own target tissue values ``(t1, fs_water, fat)``.  Where it applies (marrow, or all bone
for erosions) the tissue is blended towards that target with the finding's strength.

Complementarity by construction (see docs/synthetic-cohort.md):

* STIR-bright periarticular marrow appears in both classes: axSpA oedema (``bmo``) and the
  ``stir_only`` mimic share size, position, and STIR brightness distributions; only ``bmo``
  also darkens T1.
* T1-dark periarticular marrow appears in both classes: ``bmo`` and sclerosis (axSpA
  sclerosis, OCI, degenerative, incidental) overlap in T1 darkness; only ``bmo`` is also
  STIR-bright.
* So only the *co-located* "STIR-bright AND T1-dark next to the joint" sign is specific.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from distmsfa.data.synthetic.anatomy import Anatomy
from distmsfa.data.synthetic.config import CohortConfig

#: Lesion-mask label codes (written to cohort.json and docs).
CODES: dict[str, int] = {
    "bmo": 1, "erosion": 2, "sclerosis": 3, "fat_metaplasia": 4,
    "stir_only": 5, "remote_oedema": 6, "oci": 7, "degenerative": 8,
}
AXSPA_KINDS = ("bmo", "erosion", "sclerosis", "fat_metaplasia")
#: Kinds placed next to the joint (inside the ROI); ``remote_oedema`` is placed away from it.
PERIARTICULAR = ("bmo", "erosion", "sclerosis", "fat_metaplasia", "stir_only", "oci", "degenerative")


@dataclasses.dataclass(frozen=True)
class Lesion:
    kind: str
    center: tuple[float, float, float]  # local (u, w, v) mm
    radii: tuple[float, float, float]  # along (u, w, v) mm
    t1: float  # target T1 value (fatty marrow = ~0.92)
    fs_water: float  # target water signal on FS/STIR
    fat: float  # target fat fraction (what fat suppression removes)
    strength: float  # blend weight at the centre, 0..1

    def to_dict(self, anatomy: Anatomy) -> dict:
        return {"kind": self.kind, "code": CODES[self.kind],
                "center_lps_mm": [round(float(x), 2) for x in anatomy.to_lps(np.array(self.center))],
                "radii_mm": [round(r, 2) for r in self.radii], "strength": round(self.strength, 3)}


def membership(les: Lesion, q: np.ndarray, tex: np.ndarray, pix: float) -> np.ndarray:
    """Partial-volume membership in [0, 1] of local points ``q`` (ramp one pixel wide)."""
    r2 = sum(((q[..., i] - np.float32(les.center[i])) / np.float32(les.radii[i])) ** 2 for i in range(3))
    rho = np.sqrt(r2) * (1 + 0.18 * tex)  # irregular border
    return np.clip((1 - rho) * min(les.radii) / pix + 0.5, 0, 1)


def _perijoint(rng: np.random.Generator, anat: Anatomy, kind: str, side: int, bone: str,
               radii: tuple[float, float, float], t1: float, fs: float, fat: float, s: float,
               v_range: tuple[float, float] = (0.05, 0.95), w_range: tuple[float, float] = (0.1, 0.9),
               extra_depth: float = 0.0) -> Lesion:
    """A finding whose near edge touches the subchondral plate of ``bone``."""
    v = anat.v_lo + (anat.v_hi - anat.v_lo) * rng.uniform(*v_range)
    w = -anat.depth / 2 + anat.depth * rng.uniform(*w_range)
    c = anat.joint_point(side, v, w, bone, anat.cortex + radii[0] * rng.uniform(0.5, 0.9) + extra_depth)
    return Lesion(kind, tuple(float(x) for x in c), radii, t1, fs, fat, s)


def _sides(rng: np.random.Generator, p_bilateral: float) -> list[int]:
    first = int(rng.choice([-1, 1]))
    return [first, -first] if rng.random() < p_bilateral else [first]


def _blob_radii(rng: np.random.Generator, scale: float) -> tuple[float, float, float]:
    # (u, w, v): oedema extends along the joint more than into the bone
    return (rng.uniform(3.5, 7) * scale, rng.uniform(4, 8) * scale, rng.uniform(5, 10) * scale)


def _oedema(rng, anat, kind, side, cfg: CohortConfig, scale: float, s_range=(0.65, 1.0)) -> Lesion:
    bone = "ilium" if rng.random() < 0.65 else "sacrum"
    radii = _blob_radii(rng, scale)
    s = rng.uniform(*s_range)
    if kind == "bmo":
        return _perijoint(rng, anat, kind, side, bone, radii, rng.uniform(0.25, 0.45), rng.uniform(0.7, 0.9), 0.15, s)
    # stir_only: same geometry and STIR brightness, T1 stays at fatty marrow
    return _perijoint(rng, anat, kind, side, bone, radii, rng.uniform(0.86, 0.95), rng.uniform(0.7, 0.9), 0.8, s)


def _sclerosis(rng, anat, kind, side, bone, scale, thin: bool, lower: bool = False) -> Lesion:
    if thin:
        radii = (rng.uniform(2.5, 4.5) * scale, rng.uniform(4, 8) * scale, rng.uniform(6, 11) * scale)
    else:
        radii = (rng.uniform(5, 8) * scale, rng.uniform(6, 10) * scale, rng.uniform(8, 13) * scale)
    v_range = (0.08, 0.45) if lower else (0.05, 0.95)
    w_range = (0.05, 0.5) if lower else (0.1, 0.9)
    return _perijoint(rng, anat, kind, side, bone, radii, rng.uniform(0.2, 0.45), rng.uniform(0.03, 0.08),
                      0.05, rng.uniform(0.7, 1.0), v_range, w_range)


def sample_findings(rng: np.random.Generator, anat: Anatomy, axspa: bool, subtype: str,
                    cfg: CohortConfig) -> list[Lesion]:
    """Draw the findings of one case (true class ``axspa``, subtype name)."""
    size = cfg.lesion_size
    out: list[Lesion] = []
    if axspa:
        mild = subtype == "axspa_mild"
        scale = size * (0.65 if mild else 1.0)
        s_range = (0.4, 0.6) if mild else (0.65, 1.0)
        n = 1 if mild else int(rng.integers(1, 4))
        sides = _sides(rng, 0.15 if mild else 0.55)
        for i in range(n):
            out.append(_oedema(rng, anat, "bmo", sides[i % len(sides)], cfg, scale, s_range))
        if rng.random() < 0.5 and not mild:
            for _ in range(int(rng.integers(1, 4))):
                r = rng.uniform(1.5, 3.0) * size
                out.append(_perijoint(rng, anat, "erosion", int(rng.choice(sides)), "ilium", (r, r, r * 1.3),
                                      0.32, 0.65, 0.0, rng.uniform(0.7, 1.0), extra_depth=-anat.cortex - r * 0.6))
        if rng.random() < 0.4:
            out.append(_sclerosis(rng, anat, "sclerosis", int(rng.choice(sides)), "ilium", size, thin=True))
        if rng.random() < 0.35:
            r = _blob_radii(rng, size * 0.7)
            out.append(_perijoint(rng, anat, "fat_metaplasia", int(rng.choice([-1, 1])),
                                  "ilium" if rng.random() < 0.6 else "sacrum", r, 1.12, 0.03, 1.0,
                                  rng.uniform(0.6, 0.9)))
    elif subtype == "nonspecific":
        sides = _sides(rng, 0.55)
        for i in range(int(rng.integers(1, 4))):
            out.append(_oedema(rng, anat, "stir_only", sides[i % len(sides)], cfg, size))
    elif subtype == "oci":
        for side in _sides(rng, 0.7):
            out.append(_sclerosis(rng, anat, "oci", side, "ilium", size, thin=False, lower=True))
    elif subtype == "degenerative":
        for side in _sides(rng, 0.6):
            for bone in ("ilium", "sacrum"):
                if bone == "ilium" or rng.random() < 0.6:
                    out.append(_sclerosis(rng, anat, "degenerative", side, bone, size * 0.85, thin=True, lower=True))
    elif subtype == "remote_oedema":
        radii = _blob_radii(rng, size)
        v = rng.uniform(anat.v_lo + 8, anat.v_hi - 4)
        hw = float(anat.half_width(np.array(1.0), np.array(0.0), np.array(v)))
        lim = max(hw - 20 - radii[0], 0.0)  # >= 20 mm from the cleft, in the sacral body
        c = (rng.uniform(-lim, lim), rng.uniform(-anat.depth / 3, anat.depth / 4), v)
        out.append(Lesion("remote_oedema", c, radii, rng.uniform(0.28, 0.5), rng.uniform(0.7, 0.9), 0.15,
                          rng.uniform(0.65, 1.0)))
    # Incidental findings in both classes: no single-sequence sign is specific.
    if rng.random() < cfg.incidental_stir_only:
        out.insert(0, _oedema(rng, anat, "stir_only", int(rng.choice([-1, 1])), cfg, size))
    if rng.random() < cfg.incidental_sclerosis:
        out.insert(0, _sclerosis(rng, anat, "degenerative", int(rng.choice([-1, 1])), "ilium", size * 0.85,
                                 thin=True, lower=True))
    # lesion_contrast scales how far each finding moves the tissue from normal marrow
    # (> 1 extrapolates beyond the target: stronger contrast).
    c = cfg.lesion_contrast
    return [dataclasses.replace(les, strength=float(les.strength * c), radii=tuple(float(r) for r in les.radii))
            for les in out]


def draw_subtype(rng: np.random.Generator, axspa: bool, cfg: CohortConfig) -> str:
    if axspa:
        return "axspa_mild" if rng.random() < cfg.axspa_mild_fraction else "axspa"
    w = cfg.mimic_weights()
    names = list(w)
    p = np.array([w[k] for k in names], dtype=float)
    return str(names[int(rng.choice(len(names), p=p / p.sum()))])


def lesion_bounds(les: Lesion) -> float:
    """Radius (mm) of a sphere around the centre that holds the whole (irregular) finding."""
    return max(les.radii) * 1.3 + 1.0

