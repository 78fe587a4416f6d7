"""Import every model module so that each registers its factories (see registry.py)."""
from distmsfa.models import backbones, fusion_nets, mil, msfanet, voxel_fusion  # noqa: F401
