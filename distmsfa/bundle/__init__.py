"""The model bundle: a folder of data (never code) that carries a CV run's fold models, the
preprocessing, the threshold and the metrics to evaluation and serving (docs/bundle.md).

Public API (core: imports no Ray)::

    export_bundle(run_dir, out, *, checkpoint="selected", threshold_policy="youden", force=False) -> Path
    verify_bundle(path) -> dict          # bundle.json; BundleError naming the file otherwise
    load_bundle(path, device=None, precision="auto", compile="auto", batch_size=8) -> EnsemblePredictor
    bundle_info(path) -> dict
    BundleError
"""
from __future__ import annotations

from distmsfa.bundle.export import export_bundle
from distmsfa.bundle.layout import FORMAT, BundleError, bundle_checksum, bundle_info, verify_bundle
from distmsfa.bundle.predictor import EnsemblePredictor, load_bundle

__all__ = ["FORMAT", "BundleError", "EnsemblePredictor", "bundle_checksum", "bundle_info", "export_bundle",
           "load_bundle", "verify_bundle"]
