"""One base class for every error latent_probe raises: ``except LatentProbeError`` catches them all.

Each error also derives from the built-in it refines (a bad file is a ``ValueError``, a failed writer a
``RuntimeError``, ...), so code written against those keeps working. Messages are one line.
"""

from __future__ import annotations

__all__ = ["LatentProbeError"]


class LatentProbeError(Exception):
    """Base class of latent_probe's errors."""
