"""Synthetic two-sequence (T1WI + FS/STIR) sacroiliac-joint cohort: the embedded demo data.

Public API::

    from distmsfa.data.synthetic import generate_cohort, CohortConfig, SiteProfile
    manifest = generate_cohort("demo_data", n=120, sites=("TAH", "NHH"), external_site="NHH")

See docs/synthetic-cohort.md for the anatomy, findings, acquisition model and the
complementarity guarantee (neither sequence alone separates the classes as well as both).
"""
from distmsfa.data.synthetic.cohort import MANIFEST_COLUMNS, generate_cohort, plan_cohort
from distmsfa.data.synthetic.config import MIMICS, CohortConfig
from distmsfa.data.synthetic.findings import CODES as LESION_CODES
from distmsfa.data.synthetic.joints import joint_truth
from distmsfa.data.synthetic.sites import (
    BUILTIN_SITES, CLINICAL, DEMO, PROFILES, AcquisitionProfile, SiteProfile, get_profile,
)

__all__ = [
    "generate_cohort", "plan_cohort", "CohortConfig", "SiteProfile", "AcquisitionProfile",
    "BUILTIN_SITES", "PROFILES", "DEMO", "CLINICAL", "get_profile", "MANIFEST_COLUMNS",
    "MIMICS", "LESION_CODES", "joint_truth",
]
