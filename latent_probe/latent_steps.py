"""Which steps' latents a probe stores: ``LatentProbe(..., latent_steps=...)``.

Steps are the generation's 0-based recorded steps (row s of ``/steps``). A selection is

* ``"all"`` (default) or None: every step;  ``"none"``: no latents (only the metrics computed during the run);
* an int ``k``: every k-th step (0, k, 2k, ...);
* a string of comma-separated terms, their union: ``"every:4"``, ``"first"``, ``"last"``, ``"boundary"`` or
  ``"boundary:w"`` (w steps on each side of the expert switch: the last w high-noise steps and the first w
  low-noise ones; w = 1 by default), a step number ``"12"``, or a negative one counted from the planned end
  (``"-1"`` is ``"last"``);
* a list of such ints / terms.

``last``, negative numbers and ``boundary`` are resolved at the generation's first step from the scheduler's
schedule (``len(scheduler.timesteps)``; the first timestep below the target's boundary timestep, the rule
Wan2.2 and diffusers use to pick the low-noise expert). A generation stopped early never reaches its planned
last step, so that step is not stored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

from .errors import LatentProbeError

__all__ = ["LatentSteps", "LatentStepsError", "boundary_step"]


class LatentStepsError(LatentProbeError, ValueError):
    """A ``latent_steps`` selection that cannot be read, or cannot be resolved for this target."""


@dataclass(frozen=True)
class LatentSteps:
    """A parsed selection. ``every``: stride (0: none); ``fixed``: non-negative step numbers; ``from_end``:
    negative ones (−1 = last planned step); ``boundary``: half-width around the expert switch (0: none)."""

    spec: str
    every: int = 0
    fixed: frozenset[int] = frozenset()
    from_end: frozenset[int] = frozenset()
    boundary: int = 0

    @property
    def all(self) -> bool:
        return self.every == 1

    @property
    def none(self) -> bool:
        return not (self.every or self.fixed or self.from_end or self.boundary)

    @property
    def needs_plan(self) -> bool:
        """Resolving it needs the planned number of steps (``last``, negative numbers)."""
        return bool(self.from_end)

    @property
    def may_select_first(self) -> bool:
        """Step 0 is, or may be once the plan is known, chosen (every:k, 0, a step counted from the end, boundary):
        what must be kept provisionally during a generation's first DiT calls, before its plan is resolved."""
        return bool(self.every or 0 in self.fixed or self.from_end or self.boundary)

    @classmethod
    def parse(cls, value: Any, what: str = "latent_steps") -> "LatentSteps":
        """``what``: the option's name in error messages (``block_steps`` uses the same grammar)."""
        if value is None or (isinstance(value, str) and value.strip().lower() == "all"):
            return cls("all", every=1)
        if isinstance(value, str) and value.strip().lower() == "none":
            return cls("none")
        if isinstance(value, bool):
            raise LatentStepsError(f"{what}={value!r}: give 'all', 'none', an int k (every k-th step) or terms "
                                   "like 'every:4,last,boundary:2'")
        if isinstance(value, int):
            if value < 1:
                raise LatentStepsError(f"{what}={value}: every k-th step needs k >= 1")
            return cls("all" if value == 1 else f"every:{value}", every=value)
        if not isinstance(value, (str, list, tuple)):
            raise LatentStepsError(f"{what}={value!r} is not a selection of steps: give 'all', 'none', an int "
                                   "k or terms like 'every:4,last,boundary:2'")
        terms: Iterable[Any] = value.split(",") if isinstance(value, str) else value
        every, fixed, from_end, boundary, strides = 0, set(), set(), 0, set()
        names = []
        terms = [t for t in terms if not (isinstance(t, str) and not t.strip())]
        if not terms:
            raise LatentStepsError(f"{what}={value!r} selects nothing; give 'none' to store none")
        for term in terms:
            if isinstance(term, bool) or not isinstance(term, (str, int)):
                raise LatentStepsError(f"{what} term {term!r} is not one of every:k, first, last, boundary[:w] "
                                       "or a step number")
            t = str(term).strip().lower()
            key, _, arg = t.partition(":")
            try:
                if not re.fullmatch(r"[a-z]+|-?[0-9]+", key) or (arg and not re.fullmatch(r"[0-9]+", arg)) \
                        or key == "-0" or key.startswith("-0") and len(key) > 2:
                    raise ValueError  # ASCII digits only; "-0" is not a step counted from the end
                if key == "every":
                    k = int(arg)
                    if k < 1:
                        raise ValueError
                    strides.add(k)
                    every = k
                elif key == "first" and not arg:
                    fixed.add(0)
                elif key == "last" and not arg:
                    from_end.add(-1)
                elif key == "boundary":
                    w = int(arg) if arg else 1
                    if w < 1:
                        raise ValueError
                    boundary = max(boundary, w)
                elif not arg:
                    n = int(key)
                    (fixed if n >= 0 else from_end).add(n)
                else:
                    raise ValueError
            except ValueError:
                raise LatentStepsError(f"{what} term {str(term)!r} is not one of every:k, first, last, boundary"
                                       "[:w] or a step number") from None
            names.append(t)
        if len(strides) > 1:
            raise LatentStepsError(f"{what} {value!r}: give one every:k (two strides are not one stride)")
        sel = cls(",".join(names) or "none", every, frozenset(fixed), frozenset(from_end), boundary)
        return cls("all", every=1) if sel.all else sel

    def resolve(self, planned: int | None, switch: int | None) -> "Resolved":
        """The chosen steps of one generation: ``planned`` steps from its first step on (None: unknown),
        ``switch`` the first low-noise step (None: no switch in this schedule)."""
        chosen = set(self.fixed)
        if planned is not None:
            chosen |= {planned + n for n in self.from_end if planned + n >= 0}
        if self.boundary and switch is not None:
            chosen |= set(range(max(0, switch - self.boundary), switch + self.boundary))
        return Resolved(self.every, frozenset(chosen))


    def outside(self, planned: int | None, switch: int | None) -> list[str]:
        """Terms that select no step of a generation of ``planned`` steps (for a warning)."""
        if planned is None:
            return []
        out = [str(n) for n in sorted(self.fixed) if n >= planned]
        out += [str(n) for n in sorted(self.from_end) if planned + n < 0]
        if self.boundary and switch is None:
            out.append(f"boundary:{self.boundary} (this schedule has no expert switch)")
        return out


@dataclass(frozen=True)
class Resolved:
    every: int
    chosen: frozenset[int]

    def __contains__(self, step: int) -> bool:
        return (self.every > 0 and step % self.every == 0) or step in self.chosen


def boundary_step(timesteps: Any, first_index: int, boundary_timestep: float | None) -> int | None:
    """The first recorded step (0-based, counted from ``first_index`` in the schedule) whose timestep lies below
    ``boundary_timestep`` (the low-noise expert's first step); None without a boundary or when no step does."""
    if boundary_timestep is None or timesteps is None:
        return None
    try:
        values = [float(t) for t in list(timesteps)[max(0, first_index):]]
    except (TypeError, ValueError):
        return None
    for i, t in enumerate(values):
        if t < boundary_timestep:
            return i
    return None
