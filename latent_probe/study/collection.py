"""``open_runs``: many run files as one ``RunSet`` — per-step metrics with a run dimension (xarray) or tidy
(pandas), and the statistics across runs (``study/stats.py``) on σ or progress, never on step index.

    rs = open_runs("study/runs/*.h5")                  # threads of this process; workers=4: Dask processes
    rs.dataset                                         # xarray: run × step × pair
    rs.curves("l2_mean", on="sigma")                   # mean ± bootstrap CI per setting, on a common σ grid
    rs.paired_difference("truncation", "keep3", "none")  # keep3 − none over the same (prompt, seed)
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from . import stats
from .align import align, boundary_of
from .records import SETTING_PREFIX, RunRecord, Skipped, StudyError
from .recompute import DEFAULT_MEMORY_LIMIT, expand_paths, recompute

__all__ = ["open_runs", "RunSet", "build_dataset", "STEP_VARIABLES", "PAIR_VARIABLES"]

PAIR_VARIABLES = ("l2", "cos", "one_minus_cos", "norm_ratio")  # (run, step, pair)
STEP_VARIABLES = ("l2_mean", "cos_mean", "one_minus_cos_mean")  # (run, step): means over the pairs


def _run_names(records: Sequence[RunRecord]) -> list[str]:
    """job_id, else the file stem; repeated names get their folder, then a number."""
    base = [r.meta.get("job_id") or os.path.splitext(os.path.basename(r.path))[0] for r in records]
    if len(set(base)) == len(base):
        return base
    longer = [os.path.join(os.path.basename(os.path.dirname(os.path.abspath(r.path))), b)
              for r, b in zip(records, base)]
    if len(set(longer)) == len(longer):
        return longer
    return [f"{b}#{i + 1}" for i, b in enumerate(base)]


def _column(values: Sequence[Any]) -> np.ndarray:
    """A per-run coordinate: int64 (all ints), float64 (numbers, NaN where missing) or text ("" where missing)."""
    present = [v for v in values if v is not None]
    numeric = present and all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                              for v in present)
    if numeric and len(present) == len(values) and all(isinstance(v, (int, np.integer)) for v in present):
        return np.asarray(values, dtype=np.int64)
    if numeric:
        return np.asarray([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    return np.asarray(["" if v is None else v if isinstance(v, str) else json.dumps(v, sort_keys=True)
                       for v in values], dtype=str)


def _missing(value: Any) -> bool:
    return value == "" or (isinstance(value, float) and value != value)


def _pad(arrays: Sequence[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    out = np.full((len(arrays), *shape), np.nan)
    for i, a in enumerate(arrays):
        out[(i, *(slice(0, n) for n in a.shape))] = a
    return out


def build_dataset(records: Sequence[RunRecord], space: str = "x0") -> xr.Dataset:
    """The xarray Dataset of ``records``: dims run × step × pair (runs shorter than the longest, or with fewer
    frames, are NaN-padded). See docs/statistics.md for every variable and coordinate."""
    if not records:
        raise StudyError("no readable run")
    R = len(records)
    S = max(r.num_steps for r in records)
    P = max(r.num_pairs for r in records)
    data: dict[str, Any] = {v: (("run", "step", "pair"), _pad([getattr(r, v) for r in records], (S, P)))
                            for v in PAIR_VARIABLES}
    data["l2_mean"] = (("run", "step"), _pad([r.l2_mean for r in records], (S,)))
    data["cos_mean"] = (("run", "step"), _pad([r.cos_mean for r in records], (S,)))
    omc = []
    for r in records:
        fin = np.isfinite(r.one_minus_cos)
        with np.errstate(invalid="ignore", divide="ignore"):
            omc.append(np.where(fin, r.one_minus_cos, 0.0).sum(axis=1) / fin.sum(axis=1))
    data["one_minus_cos_mean"] = (("run", "step"), _pad(omc, (S,)))
    nsteps = np.asarray([r.num_steps for r in records], dtype=np.int64)
    progress = [np.arange(n) / max(n - 1, 1) for n in nsteps]
    experts = np.full((R, S), "", dtype=object)
    for i, r in enumerate(records):
        experts[i, : r.num_steps] = r.experts
    bstep = np.asarray([boundary_of(r.experts) for r in records], dtype=np.int64)
    bsig = np.asarray([r.sigmas[k] if k > 0 else np.nan for r, k in zip(records, bstep)])
    bprog = np.asarray([p[k] if k > 0 else np.nan for p, k in zip(progress, bstep)])
    phase_names = list(dict.fromkeys(name for r in records for name, _, _ in r.phases))
    pstart = np.zeros((R, len(phase_names)), dtype=np.int64)
    pstop = np.zeros((R, len(phase_names)), dtype=np.int64)
    for i, r in enumerate(records):
        for name, a, b in r.phases:
            j = phase_names.index(name)
            pstart[i, j], pstop[i, j] = a, b
    coords: dict[str, Any] = {
        "run": _run_names(records), "step": np.arange(S), "pair": np.arange(P), "phase": phase_names,
        "sigma": (("run", "step"), _pad([r.sigmas for r in records], (S,))),
        "timestep": (("run", "step"), _pad([r.timesteps for r in records], (S,))),
        "progress": (("run", "step"), _pad(progress, (S,))),
        "expert": (("run", "step"), experts.astype(str)),
        "path": ("run", np.asarray([r.path for r in records], dtype=str)),
        "num_steps": ("run", nsteps),
        "num_pairs": ("run", np.asarray([r.num_pairs for r in records], dtype=np.int64)),
        "boundary_step": ("run", bstep), "boundary_sigma": ("run", bsig), "boundary_progress": ("run", bprog),
        "complete": ("run", np.asarray([bool(r.meta.get("complete", True)) for r in records])),
        "simulated": ("run", np.asarray([bool(r.meta.get("simulated", False)) for r in records])),
        "computed": ("run", np.asarray([r.computed for r in records])),
        "phase_start": (("run", "phase"), pstart), "phase_stop": (("run", "phase"), pstop),
    }
    for key in ("study", "job_id", "prompt_id", "prompt"):
        coords[key] = ("run", _column([r.meta.get(key) or "" for r in records]))
    coords["seed"] = ("run", _column([r.meta.get("seed") for r in records]))
    names = list(dict.fromkeys(k for r in records for k in r.settings))
    for name in names:
        coords[SETTING_PREFIX + name] = ("run", _column([r.settings.get(name) for r in records]))
    return xr.Dataset(data, coords=coords, attrs={"space": space})


class RunSet:
    """Per-step metrics of many runs and the statistics across them (methods forward to ``study.stats``).

    ``records``: one RunRecord per readable run; ``skipped``: (path, one-line reason) of every file left out.
    """

    def __init__(self, records: Sequence[RunRecord], skipped: Sequence[Skipped] = (), space: str = "x0") -> None:
        if not records:
            raise StudyError("no readable run" + (f" among {len(skipped)} files (first: {skipped[0].path}: "
                                                  f"{skipped[0].reason})" if skipped else ""))
        self.records = list(records)
        self.skipped = list(skipped)
        self.space = space

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"RunSet({len(self)} runs, space={self.space!r}, skipped={len(self.skipped)})"

    @cached_property
    def dataset(self) -> xr.Dataset:
        """xarray Dataset, dims run × step × pair (docs/statistics.md)."""
        return build_dataset(self.records, self.space)

    @property
    def runs(self) -> list[str]:
        return [str(r) for r in self.dataset["run"].values]

    def settings(self) -> dict[str, list]:
        """Each setting's distinct values, in first-seen order (runs without the setting left out)."""
        ds = self.dataset
        return {c[len(SETTING_PREFIX):]: [v for v in dict.fromkeys(ds[c].values.tolist()) if not _missing(v)]
                for c in ds.coords if c.startswith(SETTING_PREFIX)}

    def select(self, **where: Any) -> "RunSet":
        """The runs whose settings / attributes equal the given values, e.g. ``select(truncation="none")``."""
        ds = self.dataset
        keep = np.ones(len(self), dtype=bool)
        for name, value in where.items():
            col = ds[stats._coord_name(ds, name)].values
            keep &= stats._matches(col, value)
        if not keep.any():
            raise StudyError(f"no run has {', '.join(f'{k}={v}' for k, v in where.items())}")
        return RunSet([r for r, k in zip(self.records, keep) if k], self.skipped, self.space)

    def to_dataframe(self, pairs: bool = False) -> pd.DataFrame:
        """Tidy table: one row per (run, step, metric) of the per-step means, or with ``pairs`` per (run, step,
        pair, metric) of l2, cos, one_minus_cos, norm_ratio; every per-run coordinate is a column."""
        ds = self.dataset
        names = PAIR_VARIABLES if pairs else STEP_VARIABLES
        run_cols = [c for c in ds.coords if ds[c].dims == ("run",)]
        S, P = ds.sizes["step"], ds.sizes["pair"]
        valid = np.arange(S)[None, :] < ds["num_steps"].values[:, None]  # [run, step]
        if pairs:
            valid = valid[:, :, None] & (np.arange(P)[None, None, :] < ds["num_pairs"].values[:, None, None])
        r, st, *pr = np.nonzero(valid)
        cols: dict[str, Any] = {"run": ds["run"].values[r], **{c: ds[c].values[r] for c in run_cols},
                                "step": st}
        if pairs:
            cols["pair"] = pr[0]
        for c in ("sigma", "timestep", "progress", "expert"):
            cols[c] = ds[c].values[r, st]
        n = r.size
        df = pd.DataFrame({k: np.tile(v, len(names)) for k, v in cols.items()})
        df["metric"] = np.repeat(np.asarray(names, dtype=object), n)
        df["value"] = np.concatenate([ds[v].values[valid] for v in names])
        df["space"] = self.space
        return df

    def aligned(self, on: str = "sigma", grid: Any = None, points: int | None = None) -> xr.Dataset:
        """The dataset interpolated per run onto a common σ (or progress) grid: dims run × on × pair."""
        return align(self.dataset, on, grid, points)

    def curves(self, metric: str = "l2_mean", by: Any = None, on: str = "sigma", **kw: Any) -> xr.Dataset:
        """Mean and bootstrap CI per group and axis point (``stats.curve_stats``)."""
        return stats.curve_stats(self.dataset, metric, by, on, **kw)

    def phase_table(self, metric: str = "l2_mean", by: Any = None, scheme: str = "run", **kw: Any) -> pd.DataFrame:
        """Per (group, phase) mean with bootstrap CI (``stats.phase_stats``); scheme "run" or "expert"."""
        return stats.phase_stats(self.dataset, metric, by, scheme, **kw)

    def paired_difference(self, setting: str, a: Any, b: Any, metric: str = "l2_mean", on: str = "sigma",
                          **kw: Any) -> stats.PairedDifference:
        """``a − b`` of ``setting`` over the same (prompt, seed, other settings) (``stats.paired_difference``)."""
        return stats.paired_difference(self.dataset, setting, a, b, metric, on, **kw)

    def rank_prompts(self, metric: str = "l2_mean", on: str = "sigma", **kw: Any) -> pd.DataFrame:
        """Prompts by deviation of their mean curve from the mean over prompts (``stats.rank_prompts``)."""
        return stats.rank_prompts(self.dataset, metric, on, **kw)

    def blocks(self) -> xr.Dataset:
        """Block-probe metrics of the runs recorded with ``LatentProbe(blocks=...)``: dims run × step × branch × block
        [× frame_pair] (``blockset.build_block_dataset``); the others are left out and counted in
        ``attrs["without_blocks"]``. Statistics: ``blockset.block_curves(rs.blocks(), "block_update")``."""
        from .blockset import build_block_dataset

        return build_block_dataset(self.records, self.runs, stats.prompt_keys(self.dataset))

    def boundaries(self) -> pd.DataFrame:
        """Each run's own expert boundary: step (0-based; −1: one expert), σ and progress there."""
        ds = self.dataset
        cols = ["run", "prompt_id", "seed", *[c for c in ds.coords if c.startswith(SETTING_PREFIX)], "num_steps",
                "boundary_step", "boundary_sigma", "boundary_progress"]
        return pd.DataFrame({c: ds[c].values for c in cols})


