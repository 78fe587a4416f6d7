"""Per-patient sacroiliac anatomy as analytic signed distances in a local frame.

The phantom is continuous: every sequence samples the same physical object on its own grid,
so T1 and FS agree in physical space whatever their spacing, matrix and field of view.

Local frame (millimetres), origin at the midpoint between the two joints, mid joint height
and mid joint depth::

    u  towards patient left   (LPS +x before the patient's rotation)
    w  towards posterior      (LPS +y)
    v  towards superior       (LPS +z)

Signed distances are positive inside a structure; they are approximate (minimum of the
margins to each bounding surface), which is enough for partial-volume ramps and masks.
Shapes: the sacrum is a wedge that narrows inferiorly and posteriorly (the joints converge
downwards and run antero-lateral to postero-medial, as on axial images); each ilium lies
lateral to a 2-3 mm joint cleft over the cartilaginous (anterior) part of the joint, with
the interosseous ligament behind it; muscle, pelvic fat, iliac vessels, sacral foramina
and a subcutaneous fat layer surround the bones.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np


def rotation(ax_deg: float, ay_deg: float, az_deg: float) -> np.ndarray:
    """Rotation matrix Rz @ Ry @ Rx (angles in degrees about LPS x, y, z)."""
    a, b, c = (math.radians(t) for t in (ax_deg, ay_deg, az_deg))
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


@dataclasses.dataclass(frozen=True)
class Anatomy:
    """One patient's pelvis.  ``center_lps`` and ``rotation`` place the local frame in LPS."""

    center_lps: tuple[float, float, float]
    rotation: tuple[tuple[float, ...], ...]  # 3x3, columns = local (u, w, v) axes in LPS
    hw0: float  # sacral half-width at the joint centre (mm)
    slope_v: float  # widening per mm towards superior
    slope_w: float  # narrowing per mm towards posterior
    gap: float  # joint cleft width
    v_lo: float  # joint inferior end
    v_hi: float  # joint superior end
    depth: float  # antero-posterior extent of the cartilaginous joint
    wobble: float  # undulation amplitude of the joint surface
    wobble_len: float
    wobble_phase: tuple[float, float]  # right, left
    cortex: float  # cortical / subchondral plate thickness
    sac_ant: float  # anterior sacral surface (w) at v = 0
    sac_post: float  # posterior sacral surface
    il_width: float  # iliac bone width lateral to the joint at v = 0
    il_ant: float
    il_post: float
    body_au: float  # body ellipse semi-axis along u
    body_aw: float  # body ellipse semi-axis along w
    body_cw: float  # body ellipse centre along w
    fat_thickness: float
    vessel_u: float
    vessel_w: float
    vessel_r: float
    waves: tuple[tuple[float, float, float, float], ...]  # marrow texture: (kx, ky, kz, phase)

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "Anatomy":
        u = rng.uniform
        rot = rotation(u(-6, 6), u(-4, 4), u(-4, 4))
        center = (u(-15, 15), u(20, 40), u(-80, -60))
        waves = []
        for _ in range(4):
            k = rng.normal(size=3)
            k *= 2 * math.pi / (np.linalg.norm(k) * u(8, 25))
            waves.append((float(k[0]), float(k[1]), float(k[2]), float(u(0, 2 * math.pi))))
        depth = u(24, 30)
        return cls(
            center_lps=tuple(float(c) for c in center),
            rotation=tuple(tuple(float(x) for x in row) for row in rot),
            hw0=u(29, 34), slope_v=u(0.14, 0.24), slope_w=u(0.2, 0.35), gap=u(1.8, 3.0),
            v_lo=-u(27, 33), v_hi=u(25, 31), depth=depth,
            wobble=u(0.4, 1.4), wobble_len=u(14, 24), wobble_phase=(u(0, 6.28), u(0, 6.28)),
            cortex=u(1.3, 2.0),
            sac_ant=-depth / 2 - u(7, 11), sac_post=depth / 2 + u(8, 14),
            il_width=u(34, 46), il_ant=-depth / 2 - u(6, 12), il_post=depth / 2 + u(10, 18),
            body_au=u(170, 200), body_aw=u(105, 120), body_cw=-u(45, 55), fat_thickness=u(10, 22),
            vessel_u=u(24, 32), vessel_w=-depth / 2 - u(9, 14), vessel_r=u(2.5, 4.0),
            waves=tuple(waves),
        )

    # ---- coordinates -------------------------------------------------------------------
    def to_local(self, p_lps: np.ndarray) -> np.ndarray:
        """``(..., 3)`` LPS mm -> ``(..., 3)`` local ``(u, w, v)`` mm."""
        r = np.asarray(self.rotation, dtype=np.float32)
        return (p_lps - np.asarray(self.center_lps, dtype=np.float32)) @ r

    def to_lps(self, q: np.ndarray) -> np.ndarray:
        r = np.asarray(self.rotation, dtype=np.float64)
        return np.asarray(q, dtype=np.float64) @ r.T + np.asarray(self.center_lps)

    # ---- structure -----------------------------------------------------------------------
    def half_width(self, u: np.ndarray, w: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Medial surface of the joint: |u| of the sacral joint surface at (side of u, w, v)."""
        phase = np.where(u >= 0, self.wobble_phase[1], self.wobble_phase[0])
        hw = self.hw0 + self.slope_v * v - self.slope_w * w
        hw = hw + self.wobble * np.sin(2 * math.pi * v / self.wobble_len + phase)
        return hw - 0.8 * _relu(self.v_lo - v)  # the sacrum narrows quickly below the joint

    def iliac_inner(self, hw: np.ndarray, w: np.ndarray, v: np.ndarray) -> np.ndarray:
        # Above the joint and behind the cartilaginous part the bones separate.
        return hw + self.gap + 0.6 * _relu(v - self.v_hi) + 0.25 * _relu(w - self.depth / 2)

    def distances(self, q: np.ndarray) -> dict[str, np.ndarray]:
        """Signed distances (mm, positive inside) of every structure at local points ``q``."""
        u, w, v = q[..., 0], q[..., 1], q[..., 2]
        au = np.abs(u)
        hw = self.half_width(u, w, v)
        inner = self.iliac_inner(hw, w, v)
        half = self.depth / 2
        m = np.minimum
        sac_ant = self.sac_ant + 0.12 * _relu(-v)  # sacral curvature: thinner inferiorly
        sacrum = m(m(hw - au, m(v - (self.v_lo - 14), (self.v_hi + 30) - v)),
                   m(w - sac_ant, self.sac_post - 0.15 * _relu(-v) - w))
        outer = inner + self.il_width + 0.3 * _relu(v)
        il_lo = self.v_lo - 6 + 0.3 * _relu(au - inner - 8)
        ilium = m(m(au - inner, outer - au), m(m(v - il_lo, (self.v_hi + 45) - v),
                                              m(w - self.il_ant, self.il_post - w)))
        between = m(au - hw, inner - au)
        cleft = m(m(between, m(v - self.v_lo, self.v_hi - v)), m(w + half, half - w))
        ligament = m(m(between, m(v - self.v_lo, self.v_hi + 8 - v)), m(w - half, self.il_post - w))
        ell = np.sqrt((u / self.body_au) ** 2 + ((w - self.body_cw) / self.body_aw) ** 2)
        body = (1 - ell) * min(self.body_au, self.body_aw)
        pelvic_fat = m(m(sac_ant - 5 - w, inner + 6 - au), v - (self.v_lo - 30))
        vessel = self.vessel_r - np.sqrt((au - self.vessel_u) ** 2 + (w - self.vessel_w) ** 2)
        # Sacral foramina: AP channels through the anterior sacrum, four levels.
        fu = hw - 18.0
        top = self.v_hi - 6  # four levels, 20 mm apart, downwards from here
        fv = v - (top - 20.0 * np.clip(np.rint((top - v) / 20.0), 0, 3))
        foramen = m(3.0 - np.sqrt((au - fu) ** 2 + fv ** 2), m(sacrum, half + 4 - w))
        return {"sacrum": sacrum, "ilium": ilium, "cleft": cleft, "ligament": ligament,
                "body": body, "pelvic_fat": pelvic_fat, "vessel": vessel, "foramen": foramen,
                "half_width": hw}

    def texture(self, q: np.ndarray) -> np.ndarray:
        """Smooth marrow heterogeneity in [-1, 1], a function of physical position only."""
        t = np.zeros(q.shape[:-1], dtype=np.float32)
        for kx, ky, kz, ph in self.waves:
            t += np.cos(q[..., 0] * kx + q[..., 1] * ky + q[..., 2] * kz + ph)
        return t / len(self.waves)

    def roi_labels(self, q: np.ndarray, d: dict[str, np.ndarray], radius: float = 11.0) -> np.ndarray:
        """ITK-SNAP-style ROI over each joint: 1 = left, 2 = right, 0 = background.

        A band of +-``radius`` mm around the cleft over the joint's height and the
        cartilaginous joint's depth (+-2 mm), limited to bone and cleft, like a radiologist's
        outline of the joint."""
        u, w, v = q[..., 0], q[..., 1], q[..., 2]
        mid = d["half_width"] + self.gap / 2
        band = (np.abs(np.abs(u) - mid) < radius) & (v > self.v_lo - 1) & (v < self.v_hi + 2)
        band &= (w > -self.depth / 2 - 2) & (w < self.depth / 2 + 2)
        tissue = (d["sacrum"] > 0) | (d["ilium"] > 0) | (d["cleft"] > -0.5)
        band &= tissue
        return np.where(band, np.where(u >= 0, 1, 2), 0).astype(np.uint8)

    def joint_point(self, side: int, v: float, w: float, bone: str, depth_mm: float) -> np.ndarray:
        """Local point ``depth_mm`` into ``bone`` ('ilium' | 'sacrum') from the cleft of a
        side (+1 left, -1 right) at height ``v`` and depth ``w``."""
        hw = float(self.half_width(np.array(float(side)), np.array(w), np.array(v)))
        if bone == "ilium":
            au = float(self.iliac_inner(np.array(hw), np.array(w), np.array(v))) + depth_mm
        else:
            au = hw - depth_mm
        return np.array([side * au, w, v])
