"""The data stage: preprocessing raw cases into the dataset on disk (see ``index.py``).

Public API (imported lazily so that ``import distmsfa.data`` stays light):

* ``PAPER_CROP_DHW`` - the paper's crop (24, 224, 320) in array order (D, H, W)
* ``PreprocessConfig``, ``build_dataset(...) -> BuildReport`` - the library entry point
* ``preprocess_images`` - the pure per-case pipeline (SimpleITK images in, arrays out)
* ``assign_folds``, ``dataset_fingerprint``, ``dataset_summary``, ``render_montage``
"""
from __future__ import annotations

import importlib
from typing import Any

#: The paper's "24x320x224" crop as (slices, S->I, R->L) = array order (D, H, W).
PAPER_CROP_DHW: tuple[int, int, int] = (24, 224, 320)

_LAZY = {
    "PreprocessConfig": "distmsfa.data.preprocess",
    "Roi": "distmsfa.data.preprocess",
    "Preprocessed": "distmsfa.data.preprocess",
    "preprocess_images": "distmsfa.data.preprocess",
    "build_dataset": "distmsfa.data.build",
    "BuildReport": "distmsfa.data.build",
    "assign_folds": "distmsfa.data.folds",
    "dataset_fingerprint": "distmsfa.data.fingerprint",
    "params_fingerprint": "distmsfa.data.fingerprint",
    "dataset_summary": "distmsfa.data.inspect",
    "render_montage": "distmsfa.data.inspect",
    "inspect_dataset": "distmsfa.data.inspect",
}

__all__ = ["PAPER_CROP_DHW", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'distmsfa.data' has no attribute {name!r}")
