"""The README's main job: synthetic cohort -> preprocessing -> 4-fold CV of MSFANet on a local Ray.

Everything here is a call into the library; the CLI command ``distmsfa demo`` only parses.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: Preprocessing for the CPU demo: coarse spacing (mm, D,H,W) and a small crop (voxels, D,H,W)
#: so that 4-fold CV of MSFANet finishes in minutes on two cores.
DEMO_SPACING_MM = (5.0, 2.5, 2.5)
DEMO_CROP = (8, 48, 64)


@dataclass(frozen=True)
class DemoResult:
    manifest: Path
    data: Path
    run_dir: Path
    summary: dict


def run_demo(
    out: str | Path,
    *,
    n: int = 120,
    seed: int = 0,
    model: str = "msfanet",
    profile: str = "cpu",
    address: str | None = None,
    epochs: int | None = None,
) -> DemoResult:
    """Generate the cohort, preprocess it with Ray Data, run k-fold CV with Ray Train."""
    from distmsfa.data import PreprocessConfig, build_dataset
    from distmsfa.data.synthetic import generate_cohort
    from distmsfa.training import run_cv

    out = Path(out)
    manifest = generate_cohort(out / "cohort", n=n, seed=seed)
    data = out / "data"
    pre = PreprocessConfig(target_spacing_mm=DEMO_SPACING_MM, crop_size=DEMO_CROP, seed=seed)
    build_dataset(manifest, data, pre, address=address, external_sites=("NHH",))
    overrides = {"epochs": epochs} if epochs else {}
    result = run_cv(data, model, profile=profile, out=out / "runs", address=address, overrides=overrides)
    return DemoResult(manifest=manifest, data=data, run_dir=result.run_dir, summary=result.summary)
