"""Models: one registry (``create_model`` / ``list_models``), MSFANet, its Baselines, eight
comparison models, their losses, Grad-CAM and the per-device fast path.  See docs/models.md."""
from distmsfa.models.device import autocast, default_memory_format, default_precision, prepare_for_device, prepare_input
from distmsfa.models.gradcam import gradcam
from distmsfa.models.registry import create_model, list_models, register_model

__all__ = [
    "autocast",
    "create_model",
    "default_memory_format",
    "default_precision",
    "gradcam",
    "list_models",
    "prepare_for_device",
    "prepare_input",
    "register_model",
]
