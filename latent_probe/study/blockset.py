"""Block-probe metrics across a study: every probed run's ``run.blocks.metrics()`` as one xarray Dataset, and the
per-(step, block) mean over runs with a cluster-bootstrap CI by prompt (``RunSet.blocks()``, ``block_curves``).

    bs = open_runs("study/runs/*.h5").blocks()         # dims run × step × branch × block [× frame_pair]
    bs.attrs["without_blocks"]                          # runs of the set recorded without block probes (left out)
    block_curves(bs, "block_update")                    # step × block: mean, ci_low, ci_high over runs
    block_curves(bs, "block_update", on="sigma")        # σ × block: runs of different step counts on one axis

Values are batch means (B is 1 for Wan runs), float64, exactly ``block_metrics_from_sums`` of each file's sums.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import xarray as xr

from ..metrics.blocks import RunBlocks  # noqa: F401 - registers run.blocks
from ..store.blocks import BRANCHES, block_info
from ..store.reader import open_run
from .align import AXES, common_grid, interp_rows
from .records import RunRecord, StudyError

__all__ = ["build_block_dataset", "block_curves", "BLOCK_VARIABLES"]

BLOCK_VARIABLES = {"cos": "block_cos", "l2": "block_l2", "update": "block_update", "change": "block_change"}


def _pad(arrays: Sequence[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    out = np.full((len(arrays), *shape), np.nan)
    for i, a in enumerate(arrays):
        out[(i, *(slice(0, n) for n in a.shape))] = a
    return out


def build_block_dataset(records: Sequence[RunRecord], names: Sequence[str], prompts: Sequence[str]) -> xr.Dataset:
    """Block metrics of the ``records`` that have ``/blocks``: ``block_cos``, ``block_l2`` [run, step, branch, block,
    frame_pair]; ``block_update``, ``block_change`` [run, step, branch, block]; ``mag_ratio`` [run, step, branch]
    (batch means; shorter runs NaN-padded). Runs without block probes are left out and counted in
    ``attrs["without_blocks"]`` (their names in ``attrs["runs_without_blocks"]``). Refuses (StudyError) a set where no
    run was probed, or whose probed runs probed different blocks."""
    kept: list[tuple[str, str, RunRecord, dict[str, np.ndarray], list[int], np.ndarray]] = []
    without: list[str] = []
    for rec, name, prompt in zip(records, names, prompts):
        with open_run(rec.path) as run:
            info = block_info(run)
            if info is None:
                without.append(name)
                continue
            m = {k: v.mean(axis=2) for k, v in run.blocks.metrics().items() if k in (*BLOCK_VARIABLES, "mag")}
            kept.append((name, prompt, rec, m, list(info["blocks"]), np.asarray(run.sigmas, np.float64)))
    if not kept:
        raise StudyError(f"none of the {len(records)} runs was recorded with block probes (LatentProbe(blocks=...))")
    blocks = kept[0][4]
    for name, _, _, _, b, _ in kept:
        if b != blocks:
            raise StudyError(f"run {name} probed blocks {b}, run {kept[0][0]} probed {blocks}: one block set per study")
    S = max(k[3]["update"].shape[0] if "update" in k[3] else k[2].num_steps for k in kept)
    K = len(blocks)
    P = max((k[3]["cos"].shape[-1] for k in kept if "cos" in k[3]), default=0)
    data: dict[str, Any] = {}
    for short, var in BLOCK_VARIABLES.items():
        if not any(short in k[3] for k in kept):
            continue
        tail = (P,) if short in ("cos", "l2") else ()
        arrays = [k[3].get(short, np.full((0, 2, K) + tail, np.nan)) for k in kept]
        data[var] = (("run", "step", "branch", "block") + (("frame_pair",) if tail else ()),
                     _pad(arrays, (S, 2, K) + tail))
    if any("mag" in k[3] for k in kept):
        data["mag_ratio"] = (("run", "step", "branch"), _pad([k[3].get("mag", np.full((0, 2), np.nan)) for k in kept],
                                                              (S, 2)))
    nsteps = np.asarray([k[2].num_steps for k in kept], dtype=np.int64)
    progress = [np.arange(n) / max(n - 1, 1) for n in nsteps]        # 0 at the first step, 1 at the last
    coords = {"run": [k[0] for k in kept], "step": np.arange(S), "branch": list(BRANCHES), "block": blocks,
              "prompt_key": ("run", np.asarray([k[1] for k in kept], dtype=str)),
              "num_steps": ("run", nsteps),
              "sigma": (("run", "step"), _pad([k[5] for k in kept], (S,))),
              "progress": (("run", "step"), _pad(progress, (S,)))}
    if P:
        coords["frame_pair"] = np.arange(P)
    return xr.Dataset(data, coords=coords, attrs={"without_blocks": len(without), "runs_without_blocks": without})


def block_curves(ds: xr.Dataset, metric: str = "block_update", branch: str = "cond", n_resamples: int = 4000,
                 confidence: float = 0.95, seed: int = 0, on: str = "step",
                 grid: Sequence[float] | np.ndarray | None = None, points: int | None = None) -> xr.Dataset:
    """Per (step, block) mean over runs of ``metric`` (``block_cos`` / ``block_l2`` first averaged over frame pairs)
    and its percentile CI from resampling prompts with replacement (each drawn prompt brings all its runs; the
    scheme of ``inference.cluster_bootstrap``): dims step × block, variables mean, ci_low, ci_high (attrs n_runs,
    n_prompts; coordinate sigma where every run shares the schedule, else NaN).
    ``on="step"`` (default): refused unless every run has as many steps. ``on="sigma"`` / ``"progress"``: each
    run's curve is first interpolated linearly in σ (or in progress, step / (steps − 1)) onto ``grid`` (default
    ``align.common_grid``: ``points`` values over the σ range every run covers, noisiest first), as
    ``study.align`` does for the other per-step curves; dims σ (or progress) × block; never extrapolated.
    A cell where any run has no finite value (e.g. ``block_change`` at step 0 and, on σ, between step 0 and 1;
    the uncond branch without guidance) is NaN, never a mean of fewer runs."""
    if metric not in BLOCK_VARIABLES.values() or metric not in ds.data_vars:
        raise StudyError(f"{metric!r} is not a block metric of this set; choose from "
                         + ", ".join(v for v in BLOCK_VARIABLES.values() if v in ds.data_vars))
    if branch not in BRANCHES:
        raise StudyError(f"branch must be one of {', '.join(BRANCHES)}, got {branch!r}")
    if on not in ("step", *AXES):
        raise StudyError(f"on must be step, sigma or progress, got {on!r}")
    counts = np.unique(ds["num_steps"].values)
    if on == "step" and counts.size > 1:
        raise StudyError(f"probed runs have {', '.join(map(str, counts))} steps: block curves need equal step counts "
                         "on step (use on='sigma' or on='progress')")
    if not 0 < confidence < 1 or n_resamples < 1:
        raise StudyError("confidence must be in (0, 1) and n_resamples at least 1")
    v = ds[metric].sel(branch=branch)
    if "frame_pair" in v.dims:
        v = v.mean("frame_pair", skipna=False)
    vals = v.transpose("run", "step", "block").values  # [R, S, K]
    axis: np.ndarray = ds["step"].values
    if on != "step":
        if on not in ds.coords:
            raise StudyError(f"this block set has no {on} coordinate (built by an older latent_probe): rebuild it")
        axis = np.asarray(common_grid(ds, on, points) if grid is None else grid, dtype=np.float64)
        if axis.ndim != 1 or axis.size == 0 or not np.all(np.isfinite(axis)):
            raise StudyError("the grid must be a non-empty 1-D array of finite values")
        x, n = ds[on].values, ds["num_steps"].values
        vals = np.stack([interp_rows(x[r, : int(n[r])], vals[r, : int(n[r])], axis) for r in range(vals.shape[0])])
    labels, idx = np.unique(ds["prompt_key"].values, return_inverse=True)
    p = len(labels)
    if p < 2:
        raise StudyError("block_curves needs runs of at least 2 prompts: one prompt gives no interval")
    finite = np.isfinite(vals).all(0)  # [S, K]
    filled = np.where(np.isfinite(vals), vals, 0.0)
    sums = np.stack([filled[idx == j].sum(0) for j in range(p)])  # [P, S, K] per-prompt sums
    n_of = np.bincount(idx, minlength=p).astype(np.float64)  # [P] runs per prompt
    draw = np.random.default_rng(seed).integers(0, p, size=(n_resamples, p))
    w = np.stack([np.bincount(d, minlength=p) for d in draw]).astype(np.float64)  # [n, P] times each prompt drawn
    boot = np.einsum("np,psk->nsk", w, sums) / (w @ n_of)[:, None, None]
    low, high = np.percentile(boot, [50 * (1 - confidence), 50 * (1 + confidence)], axis=0)
    nan = np.where(finite, 1.0, np.nan)
    out = xr.Dataset({"mean": ((on, "block"), vals.mean(0) * nan), "ci_low": ((on, "block"), low * nan),
                      "ci_high": ((on, "block"), high * nan)},
                     coords={on: axis, "block": ds["block"].values},
                     attrs={"metric": metric, "branch": branch, "n_runs": vals.shape[0], "n_prompts": p,
                            "confidence": confidence, "n_resamples": n_resamples, "seed": seed, "on": on,
                            "method": f"percentile CI, {n_resamples} resamples of prompts (cluster bootstrap)"})
    if on == "step" and "sigma" in ds.coords:
        sig = ds["sigma"].values
        same = np.allclose(sig, sig[:1], rtol=0, atol=0, equal_nan=True)
        out = out.assign_coords(sigma=("step", sig[0] if same else np.full(sig.shape[1], np.nan)))
    return out
