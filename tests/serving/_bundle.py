"""A small bundle made in the test: the training tests' tiny dataset, a fingerprint at a
spacing that puts the synthetic cohort's sacroiliac ROI inside the crop, a 1-epoch plain CV."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "training"))
from _tiny import SHAPE, make_tiny_dataset  # noqa: E402

SPACING = (4.0, 4.0, 4.0)  # crop (8, 32, 32) voxels = 32 x 128 x 128 mm


def make_bundle(base: Path) -> Path:
    from distmsfa.bundle import export_bundle
    from distmsfa.data.fingerprint import params_fingerprint, params_payload
    from distmsfa.data.preprocess import PreprocessConfig
    from distmsfa.training.cv import run_cv

    root = make_tiny_dataset(base / "data")
    cfg = PreprocessConfig(target_spacing_mm=SPACING, crop_size=SHAPE[1:], n_folds=2, seed=0)
    stats = {"n": 18, "median_spacing_dhw": [4.0, 1.6, 1.6], "min_spacing_dhw": [3.5, 1.2, 1.2],
             "max_spacing_dhw": [4.5, 1.7, 1.7], "median_size_dhw": [16, 128, 128]}
    meta = {"dataset": {"orientation": "LIP", "headers_skipped": 0, "t1": stats, "fs": stats},
            "params": params_payload(cfg, SPACING), "fingerprint": params_fingerprint(cfg, SPACING),
            "folds": {"n_folds": 2, "seed": 0, "external_sites": ["EXT"]}}
    (root / "fingerprint.json").write_text(json.dumps(meta, indent=2))
    run_cv(root, "msfanet", profile="cpu", plain=True, out=base / "run", progress=False,
           overrides={"epochs": 1, "batch_size": 4, "num_threads": 1, "threshold": "youden"})
    return export_bundle(base / "run", base / "bundle")
