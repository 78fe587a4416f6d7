"""Exceptions of the io layer; messages are one line and say how to fix the input."""
from __future__ import annotations


class ImageReadError(ValueError):
    """A source image cannot be used (unreadable, wrong dimension, bad geometry...)."""
