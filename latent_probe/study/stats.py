"""Statistics across runs: means with bootstrap confidence intervals per step (σ, progress) and per phase,
paired differences of two settings over the same (prompt, seed), prompts ranked by their deviation.

The CI is a percentile bootstrap over runs (or over pairs for differences): ``n_resamples`` resamples of
the N units drawn with ``numpy.random.default_rng(seed).integers(0, N, (n_resamples, N))``; the statistic
of a resample is the mean of its units' values, NaN (a run that does not cover that σ) left out; the
interval is the (1−c)/2 and (1+c)/2 percentiles of those means (``numpy.nanpercentile``, linear). One
resample of units serves every point of a curve, so a band is the bootstrap of whole curves.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from .align import align
from .records import SETTING_PREFIX, StudyError

__all__ = ["CI_METHOD", "bootstrap_mean_ci", "groups", "prompt_keys", "curve_stats", "run_phase_values", "phase_stats",
           "PairedDifference", "paired_difference", "rank_prompts", "on_axis"]

CI_METHOD = ("percentile bootstrap over runs (numpy Generator, seeded), NaN left out of each resample's mean; "
             "{n} resamples, {c:.0%} interval")


def bootstrap_mean_ci(values: Any, *, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean over axis 0 (the units: runs or pairs) of ``values`` [N, ...] and its percentile-bootstrap CI.

    Non-finite values are missing. Returns (mean, low, high, n) each [...]; n counts the finite values.
    Reproduce with: ``idx = default_rng(seed).integers(0, N, (n_resamples, N))``,
    ``boot = nanmean(values[idx], axis=1)``, ``nanpercentile(boot, [50(1−c), 50(1+c)], axis=0)``.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 0 or v.shape[0] == 0:
        raise StudyError("no run to average")
    if not 0 < confidence < 1 or n_resamples < 1:
        raise StudyError("confidence must be in (0, 1) and n_resamples at least 1")
    N, rest = v.shape[0], v.shape[1:]
    flat = v.reshape(N, -1)
    ok = np.isfinite(flat)
    vals = np.where(ok, flat, 0.0)
    n = ok.sum(axis=0)
    if ok.all():
        mean = flat.mean(axis=0)
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(n > 0, vals.sum(axis=0) / np.maximum(n, 1), np.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, N, size=(n_resamples, N))
    counts = np.bincount((np.arange(n_resamples)[:, None] * N + idx).ravel(),
                         minlength=n_resamples * N).reshape(n_resamples, N).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = (counts @ vals) / (counts @ ok.astype(np.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: NaN interval
        low, high = np.nanpercentile(boot, [50 * (1 - confidence), 50 * (1 + confidence)], axis=0)
    return mean.reshape(rest), low.reshape(rest), high.reshape(rest), n.reshape(rest)


# ----------------------------------------------------------------------------- groups of runs
def _setting_coords(ds: xr.Dataset) -> list[str]:
    return [c for c in ds.coords if c.startswith(SETTING_PREFIX) and ds[c].dims == ("run",)]


def _coord_name(ds: xr.Dataset, name: str) -> str:
    for c in (name, SETTING_PREFIX + name):
        if c in ds.coords and ds[c].dims == ("run",):
            return c
    raise StudyError(f"no per-run setting or attribute {name!r}; these exist: "
                     + ", ".join(c for c in ds.coords if ds[c].dims == ("run",)))


def _show(name: str, value: Any) -> str:
    name = name[len(SETTING_PREFIX):] if name.startswith(SETTING_PREFIX) else name
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    return f"{name}={value}"


def groups(ds: xr.Dataset, by: str | Sequence[str] | None = None) -> list[tuple[str, np.ndarray]]:
    """(label, run indices) of each group, in first-seen order. ``by``: a setting or per-run attribute name,
    a list of them, ``None`` (every ``setting_*`` coordinate: one group per combination of settings) or
    ``()`` (all runs in one group, "all runs")."""
    names = _setting_coords(ds) if by is None else [_coord_name(ds, b) for b in ([by] if isinstance(by, str) else by)]
    if not names:
        return [("all runs", np.arange(ds.sizes["run"]))]
    cols = [ds[c].values for c in names]
    labels = [", ".join(_show(n, col[r]) for n, col in zip(names, cols)) for r in range(ds.sizes["run"])]
    out: dict[str, list[int]] = {}
    for r, lab in enumerate(labels):
        out.setdefault(lab, []).append(r)
    return [(k, np.asarray(v)) for k, v in out.items()]


def prompt_keys(ds: xr.Dataset) -> list[str]:
    """Each run's prompt: its prompt_id, else its prompt text in quotes, else the run's own name."""
    return [str(p) if p else (f"“{t}”" if t else str(r))
            for p, t, r in zip(ds["prompt_id"].values, ds["prompt"].values, ds["run"].values)]


def on_axis(ds: xr.Dataset, on: str = "sigma", grid: Any = None, points: int | None = None) -> xr.Dataset:
    """``ds`` on ``on``: unchanged for "step" (refused when step counts differ), else :func:`align`."""
    if on == "step":
        counts = np.unique(ds["num_steps"].values)
        if counts.size > 1:
            raise StudyError(f"runs have {', '.join(map(str, counts))} steps: compare them on sigma or progress, "
                             "never by step index")
        return ds
    return align(ds, on, grid, points)


def curve_stats(ds: xr.Dataset, metric: str = "l2_mean", by: str | Sequence[str] | None = None, on: str = "sigma",
                grid: Any = None, points: int | None = None, n_resamples: int = 2000, confidence: float = 0.95,
                seed: int = 0) -> xr.Dataset:
    """Mean and bootstrap CI of ``metric`` (a per-step variable) over each group's runs at every point of
    ``on`` ("sigma", "progress", or "step" when every run has as many steps): dims group × ``on``,
    variables mean, ci_low, ci_high, n (runs with a value there)."""
    a = on_axis(ds, on, grid, points)
    if metric not in a.data_vars or a[metric].ndim != 2:
        raise StudyError(f"{metric!r} is not a per-step variable; choose from "
                         + ", ".join(v for v in a.data_vars if a[v].ndim == 2))
    vals = a[metric].values
    out = {k: [] for k in ("mean", "ci_low", "ci_high", "n")}
    labels = []
    for label, idx in groups(ds, by):
        m, lo, hi, n = bootstrap_mean_ci(vals[idx], n_resamples=n_resamples, confidence=confidence, seed=seed)
        for k, v in zip(out, (m, lo, hi, n)):
            out[k].append(v)
        labels.append(label)
    x = a[on].values
    res = xr.Dataset({k: (("group", on), np.stack(v)) for k, v in out.items()},
                     coords={"group": labels, on: x},
                     attrs={"metric": metric, "on": on, "confidence": confidence, "n_resamples": n_resamples,
                            "seed": seed, "method": CI_METHOD.format(n=n_resamples, c=confidence)})
    return res


# ----------------------------------------------------------------------------- phases
def _segments(experts: Sequence[str]) -> list[tuple[str, int, int]]:
    out: list[tuple[str, int, int]] = []
    for i, e in enumerate(experts):
        if out and out[-1][0] == e and out[-1][2] == i:
            out[-1] = (e, out[-1][1], i + 1)
        else:
            out.append((str(e), i, i + 1))
    return out


def run_phase_values(ds: xr.Dataset, metric: str = "l2_mean", scheme: str = "run") -> pd.DataFrame:
    """One row per (run, phase): the mean of ``metric`` over the run's own steps of that phase.

    ``scheme``: "run" (the phases the runs were read with, e.g. thirds of each run's steps) or "expert" (one
    phase per expert, cut at each run's own boundary). Columns run, phase, start, stop (0-based steps),
    sigma_start, sigma_stop, value.
    """
    if metric not in ds.data_vars or ds[metric].dims != ("run", "step"):
        raise StudyError(f"{metric!r} is not a per-step variable")
    vals, sig, nsteps = ds[metric].values, ds["sigma"].values, ds["num_steps"].values
    experts = ds["expert"].values
    if scheme == "run":
        names, starts, stops = ds["phase"].values, ds["phase_start"].values, ds["phase_stop"].values
    elif scheme != "expert":
        raise StudyError(f"phase scheme {scheme!r}: choose run or expert")
    rows = []
    for r, run in enumerate(ds["run"].values.tolist()):
        S = int(nsteps[r])
        if scheme == "expert":
            spans = _segments(experts[r, :S].tolist())
        else:
            spans = [(str(p), int(a), int(b)) for p, a, b in zip(names, starts[r], stops[r]) if b > a]
        for name, a, b in spans:
            seg = vals[r, a:b]
            seg = seg[np.isfinite(seg)]
            rows.append((run, name, a, b, float(sig[r, a]), float(sig[r, b - 1]),
                         float(seg.mean()) if seg.size else np.nan))
    return pd.DataFrame(rows, columns=["run", "phase", "start", "stop", "sigma_start", "sigma_stop", "value"])


def phase_stats(ds: xr.Dataset, metric: str = "l2_mean", by: str | Sequence[str] | None = None,
                scheme: str = "run", n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
                ) -> pd.DataFrame:
    """Per (group, phase): runs, mean of the runs' phase means with its bootstrap CI, and the range of the
    runs' own steps and σ for that phase (each run's phases are cut at its own steps / boundary)."""
    pv = run_phase_values(ds, metric, scheme)
    runs = ds["run"].values
    rows = []
    for label, idx in groups(ds, by):
        sub = pv[pv["run"].isin([str(r) for r in runs[idx]])]
        for phase in dict.fromkeys(sub["phase"]):
            p = sub[sub["phase"] == phase]
            m, lo, hi, n = bootstrap_mean_ci(p["value"].to_numpy(), n_resamples=n_resamples, confidence=confidence,
                                             seed=seed)
            rows.append({"group": label, "phase": phase, "runs": int(n), "mean": float(m), "ci_low": float(lo),
                         "ci_high": float(hi), "steps": _span(p["start"], p["stop"] - 1),
                         "sigma_from": float(p["sigma_start"].max()), "sigma_to": float(p["sigma_stop"].min())})
    return pd.DataFrame(rows, columns=["group", "phase", "runs", "mean", "ci_low", "ci_high", "steps", "sigma_from",
                                       "sigma_to"])


def _span(first: pd.Series, last: pd.Series) -> str:
    """"0–6" when every run has the same steps (0-based, inclusive), else "0–6 … 0–13" (shortest … longest)."""
    pairs = sorted(set(zip(first.astype(int), last.astype(int))), key=lambda t: (t[1] - t[0], t))
    show = [f"{a}–{b}" if b > a else f"{a}" for a, b in (pairs[0], pairs[-1])]
    return show[0] if len(pairs) == 1 else f"{show[0]} … {show[1]}"


# ----------------------------------------------------------------------------- paired differences
@dataclass
class PairedDifference:
    """``a − b`` of one setting over runs that share prompt, seed and every other setting.

    curve: dims ``on`` — mean, ci_low, ci_high, n (pairs); per_pair: [pair, on] differences; pairs: one row per
    pair (prompt_id, seed, other settings, run_a, run_b, boundary_sigma_a, boundary_sigma_b); phases: per phase
    (scheme "run" and "expert") mean difference of the runs' phase means with its CI.
    """

    setting: str
    a: Any
    b: Any
    metric: str
    on: str
    curve: xr.Dataset
    per_pair: xr.DataArray
    pairs: pd.DataFrame
    phases: pd.DataFrame


def _matches(col: np.ndarray, wanted: Any) -> np.ndarray:
    return np.asarray([v == wanted or str(v) == str(wanted) or _show("", v) == _show("", wanted) for v in col])


def paired_difference(ds: xr.Dataset, setting: str, a: Any, b: Any, metric: str = "l2_mean", on: str = "sigma",
                      grid: Any = None, points: int | None = None, n_resamples: int = 2000, confidence: float = 0.95,
                      seed: int = 0) -> PairedDifference:
    """Difference ``a − b`` of ``metric`` between runs with ``setting`` = a and = b and the same (prompt_id,
    seed, other settings), with bootstrap CIs over pairs, on ``on`` (σ by default: runs of different lengths are
    interpolated onto one grid; "step" only when all their step counts agree)."""
    name = _coord_name(ds, setting)
    col = ds[name].values
    ia, ib = np.flatnonzero(_matches(col, a)), np.flatnonzero(_matches(col, b))
    if not ia.size or not ib.size:
        raise StudyError(f"{_show(name, a) if not ia.size else _show(name, b)}: no run has it "
                         f"(values: {', '.join(sorted({str(v) for v in col}))})")
    others = [c for c in _setting_coords(ds) if c != name]
    pid, seeds = ds["prompt_id"].values, ds["seed"].values.astype(np.float64)
    other_cols = [ds[c].values for c in others]

    def key(r: int) -> tuple:
        return (str(pid[r]), float(seeds[r]), *(str(col[r]) for col in other_cols))

    def index(rows: np.ndarray, side: Any) -> dict[tuple, int]:
        out: dict[tuple, int] = {}
        for r in rows:
            if not pid[r] or not np.isfinite(seeds[r]):
                continue  # a run without prompt_id or seed cannot be paired
            k = key(int(r))
            if k in out:
                raise StudyError(f"two runs with {_show(name, side)} share prompt {k[0]!r}, seed {int(k[1])} and "
                                 f"the other settings: {ds['run'].values[out[k]]}, {ds['run'].values[r]}")
            out[k] = int(r)
        return out

    ka, kb = index(ia, a), index(ib, b)
    keys = [k for k in ka if k in kb]
    if not keys:
        raise StudyError(f"no (prompt_id, seed) has runs with both {_show(name, a)} and {_show(name, b)} "
                         "(suite runs carry prompt_id and seed)")
    ra, rb = np.asarray([ka[k] for k in keys]), np.asarray([kb[k] for k in keys])
    sub = ds.isel(run=np.concatenate([ra, rb]))
    aligned = on_axis(sub, on, grid, points)
    if metric not in aligned.data_vars or aligned[metric].ndim != 2:
        raise StudyError(f"{metric!r} is not a per-step variable")
    v = aligned[metric].values
    n = len(keys)
    diff = v[:n] - v[n:]
    m, lo, hi, cnt = bootstrap_mean_ci(diff, n_resamples=n_resamples, confidence=confidence, seed=seed)
    x = aligned[on].values
    curve = xr.Dataset({"mean": ((on,), m), "ci_low": ((on,), lo), "ci_high": ((on,), hi), "n": ((on,), cnt)},
                       coords={on: x}, attrs={"metric": metric, "on": on, "setting": name, "a": str(a), "b": str(b),
                                              "method": CI_METHOD.format(n=n_resamples, c=confidence).replace(
                                                  "over runs", "over pairs")})
    labels = [f"{k[0]}/s{int(k[1])}" + "".join(f"/{o}" for o in k[2:]) for k in keys]
    per_pair = xr.DataArray(diff, dims=("pair_key", on), coords={"pair_key": labels, on: x},
                            name=f"{metric} difference")
    runs = ds["run"].values
    pairs = pd.DataFrame({"prompt_id": [k[0] for k in keys], "seed": [int(k[1]) for k in keys],
                          **{o[len(SETTING_PREFIX):]: [k[2 + i] for k in keys] for i, o in enumerate(others)},
                          "run_a": runs[ra], "run_b": runs[rb],
                          "boundary_sigma_a": ds["boundary_sigma"].values[ra],
                          "boundary_sigma_b": ds["boundary_sigma"].values[rb]})
    rows = []
    for scheme in ("run", "expert"):
        pv = run_phase_values(sub, metric, scheme)
        table = pv.pivot_table(index="run", columns="phase", values="value", aggfunc="first", sort=False)
        for phase in dict.fromkeys(pv["phase"]):
            va = table[phase].reindex([str(r) for r in runs[ra]]).to_numpy()
            vb = table[phase].reindex([str(r) for r in runs[rb]]).to_numpy()
            pm, plo, phi, pn = bootstrap_mean_ci(va - vb, n_resamples=n_resamples, confidence=confidence, seed=seed)
            rows.append({"scheme": scheme, "phase": phase, "pairs": int(pn), "mean": float(pm), "ci_low": float(plo),
                         "ci_high": float(phi)})
    phases = pd.DataFrame(rows, columns=["scheme", "phase", "pairs", "mean", "ci_low", "ci_high"])
    return PairedDifference(setting=name, a=a, b=b, metric=metric, on=on, curve=curve, per_pair=per_pair,
                            pairs=pairs, phases=phases)


# ----------------------------------------------------------------------------- prompts
def rank_prompts(ds: xr.Dataset, metric: str = "l2_mean", on: str = "sigma", grid: Any = None,
                 points: int | None = None) -> pd.DataFrame:
    """Prompts ordered by how far their mean curve lies from the mean curve over prompts (each prompt weighs
    the same): rms_deviation (root mean square over the axis points), mean_deviation (signed), max_abs_deviation.
    Runs without a prompt_id are grouped by prompt text, else each is its own."""
    a = on_axis(ds, on, grid, points)
    vals = a[metric].values
    text = ds["prompt"].values
    keys = prompt_keys(ds)
    order = list(dict.fromkeys(keys))
    members: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        members.setdefault(k, []).append(i)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        curves = np.stack([np.nanmean(vals[members[key]], axis=0) for key in order])
        overall = np.nanmean(curves, axis=0)
        dev = curves - overall
        rows = []
        for key, d in zip(order, dev):
            idx = members[key]
            fin = d[np.isfinite(d)]
            rows.append({"prompt_id": key, "prompt": str(text[idx[0]]), "runs": len(idx),
                         "rms_deviation": float(np.sqrt(np.mean(fin ** 2))) if fin.size else np.nan,
                         "mean_deviation": float(fin.mean()) if fin.size else np.nan,
                         "max_abs_deviation": float(np.abs(fin).max()) if fin.size else np.nan})
    df = pd.DataFrame(rows, columns=["prompt_id", "prompt", "runs", "rms_deviation", "mean_deviation",
                                     "max_abs_deviation"])
    df = df.sort_values("rms_deviation", ascending=False, na_position="last", kind="stable").reset_index(drop=True)
    df.insert(0, "rank", np.arange(1, len(df) + 1))
    df.attrs.update(metric=metric, on=on)
    return df
