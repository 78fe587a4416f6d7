"""The scoring service: a model bundle behind an HTTP API (docs/serving.md).

Plain Python (no Ray): ``uploads`` (multipart parsing), ``cases`` (private temp folder, zip
safety, reading, ROI checks, identifier scrubbing), ``service`` (prepare -> predict ->
answer), ``heatmaps`` (Grad-CAM files), ``client`` (``distmsfa score``), ``auth``,
``settings``, ``errors``.  Ray adapters: ``ray_serve`` (the deployments) and ``runner``
(start / stop / serve_and_score).  Public names are imported lazily (Ray only on demand)."""
from __future__ import annotations

import importlib

_EXPORTS = {
    "ServeError": "distmsfa.serving.errors",
    "ServeSettings": "distmsfa.serving.settings",
    "score_in_process": "distmsfa.serving.service",
    "score_manifest": "distmsfa.serving.client",
    "ScoreReport": "distmsfa.serving.client",
    "build_app": "distmsfa.serving.ray_serve",
    "app_builder": "distmsfa.serving.ray_serve",
    "start": "distmsfa.serving.runner",
    "stop": "distmsfa.serving.runner",
    "serve_and_score": "distmsfa.serving.runner",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'distmsfa.serving' has no attribute {name!r}")