def open_runs(paths: str | os.PathLike | Iterable[str | os.PathLike], *, space: str = "x0", phases: Any = "thirds",
              workers: int | None = None, scheduler: str | None = None, client: Any = None,
              memory_limit: str | int = DEFAULT_MEMORY_LIMIT, processes: bool = True, cache: bool = True,
              incomplete: bool = False, strict: bool = False,
              progress: Callable[[Iterable, str, int], Iterable] | None = None) -> RunSet:
    """A RunSet of the runs named by ``paths`` (files, globs, folders; see ``expand_paths``).

    Metrics come from each file's ``/metrics`` cache when current, else are computed (and cached when the file
    is writable and ``cache``), one task per file. Where: ``workers=None`` (default) threads of this process
    (the CPU count, at most 4), nothing started; ``workers=0`` one file after another here; ``workers=N``
    (N ≥ 1) a Dask LocalCluster of N processes, or ``scheduler`` / ``client`` for a running cluster — worker
    processes import the calling script again, so a script that asks for them keeps its work under
    ``if __name__ == "__main__":``. A file that cannot be read (corrupt, truncated, not a run, incomplete
    unless ``incomplete``, ``space`` not captured) is skipped and listed in ``RunSet.skipped`` with a one-line
    reason; ``strict=True`` refuses the set instead (StudyError naming the first such file).
    """
    files = expand_paths(paths)
    if not files:
        raise StudyError("no run file given")
    if len(files) == 1 and client is None and scheduler is None:
        workers = 0
    results = recompute(files, space=space, phases=phases, cache=cache, incomplete=incomplete, workers=workers,
                        scheduler=scheduler, client=client, memory_limit=memory_limit, processes=processes,
                        progress=progress)
    records = [r for r in results if isinstance(r, RunRecord)]
    skipped = [r for r in results if isinstance(r, Skipped)]
    if strict and skipped:
        raise StudyError(f"{skipped[0].path}: {skipped[0].reason}"
                         + (f" (and {len(skipped) - 1} more unreadable files)" if len(skipped) > 1 else ""))
    return RunSet(records, skipped, space)
