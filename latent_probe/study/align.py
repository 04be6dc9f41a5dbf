"""Runs of different lengths on one axis: each run's curve interpolated onto a common σ (or progress) grid.

Step k of a 20-step run and step k of a 40-step run are different noise levels, so runs are never compared
by step index. ``align(ds, on="sigma")`` interpolates every per-step variable of each run linearly in σ onto
a common grid (noisiest first); points outside a run's own σ range are NaN, never extrapolated. Each run
keeps its own expert boundary (``boundary_sigma``: σ of the first step the next expert ran), and the
aligned ``expert`` coordinate changes at that σ for that run.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import xarray as xr

from .records import StudyError

__all__ = ["AXES", "boundary_of", "interp_rows", "common_grid", "align"]

AXES = ("sigma", "progress")


UNKNOWN = "unknown"  # the reader's name for a step no expert hook fired before


def boundary_of(experts: Sequence[str]) -> int:
    """0-based step at which a different expert first takes over (−1 when one expert ran every step); steps
    of an unknown expert are no switch."""
    prev = None
    for k, e in enumerate(experts):
        if e == UNKNOWN:
            continue
        if prev is not None and e != prev:
            return k
        prev = e
    return -1


def _weights(x: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For values at x [S] (strictly monotonic, either direction): per grid point the indices into x of the two
    neighbours (lo, hi), the weight of hi, and whether the point lies inside [min x, max x]."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    if not np.all(np.isfinite(xs)) or np.any(np.diff(xs) <= 0):
        raise StudyError("the run's axis values are not strictly monotonic and finite: align it on progress")
    G = grid.size
    if xs.size < 2:
        inside = grid == xs[0] if xs.size else np.zeros(G, dtype=bool)
        zero = np.zeros(G, dtype=np.int64)
        return zero, zero, np.zeros(G), inside
    j = np.clip(np.searchsorted(xs, grid, side="right") - 1, 0, xs.size - 2)
    w = (grid - xs[j]) / (xs[j + 1] - xs[j])
    inside = (grid >= xs[0]) & (grid <= xs[-1])
    return order[j], order[j + 1], w, inside


def _mix(lo: np.ndarray, hi: np.ndarray, w: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """lo·(1−w) + hi·w, exactly lo at w = 0 and hi at w = 1, NaN outside; w and inside broadcast from the left."""
    wb = w.reshape(w.shape + (1,) * (lo.ndim - w.ndim))
    ib = inside.reshape(inside.shape + (1,) * (lo.ndim - inside.ndim))
    out = np.where(wb == 0, lo, np.where(wb == 1, hi, lo * (1 - wb) + hi * wb))
    return np.where(ib, out, np.nan)


def interp_rows(x: np.ndarray, y: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Linear interpolation of y [S, ...] given at x [S] (strictly monotonic, either direction) onto grid [G]:
    [G, ...]; NaN outside [min x, max x]; a grid point equal to some x takes that row exactly."""
    grid = np.asarray(grid, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    lo, hi, w, inside = _weights(x, grid)
    if y.shape[0] == 0:
        return np.full((grid.size, *y.shape[1:]), np.nan)
    return _mix(y[lo], y[hi], w, inside)


def _axis_values(ds: xr.Dataset, on: str) -> np.ndarray:
    if on not in AXES:
        raise StudyError(f"align on {on!r}: choose sigma or progress (runs are never compared by step index)")
    return ds[on].values  # [run, step], NaN past each run's end


def common_grid(ds: xr.Dataset, on: str = "sigma", points: int | None = None) -> np.ndarray:
    """Default grid: ``points`` (default: the longest run's steps) evenly spaced values over the range every
    run covers; σ runs from high to low (noisiest first), progress from 0 to 1."""
    x = _axis_values(ds, on)
    n = int(points or ds.sizes["step"])
    if on == "progress":
        return np.linspace(0.0, 1.0, max(n, 2))
    hi = float(np.nanmin(np.nanmax(x, axis=1)))
    lo = float(np.nanmax(np.nanmin(x, axis=1)))
    if not hi > lo:
        raise StudyError(f"the runs share no σ range (common range {lo:g}–{hi:g}): align them on progress")
    return np.linspace(hi, lo, max(n, 2))


def align(ds: xr.Dataset, on: str = "sigma", grid: Sequence[float] | np.ndarray | None = None,
          points: int | None = None) -> xr.Dataset:
    """``ds`` (dims run × step [× pair]) interpolated per run onto ``grid`` along ``on``: dims run × on [× pair].

    Coordinates: per run as in ``ds`` (boundary_sigma, boundary_progress, settings, ...); ``expert`` (run, on),
    the expert that ran at that noise level (changes at the run's own boundary); ``step_position`` (run, on),
    the fractional step index; the other axis (progress or σ) and ``timestep`` interpolated.
    """
    x_all = _axis_values(ds, on)
    g = np.asarray(common_grid(ds, on, points) if grid is None else grid, dtype=np.float64)
    if g.ndim != 1 or g.size == 0 or not np.all(np.isfinite(g)):
        raise StudyError("the grid must be a non-empty 1-D array of finite values")
    nsteps = ds["num_steps"].values
    R, G = ds.sizes["run"], g.size
    LO, HI = np.zeros((R, G), dtype=np.int64), np.zeros((R, G), dtype=np.int64)
    W, IN = np.zeros((R, G)), np.zeros((R, G), dtype=bool)
    for r in range(R):  # neighbours and weights once per run, then every variable at once
        LO[r], HI[r], W[r], IN[r] = _weights(x_all[r, : int(nsteps[r])], g)
    rows = np.arange(R)[:, None]
    step_vars = [v for v in ds.data_vars if ds[v].dims[:2] == ("run", "step")]
    data = {v: _mix(ds[v].values[rows, LO], ds[v].values[rows, HI], W, IN) for v in step_vars}
    other = [c for c in ("sigma", "progress", "timestep") if c != on]
    extra = {c: _mix(ds[c].values[rows, LO], ds[c].values[rows, HI], W, IN) for c in other}
    pos = _mix(LO.astype(np.float64), HI.astype(np.float64), W, IN)
    extra["step_position"] = pos
    # the expert of the run's last step at or before this point (σ at or above it): changes at its boundary
    at = np.where(IN, np.floor(np.where(IN, pos, 0) + 1e-9).astype(np.int64), 0)
    experts = np.where(IN, ds["expert"].values[rows, at], "")
    coords = {on: g}
    coords.update({c: ds[c] for c in ds.coords if ds[c].dims == ("run",)})
    if "pair" in ds.coords:
        coords["pair"] = ds["pair"]
    coords.update({c: (("run", on), extra[c]) for c in extra})
    coords["expert"] = (("run", on), np.asarray(experts, dtype=str))
    out = xr.Dataset({v: (("run", on, *ds[v].dims[2:]), data[v]) for v in step_vars}, coords=coords,
                     attrs=dict(ds.attrs, aligned_on=on))
    return out
