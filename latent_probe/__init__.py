"""latent_probe: see, step by step and frame by frame, how a video diffusion transformer forms a video.

Data path: adapters (find DiTs and scheduler) → hooks (own every handle) → capture (per-step record)
→ parameterization (x̂₀, ε̂) → store (HDF5 writer / Run reader) → metrics → views.

The root holds the names a user starts from; everything else is imported from its subpackage
(``latent_probe.metrics``, ``latent_probe.interventions``, ``latent_probe.study``, ``latent_probe.views``,
``latent_probe.app``). The root never imports the application layer.
"""

from ._version import __version__
from .errors import LatentProbeError
from .adapters import UnsupportedTargetError
from .capture import LayoutError
from .interventions import FrameTruncation
from .metrics import analyze_latent_continuity, compute_cosine_similarity, compute_normalized_l2_distance
from .parameterization import UnknownParameterizationError
from .probe import LatentProbe
from .store.reader import Run, RunFileError, open_run
from .store.writer import DiskFullError, WriterError

__all__ = [
    "__version__",
    # record, read
    "LatentProbe",
    "open_run",
    "Run",
    "FrameTruncation",
    # errors a user meets (all derive from LatentProbeError)
    "LatentProbeError",
    "UnsupportedTargetError",
    "UnknownParameterizationError",
    "LayoutError",
    "RunFileError",
    "WriterError",
    "DiskFullError",
    # the original analysis's functions, same names and signatures
    "analyze_latent_continuity",
    "compute_normalized_l2_distance",
    "compute_cosine_similarity",
]

# Names the root exported before it was cut to the list above: still found, with a warning naming their home.
_MOVED = {
    "TargetParts": "latent_probe.adapters",
    "LatentView": "latent_probe.store.reader",
    "Parameterization": "latent_probe.parameterization",
    "NoiseLevel": "latent_probe.parameterization",
    "truncation_feasibility": "latent_probe.metrics.feasibility",
    "AdjacentFrameMetrics": "latent_probe.metrics",
    "StepChange": "latent_probe.metrics",
    "RunMetrics": "latent_probe.metrics.run_metrics",
    "Phase": "latent_probe.metrics.phases",
    "Summary": "latent_probe.metrics.phases",
    "phase_ranges": "latent_probe.metrics.phases",
    "adjacent_frame_metrics": "latent_probe.metrics",
    "lag_similarity": "latent_probe.metrics",
    "frame_similarity_matrix": "latent_probe.metrics",
    "step_change": "latent_probe.metrics",
    "cond_uncond_gap": "latent_probe.metrics",
    "noise_floor": "latent_probe.metrics",
    "build_figures": "latent_probe.views.dashboard",
    "write_dashboard": "latent_probe.views.dashboard",
}


def __getattr__(name: str):  # PEP 562: study/views (xarray, plotly) load on first use, not with the capture path
    if name in ("open_runs", "RunSet"):  # a set of runs (xarray, pandas: the [study] extra)
        from .study import collection

        return getattr(collection, name)
    if name in _MOVED:
        import importlib
        import warnings

        home = _MOVED[name]
        warnings.warn(f"latent_probe.{name} moved: import it from {home}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(home), name)
    if name == "compare_truncation":
        raise AttributeError("latent_probe.compare_truncation moved to the application layer: "
                             "from latent_probe.app.compare import compare_truncation")
    raise AttributeError(f"module 'latent_probe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__ + ["open_runs", "RunSet"])
