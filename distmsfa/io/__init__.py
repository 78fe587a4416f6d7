"""Raw inputs: the case manifest and SimpleITK readers (no Ray here)."""
from distmsfa.io.errors import ImageReadError
from distmsfa.io.manifest import CaseSpec, Manifest, ManifestError, RowProblem, load_manifest, validate_manifest
from distmsfa.io.readers import Header, LoadedImage, read_header, read_image, read_label_map

__all__ = [
    "CaseSpec", "Header", "ImageReadError", "LoadedImage", "Manifest", "ManifestError", "RowProblem",
    "load_manifest", "read_header", "read_image", "read_label_map", "validate_manifest",
]
