"""One run file → a small record of its per-step metrics: what one recompute task returns (no latent leaves it).

``read_run_metrics(path)`` opens the run writable when it can, so ``run.metrics`` reuses a current
``/metrics`` cache and stores what it had to compute; a file it cannot read becomes a ``Skipped`` with a
one-line reason, never an exception, so one bad file in a glob costs one line.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import LatentProbeError
from ..metrics.continuity import AdjacentFrameMetrics
from ..metrics.run_metrics import needs_writing
from ..store.reader import open_run
from .jobs import StudyError

__all__ = ["RunRecord", "Skipped", "read_run_metrics", "StudyError", "SUITE_ATTRS", "SETTING_PREFIX",
           "one_line"]

SUITE_ATTRS = ("study", "job_id", "prompt_id", "prompt", "seed")  # root attributes a suite's runs carry
SETTING_PREFIX = "setting_"  # and one setting_<name> per setting


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        text = str(exc.args[0])
    else:
        text = str(exc).strip()
    line = text.split("\n", 1)[0].rstrip("\r")
    if not line:
        return type(exc).__name__
    return line if isinstance(exc, (LatentProbeError, OSError)) else f"{type(exc).__name__}: {line}"


@dataclass(frozen=True)
class Skipped:
    """A file that gave no record, and why (one line)."""

    path: str
    reason: str


@dataclass(frozen=True)
class RunRecord:
    """Per-step metrics of one run in one latent space, averaged over batch items (B is 1 for Wan runs).

    sigmas, timesteps: [S] float64; experts: [S] names; pairs (also read as rec.l2, ...): l2, cos, one_minus_cos, norm_ratio: [S, P] float64
    (P = F − 1 adjacent-frame pairs); l2_mean, cos_mean: [S] (means over pairs, from ``run.metrics``);
    phases: the run's own (name, start, stop) step ranges, 0-based, stop exclusive; meta: the suite
    attributes (None where absent), complete, simulated; settings: name → value of each ``setting_<name>``;
    computed: the metrics were computed from latents (no current cache); seconds: time the task took.
    """

    path: str
    space: str
    meta: dict[str, Any]
    settings: dict[str, Any]
    sigmas: np.ndarray
    timesteps: np.ndarray
    experts: tuple[str, ...]
    pairs: AdjacentFrameMetrics   # batch-averaged: .l2, .cos, .one_minus_cos, .norm_ratio [S, F−1]; .l2_mean ...
    phases: tuple[tuple[str, int, int], ...]
    computed: bool
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        return int(self.sigmas.shape[0])

    def __getattr__(self, name: str) -> Any:  # rec.l2, rec.cos_mean, ...: the metrics' own fields
        if name in ("l2", "cos", "one_minus_cos", "norm_ratio", "l2_mean", "cos_mean"):
            return getattr(self.pairs, name)
        raise AttributeError(name)

    @property
    def num_pairs(self) -> int:
        return int(self.pairs.l2.shape[1])


def _open(path: str, cache: bool, space: str = "x0") -> Any:
    """Read-only when ``space``'s metrics need no writing (computed during the run, or cached and current: opening
    an HDF5 file writable costs about three read-only opens); writable when they will be computed and ``cache``
    allows (the metrics cache is kept in the file). A file being recorded, left by a killed writer or not ours to
    write is still read."""
    run = open_run(path, "r")
    if not cache or not needs_writing(run, space) or not os.access(path, os.W_OK):
        return run
    run.close()
    try:
        return open_run(path, "r+")
    except LatentProbeError:
        return open_run(path, "r")  # e.g. being recorded: read-only answers (or gives the one-line reason)


def _study_attrs(run: Any) -> dict[str, Any]:
    """The attributes a record keeps (the study's and the settings), read without the run's other dozens."""
    wanted = ("study", "job_id", "prompt_id", "prompt", "seed", "simulated")
    return {k: run.attr(k) for k in run.attr_names if k in wanted or k.startswith(SETTING_PREFIX)}


def _meta(attrs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    meta: dict[str, Any] = {}
    for key in ("study", "job_id", "prompt_id", "prompt"):
        value = attrs.get(key)
        meta[key] = None if value is None else str(value)
    seed = attrs.get("seed")
    meta["seed"] = int(seed) if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) else None
    meta["simulated"] = bool(attrs.get("simulated", False))
    settings = {k[len(SETTING_PREFIX):]: v for k, v in attrs.items()
                if isinstance(k, str) and k.startswith(SETTING_PREFIX) and len(k) > len(SETTING_PREFIX)}
    return meta, settings


def read_run_metrics(path: str, space: str = "x0", phases: Any = "thirds", cache: bool = True,
                     incomplete: bool = False) -> RunRecord | Skipped:
    """The :class:`RunRecord` of the run at ``path`` (metrics from its cache when current), or ``Skipped``.

    ``cache``: open the file writable so computed metrics are stored in ``/metrics``; ``incomplete``: keep
    runs whose recording stopped early (their committed steps), else they are skipped.
    """
    t0 = time.perf_counter()
    path = os.fspath(path)
    try:
        run = _open(path, cache, space)
    except Exception as exc:  # noqa: BLE001 - any unreadable file becomes one line
        reason = one_line(exc)  # the Skipped names the path: a reason that starts with it would say it twice
        return Skipped(path, reason[len(path) + 2:] if reason.startswith(path + ": ") else reason)
    try:
        with run:
            if space not in run.spaces:
                return Skipped(path, f"space {space!r} was not captured (its spaces: {', '.join(run.spaces)})")
            S = run.num_steps
            if S == 0:
                return Skipped(path, "no committed step")
            if not run.complete and not incomplete:
                why = run.error or ("being recorded" if run.recording else "the writer stopped without closing it")
                return Skipped(path, f"incomplete ({S} steps committed: {why})")
            if (run.num_frames or 0) < 2:
                return Skipped(path, f"{space} has one latent frame: continuity needs two")
            reads: list[str] = []
            latents = run.latents

            def counting(name: str) -> Any:  # the metrics read latents only when they compute
                reads.append(name)
                return latents(name)

            run.latents = counting  # type: ignore[method-assign]
            m = run.metrics(space)
            step_phases = tuple((str(p.name), int(p.start), int(p.stop)) for p in run.metrics.phases(phases))
            meta, settings = _meta(_study_attrs(run))
            meta["complete"] = bool(run.complete)
            return RunRecord(
                path=path, space=space, meta=meta, settings=settings,
                sigmas=np.asarray(run.sigmas, dtype=np.float64), timesteps=np.asarray(run.timesteps, np.float64),
                experts=tuple(str(e) for e in run.experts),
                pairs=m.batch_mean(),
                phases=step_phases, computed=bool(reads), seconds=time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - a file damaged past validation (a bad chunk) is one line too
        return Skipped(path, one_line(exc))
