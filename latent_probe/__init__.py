"""latent_probe: see, step by step and frame by frame, how a video diffusion transformer forms a video.

Data path: adapters (find DiTs and scheduler) → hooks (own every handle) → capture (per-step record)
→ parameterization (x̂₀, ε̂) → store (HDF5 writer / Run reader) → metrics → views.
"""

from ._version import __version__
from .errors import LatentProbeError
from .adapters import TargetParts, UnsupportedTargetError
from .capture import LayoutError
from .metrics import (
    AdjacentFrameMetrics,
    adjacent_frame_metrics,
    analyze_latent_continuity,
    compute_cosine_similarity,
    compute_normalized_l2_distance,
    cond_uncond_gap,
    frame_similarity_matrix,
    lag_similarity,
    noise_floor,
    step_change,
)
from .metrics.phases import Phase, Summary, phase_ranges
from .metrics import StepChange
from .metrics.run_metrics import RunMetrics
from .parameterization import NoiseLevel, Parameterization, UnknownParameterizationError
from .interventions import FrameTruncation
from .metrics.feasibility import truncation_feasibility
from .app.compare import compare_truncation  # the root re-exports app's Python entry points
from .probe import LatentProbe
from .store.reader import LatentView, Run, RunFileError, open_run
from .store.writer import DiskFullError, WriterError

__all__ = [
    "__version__",
    "LatentProbe",
    "Run",
    "LatentView",
    "open_run",
    "Parameterization",
    "NoiseLevel",
    "LatentProbeError",
    "UnknownParameterizationError",
    "UnsupportedTargetError",
    "LayoutError",
    "RunFileError",
    "WriterError",
    "DiskFullError",
    "TargetParts",
    # interventions
    "FrameTruncation",
    "truncation_feasibility",
    "compare_truncation",
    # metrics
    "AdjacentFrameMetrics",
    "StepChange",
    "RunMetrics",
    "Phase",
    "Summary",
    "phase_ranges",
    "adjacent_frame_metrics",
    "lag_similarity",
    "frame_similarity_matrix",
    "step_change",
    "cond_uncond_gap",
    "noise_floor",
    # drop-ins with the original analysis's names
    "compute_normalized_l2_distance",
    "compute_cosine_similarity",
    "analyze_latent_continuity",
]



def __getattr__(name: str):  # PEP 562: the views (and plotly) load on first use, not with the capture path
    # (build_figures, write_dashboard, open_runs are not in __all__: `from latent_probe import *` needs no plotly/xarray)
    if name == "open_runs":  # a set of runs as an xarray Dataset: needs xarray, pandas (the [study] extra)
        from .study.collection import open_runs

        return open_runs
    if name in ("build_figures", "write_dashboard"):
        from .views import dashboard

        return getattr(dashboard, name)
    raise AttributeError(f"module 'latent_probe' has no attribute {name!r}")
