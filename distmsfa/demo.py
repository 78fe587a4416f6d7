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
#: The demo crop is masked to 7.5 mm around the sacroiliac ROI ("ROI extraction"; the
#: synthetic cohort puts look-alike findings outside the joints, as real patients have them;
#: docs/preprocessing.md, "Masking the crop to the ROI", and docs/models.md, issue 15).
DEMO_ROI_MASK_MM = 7.5


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
    profile: str = "demo",
    address: str | None = None,
    epochs: int | None = None,
    folds: int = 4,
    resume: bool = False,
) -> DemoResult:
    """Generate the cohort, preprocess it with Ray Data, run ``folds``-fold CV with Ray Train.

    ``resume``: reuse the cohort of ``out`` and continue its newest unfinished CV run."""
    from distmsfa.data import PreprocessConfig, build_dataset
    from distmsfa.data.synthetic import generate_cohort
    from distmsfa.runtime import ray_session
    from distmsfa.training import run_cv

    import os
    import time

    out = Path(out)
    # One Ray session for both stages (each would otherwise start and stop its own), with
    # logical CPUs for the four folds to run at once: a fold's worker reserves one CPU and
    # its data loading a quarter (docs/training.md, "Resources").  A local Ray is shut down
    # with all its processes at the end, also when the demo is interrupted.
    with ray_session(address, num_cpus=max(5, os.cpu_count() or 1)):
        # Generation is per-case seeded, so the worker count never changes the cohort.
        manifest = out / "cohort" / "manifest.csv"
        if not (resume and manifest.exists()):
            manifest = generate_cohort(out / "cohort", n=n, seed=seed, workers=min(2, os.cpu_count() or 1))
        data = out / "data"
        pre = PreprocessConfig(target_spacing_mm=DEMO_SPACING_MM, crop_size=DEMO_CROP, roi_mask_mm=DEMO_ROI_MASK_MM, seed=seed, n_folds=folds)
        # force: the demo's dataset is exactly its generated cohort (a smaller --n drops the extra cases)
        build_dataset(manifest, data, pre, address=address, external_sites=("NHH",), force=True)
        overrides: dict = {}
        if epochs:  # a shorter run keeps the profile's warm-up only where it fits (a quick check: --epochs 1)
            from distmsfa.training.profiles import get_profile

            warmup = int(get_profile(profile)["train"].get("warmup_epochs", 0) or 0)
            overrides = {"epochs": epochs, **({"warmup_epochs": epochs - 1} if warmup >= epochs else {})}
        # A fresh run folder per invocation: re-running the demo never collides with an old run
        # (cohort and dataset are reused: preprocessing skips unchanged cases); --resume
        # continues the newest unfinished one.
        run_dir = latest_unfinished_run(out, model) if resume else None
        if run_dir is None:
            run_dir = out / "runs" / f"{model}-{time.strftime('%Y%m%d-%H%M%S')}"
        result = run_cv(data, model, profile=profile, out=run_dir, address=address, overrides=overrides,
                        resume=(run_dir / "run.json").exists())
    return DemoResult(manifest=manifest, data=data, run_dir=result.run_dir, summary=result.summary)


def latest_unfinished_run(out: str | Path, model: str) -> Path | None:
    """The newest run folder of ``model`` under ``out/runs`` without a summary (an
    interrupted demo's CV), or None."""
    runs = sorted(p for p in (Path(out) / "runs").glob(f"{model}-*")
                  if (p / "run.json").exists() and not (p / "summary.json").exists())
    return runs[-1] if runs else None
