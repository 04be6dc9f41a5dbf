"""``StorageOptions``: what a probe stores and how, checked once when built (one ``ValueError`` line).

The same frozen value serves ``LatentProbe`` (its keyword arguments build one), the CLI and studies (a study's
manifest keeps its JSON form, ``as_kwargs()``), so a combination that cannot work is refused in one place,
before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from .capture import BRANCHES, CAPTURABLE
from .latent_steps import LatentSteps, LatentStepsError
from .metrics.online import ONLINE_SPACES
from .store import schema

__all__ = ["StorageOptions", "DEFAULT_CAPTURE"]

DEFAULT_CAPTURE = ("x_t", "pred", "x0", "eps")
ON_WRITE_ERROR = ("raise", "warn")


@dataclass(frozen=True)
class StorageOptions:
    """What a probe records (see ``LatentProbe`` for each field's meaning).

    Built from plain values and normalised: ``capture``/``metrics`` become tuples (``latent_steps='none'``
    empties ``capture``), ``latent_steps`` keeps its text and ``selection`` is the parsed ``LatentSteps``.
    """

    capture: tuple[str, ...] = DEFAULT_CAPTURE
    metrics: tuple[str, ...] = ()
    latent_steps: Any = "all"
    store_dtype: str = "float16"
    cfg_branches: bool = False
    overwrite: bool = False
    on_write_error: str = "raise"
    slots: int = 3
    blocks: Any = None
    attention_reach: int = 0
    block_change: bool = True
    block_steps: Any = None
    selection: LatentSteps = field(init=False, repr=False, compare=False)
    hidden_selection: LatentSteps | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        capture, metrics = self.capture, self.metrics
        if isinstance(capture, str) or isinstance(metrics, str):
            raise ValueError("capture= and metrics= take a list of names, e.g. capture=('x_t', 'pred')")
        capture = tuple(capture)
        unknown = [c for c in capture if c not in CAPTURABLE]
        if unknown:
            raise ValueError(f"cannot capture {unknown}; choose from {CAPTURABLE} (cfg_branches=True adds "
                             f"{BRANCHES})")
        metrics = tuple(dict.fromkeys(metrics))
        unknown = [m for m in metrics if m not in ONLINE_SPACES]
        if unknown:
            raise ValueError(f"cannot compute metrics of {unknown} during the run; choose from {ONLINE_SPACES}")
        selection = LatentSteps.parse(self.latent_steps)
        if selection.none:
            if self.cfg_branches:
                raise LatentStepsError("latent_steps='none' stores no latents, but cfg_branches=True asks for the "
                                       "cond/uncond latents; choose one")
            capture = ()
        elif not selection.all and not capture and not self.cfg_branches:
            raise LatentStepsError(f"latent_steps={selection.spec!r} chooses the steps whose latents are stored, "
                                   "but capture=() stores none; give capture= or leave latent_steps out")
        if not capture and not self.cfg_branches and not metrics and self.blocks is None:
            raise ValueError("nothing to record: give capture=, metrics=, blocks= or cfg_branches=True")
        if self.store_dtype not in schema.STORE_DTYPES:
            raise ValueError(f"store_dtype must be one of {schema.STORE_DTYPES}, got {self.store_dtype!r}")
        for name in ("cfg_branches", "overwrite", "block_change"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.on_write_error not in ON_WRITE_ERROR:
            raise ValueError(f"on_write_error must be 'raise' or 'warn', got {self.on_write_error!r}")
        if isinstance(self.slots, bool) or not isinstance(self.slots, int) or self.slots < 1:
            raise ValueError(f"slots must be a positive int, got {self.slots!r}")
        if isinstance(self.attention_reach, bool) or not isinstance(self.attention_reach, int) \
                or self.attention_reach < 0:
            raise ValueError(f"attention_reach must be an int ≥ 0, got {self.attention_reach!r}")
        if self.blocks is None and self.attention_reach:
            raise ValueError("attention_reach= is measured in the probed blocks: give blocks= too")
        hidden = None
        if self.block_steps is not None:
            hidden = LatentSteps.parse(self.block_steps, "block_steps")
            if hidden.none:
                hidden = None
            elif self.blocks is None:
                raise ValueError("block_steps= keeps the hidden states of the probed blocks: give blocks= too")
        object.__setattr__(self, "hidden_selection", hidden)
        object.__setattr__(self, "capture", capture)
        object.__setattr__(self, "metrics", metrics)
        object.__setattr__(self, "selection", selection)

    def as_kwargs(self) -> dict[str, Any]:
        """The fields as ``LatentProbe`` keyword arguments (JSON-serialisable when ``blocks`` is)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        out["capture"], out["metrics"] = list(self.capture), list(self.metrics)
        return out
