"""The localiser: a MONAI 3D UNet on the coarse grid, its post-processing and plausibility.

``predict_roi(localiser, t1, fs)`` -> ``(label map on the coarse grid, info)``:

1. ``prepare_case`` samples T1 + FS onto the coarse grid (``grid.py``);
2. the net gives softmax probabilities of (background, left, right);
3. per joint: argmax mask, largest 26-connected component (scipy.ndimage), centroid weighted
   by the joint's probability inside that component, volume in mL;
4. plausibility (``LocaliserConfig``): both joints found, each volume in range, the left
   joint on the patient's left (LPS +x) of the right one, their distance in range, the ROI
   centroid near the T1's centre.  Any failure raises ``RoiPredictionError`` naming it.

Why MONAI ``UNet`` (and not BasicUNet / SegResNet): at 4-5 mm over the whole field of view
two blob-like joints are a coarse task; UNet's channel list lets the net be tiny (default
8-16-32 features, 30 k parameters, a CPU forward in milliseconds), it takes any grid
divisible by 2^(levels-1), and residual units are one option away for larger grids.
BasicUNet fixes six feature levels (heavier, 32+ features by default); SegResNet brings
deep supervision and VAE options we do not need.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from distmsfa.io.errors import ImageReadError
from distmsfa.localiser.config import JOINTS, LEFT, RIGHT, LocaliserConfig
from distmsfa.localiser.grid import CoarseCase, index_to_mm, prepare_case


class RoiPredictionError(ImageReadError):
    """The localiser found no plausible pair of sacroiliac joints (a per-case error)."""


def build_net(cfg: LocaliserConfig) -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=2 + len(cfg.coord_axes), out_channels=3, channels=cfg.channels,
                strides=(2,) * (len(cfg.channels) - 1), num_res_units=cfg.num_res_units, norm="INSTANCE")


def with_coords(xb: torch.Tensor, cfg: LocaliserConfig) -> torch.Tensor:
    """(B, 2, D, H, W) -> (B, 2 + len(cfg.coord_axes), D, H, W): the image channels plus the
    voxel coordinates (in [-1, 1]) of the axes in ``cfg.coord_axes``."""
    if not cfg.coord_axes:
        return xb
    b, _, d, h, w = xb.shape
    axes = [torch.linspace(-1.0, 1.0, n, dtype=xb.dtype, device=xb.device) for n in (d, h, w)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))
    keep = [i for i, a in enumerate("DHW") if a in cfg.coord_axes]
    return torch.cat([xb, grid[keep][None].expand(b, -1, -1, -1, -1)], dim=1)


class Localiser:
    """A config, a net (eval mode) and training metadata.  Plain Python: Serve/Ray wrap it.

    The net sees ``with_coords(x)``; callers give ``x`` (B, 2, D, H, W) as in ``grid.py``."""

    def __init__(self, cfg: LocaliserConfig, net: nn.Module | None = None, meta: dict | None = None,
                 device: str | torch.device = "cpu") -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.net = (net or build_net(cfg)).to(self.device).eval()
        self.meta = dict(meta or {})

    @torch.no_grad()
    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """``x`` (2, D, H, W) or (B, 2, D, H, W) float32 -> softmax (.., 3, D, H, W) float32."""
        xb = torch.as_tensor(x, dtype=torch.float32)
        single = xb.dim() == 4
        xb = (xb[None] if single else xb).to(self.device)
        if tuple(xb.shape[2:]) != self.cfg.grid_size_dhw or xb.shape[1] != 2:
            raise ValueError(f"localiser input must be (B, 2, {', '.join(map(str, self.cfg.grid_size_dhw))}), "
                             f"got {tuple(xb.shape)}")
        self.net.eval()
        p = torch.softmax(self.net(with_coords(xb, self.cfg)).float(), dim=1).cpu().numpy()
        return p[0] if single else p


def _largest_component(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(lab.ravel())[1:]
    return lab == (int(sizes.argmax()) + 1)


def postprocess(prob: np.ndarray, ref: sitk.Image, centre_mm: np.ndarray, cfg: LocaliserConfig,
                check: bool = True) -> tuple[sitk.Image, dict]:
    """Softmax ``(3, D, H, W)`` on grid ``ref`` -> (label map image, info); see module doc.

    ``info``: ``centroids_mm`` {left, right, roi: [x, y, z] LPS}, ``volumes_ml`` {left, right},
    ``mean_prob`` {left, right} (mean joint probability inside its mask), ``separation_mm``,
    ``centre_offset_mm``, ``grid`` (size/spacing/origin/direction).  ``check=False`` skips the
    plausibility errors (evaluation keeps going to measure bad predictions)."""
    arg = prob.argmax(0)
    labels = np.zeros(arg.shape, np.uint8)
    info: dict = {"centroids_mm": {}, "volumes_ml": {}, "mean_prob": {}, "problems": []}
    for name, lab in JOINTS.items():
        comp = _largest_component(arg == lab)
        vol = float(comp.sum()) * cfg.voxel_ml
        info["volumes_ml"][name] = round(vol, 2)
        if not comp.any():
            info["problems"].append(f"no {name} joint found")
            continue
        labels[comp] = lab
        w = prob[lab] * comp
        idx = (np.argwhere(comp) * w[comp][:, None]).sum(0) / w[comp].sum()
        info["centroids_mm"][name] = [round(float(v), 2) for v in index_to_mm(ref, idx)]
        info["mean_prob"][name] = round(float(prob[lab][comp].mean()), 3)
        if vol < cfg.min_joint_volume_ml:
            info["problems"].append(f"{name} joint too small ({vol:.1f} mL < {cfg.min_joint_volume_ml:g} mL)")
        elif vol > cfg.max_joint_volume_ml:
            info["problems"].append(f"{name} joint too large ({vol:.1f} mL > {cfg.max_joint_volume_ml:g} mL)")
    c = info["centroids_mm"]
    if "left" in c and "right" in c:
        left, right = np.asarray(c["left"]), np.asarray(c["right"])
        sep = float(np.linalg.norm(left - right))
        info["separation_mm"] = round(sep, 1)
        roi_c = (left + right) / 2.0
        c["roi"] = [round(float(v), 2) for v in roi_c]
        off = float(np.linalg.norm(roi_c - centre_mm))
        info["centre_offset_mm"] = round(off, 1)
        if left[0] <= right[0]:  # LPS: +x is the patient's left
            info["problems"].append("left and right joints swapped (the 'left' joint lies on the patient's right)")
        if not cfg.min_separation_mm <= sep <= cfg.max_separation_mm:
            info["problems"].append(f"joints {sep:.0f} mm apart (plausible: {cfg.min_separation_mm:g}-"
                                    f"{cfg.max_separation_mm:g} mm)")
        if off > cfg.max_centre_offset_mm:
            info["problems"].append(f"ROI centre {off:.0f} mm from the image centre (> {cfg.max_centre_offset_mm:g} mm)")
    info["grid"] = {"size_xyz": list(ref.GetSize()), "spacing_xyz": list(ref.GetSpacing()),
                    "origin": list(ref.GetOrigin()), "direction": list(ref.GetDirection())}
    img = sitk.GetImageFromArray(labels)
    img.CopyInformation(ref)
    if check and info["problems"]:
        raise RoiPredictionError(
            "roi: no plausible sacroiliac joints predicted (" + "; ".join(info["problems"])
            + "); check that the scan covers the sacroiliac joints or give the ROI by hand")
    return img, info


def predict_case(localiser: Localiser, case: CoarseCase, check: bool = True) -> tuple[sitk.Image, dict]:
    prob = localiser.probabilities(case.x)
    return postprocess(prob, case.ref, case.image_centre_mm, localiser.cfg, check=check)


def predict_roi(localiser: Localiser, t1: sitk.Image, fs: sitk.Image, check: bool = True) -> tuple[sitk.Image, dict]:
    """Predict the left/right sacroiliac ROI of one study.

    ``t1``, ``fs``: SimpleITK images of one session (any grids, physical overlap).  Returns the
    label map (UInt8, 1 = left, 2 = right) on the coarse grid in the patient frame, usable as
    ``Roi(label_map=...)`` for ``preprocess_images``, and an info dict (``postprocess``).
    Raises ``RoiPredictionError`` (an ``ImageReadError``) when the prediction is implausible."""
    case = prepare_case(t1, fs, localiser.cfg)
    return predict_case(localiser, case, check=check)


__all__ = ["Localiser", "RoiPredictionError", "build_net", "postprocess", "predict_case", "predict_roi", "LEFT", "RIGHT"]
