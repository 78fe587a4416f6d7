"""distmsfa: MSFANet for two-sequence sacroiliac-joint MRI, on Ray.

Tensor contract used everywhere a case crosses a module boundary:

* a preprocessed case is a float16/float32 array ``(2, D, H, W)`` with the
  sequence order ``(T1, FS)`` (``distmsfa.SEQUENCES``), values in ``[0, 1]``;
* ``D`` is the slice axis of the canonical orientation (coronal slices for the
  default ``LIP`` orientation), ``H``/``W`` the in-plane axes;
* spacings are millimetres, given in array order ``(D, H, W)`` unless a name
  says ``_xyz`` (SimpleITK order).
"""
__version__ = "0.1.0"

SEQUENCES: tuple[str, str] = ("t1", "fs")
"""Channel order of every two-sequence tensor: index 0 = T1WI, 1 = FS/STIR."""
