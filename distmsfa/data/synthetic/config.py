"""Configuration of the synthetic cohort: class balance, findings mix, difficulty knobs."""
from __future__ import annotations

import dataclasses

from distmsfa.config import Config, require

from distmsfa.data.synthetic.sites import BUILTIN_SITES, PROFILES, SiteProfile

#: Non-axSpA subtypes (after the paper's Table 1) and what the generator draws for each.
MIMICS: dict[str, str] = {
    "normal": "low back pain population: no periarticular finding",
    "nonspecific": "non-specific sacroiliitis / incomplete fat suppression: periarticular "
                   "STIR-bright area with no T1 change",
    "degenerative": "degenerative arthritis: small subchondral sclerosis (dark on both), "
                    "anterior-inferior joint, both sides of the joint",
    "oci": "osteitis condensans ilii: large triangular iliac sclerosis, dark on both sequences",
    "remote_oedema": "bone-marrow oedema away from the joint (insufficiency, infection, "
                     "metastasis): STIR-bright and T1-dark but >= 20 mm from the cleft",
}


@dataclasses.dataclass(frozen=True)
class CohortConfig(Config):
    """What the generator draws.  Defaults give a realistic, not perfect, task.

    Difficulty knobs: ``lesion_size`` and ``lesion_contrast`` scale every finding (1 = the
    default; smaller is harder), ``label_noise`` is the fraction of cases whose recorded
    label is flipped (the images keep the true class; ``truth.csv`` keeps the truth).
    """

    profile: str = "demo"
    axspa_fraction: float = 0.45
    label_noise: float = 0.05
    lesion_size: float = 1.0
    lesion_contrast: float = 1.0
    #: non-axSpA subtype weights (normalised); keys of MIMICS
    w_normal: float = 0.10
    w_nonspecific: float = 0.30
    w_degenerative: float = 0.20
    w_oci: float = 0.20
    w_remote_oedema: float = 0.20
    #: findings that occur in BOTH classes, so that no single-sequence sign is specific
    incidental_stir_only: float = 0.25
    incidental_sclerosis: float = 0.25
    #: axSpA cases whose oedema is faint and small (early disease)
    axspa_mild_fraction: float = 0.15
    #: fraction of patients scanned twice (tests patient-grouped folds)
    repeat_scan_rate: float = 0.05
    sites: tuple[SiteProfile, ...] = BUILTIN_SITES

    def __post_init__(self) -> None:
        n = type(self).__name__
        require(self.profile in PROFILES, n, f"profile must be one of {', '.join(PROFILES)}, got {self.profile!r}")
        require(0.05 <= self.axspa_fraction <= 0.95, n, "axspa_fraction must be in [0.05, 0.95]")
        require(0 <= self.label_noise <= 0.5, n, "label_noise must be in [0, 0.5] (0.5 = labels are random)")
        require(0.3 <= self.lesion_size <= 3, n, "lesion_size must be in [0.3, 3] (1 = default)")
        require(0.1 <= self.lesion_contrast <= 3, n, "lesion_contrast must be in [0.1, 3] (1 = default)")
        w = self.mimic_weights()
        require(all(v >= 0 for v in w.values()) and sum(w.values()) > 0, n,
                "the w_* mimic weights must be >= 0 and not all zero")
        for key in ("incidental_stir_only", "incidental_sclerosis", "axspa_mild_fraction", "repeat_scan_rate"):
            require(0 <= getattr(self, key) <= 1, n, f"{key} must be in [0, 1]")
        sites = tuple(SiteProfile.from_dict(s) if isinstance(s, dict) else s for s in self.sites)
        object.__setattr__(self, "sites", sites)
        names = [s.name for s in sites]
        require(len(set(names)) == len(names) and names, n, f"site names must be unique and non-empty, got {names}")

    def mimic_weights(self) -> dict[str, float]:
        return {k: float(getattr(self, f"w_{k}")) for k in MIMICS}

    def site(self, name: str) -> SiteProfile:
        for s in self.sites:
            if s.name == name:
                return s
        raise ValueError(f"unknown site {name!r}; known sites: {', '.join(s.name for s in self.sites)} "
                         "(add a SiteProfile to CohortConfig.sites)")

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["sites"] = [s.to_dict() for s in self.sites]
        return d
