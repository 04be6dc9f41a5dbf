"""latent_probe: see, step by step and frame by frame, how a video diffusion transformer forms a video.

Data path: adapters (find DiTs and scheduler) → hooks (own every handle) → capture (per-step record)
→ parameterization (x̂₀, ε̂) → store (HDF5 writer / Run reader) → metrics → views.
"""

from ._version import __version__
from .adapters import TargetParts, UnsupportedTargetError
from .capture import LayoutError
from .parameterization import NoiseLevel, Parameterization, UnknownParameterizationError
from .probe import LatentProbe
from .store.reader import LatentView, Run, RunFileError, open_run
from .store.writer import WriterError

__all__ = [
    "__version__",
    "LatentProbe",
    "Run",
    "LatentView",
    "open_run",
    "Parameterization",
    "NoiseLevel",
    "UnknownParameterizationError",
    "UnsupportedTargetError",
    "LayoutError",
    "RunFileError",
    "WriterError",
    "TargetParts",
]
