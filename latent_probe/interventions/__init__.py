"""Interventions: the only way a ``LatentProbe`` changes a generation (``LatentProbe(..., intervene=obj)``).

An intervention has ``describe() -> dict`` (stored as the run attribute ``intervention``) and
``attach(registry, parts, recorder)`` (hooks.ModelHooks added through ``registry``; ``recorder`` the probe's
generation recorder, which says which step is in flight — None on a rank that records nothing), called before the
probe registers its own hooks. The offline estimate
(``metrics.feasibility``) and the baseline-vs-truncated comparison (``app.compare``) live with what they are.
"""

from .frame_truncation import FrameTruncation, TruncatedCall
from .caches import Method, MethodError, SkipCounter, frontier_methods
from .sensitivity import SensitivityError, StepPerturbation, StepSensitivity, step_sensitivity
from ..frames import FILLS, default_keyframes, interpolate_frames, resolve_keyframes

__all__ = [
    "FrameTruncation",
    "TruncatedCall",
    "FILLS",
    "default_keyframes",
    "resolve_keyframes",
    "interpolate_frames",
    "Method",
    "MethodError",
    "SkipCounter",
    "frontier_methods",
    "SensitivityError",
    "StepPerturbation",
    "StepSensitivity",
    "step_sensitivity",
]

