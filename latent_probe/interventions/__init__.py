"""Interventions: the only way a ``LatentProbe`` changes a generation (``LatentProbe(..., intervene=obj)``).

An intervention has ``describe() -> dict`` (stored as the run attribute ``intervention``) and
``attach(registry, parts, capture)``, called before the probe registers its own hooks.
"""

from .compare import TruncationComparison, compare_truncation, format_comparison
from .feasibility import FeasibilityResult, format_feasibility, truncation_feasibility
from .frame_truncation import FrameTruncation, TruncatedCall
from .interpolation import FILLS, default_keyframes, interpolate_frames, resolve_keyframes

__all__ = [
    "FrameTruncation",
    "TruncatedCall",
    "FILLS",
    "default_keyframes",
    "resolve_keyframes",
    "interpolate_frames",
    "truncation_feasibility",
    "FeasibilityResult",
    "format_feasibility",
    "compare_truncation",
    "TruncationComparison",
    "format_comparison",
]

