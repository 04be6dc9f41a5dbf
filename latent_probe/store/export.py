"""A run's tables for pandas and xarray: the step table, the tidy metrics table and the lazy xarray Dataset.

``Run.step_table()``, ``Run.to_dataframe()`` and ``Run.to_xarray()`` call these; pandas, xarray and h5netcdf are
imported on first use (the capture path needs none of them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from . import schema
from .validate import RunFileError, check_netcdf_view

if TYPE_CHECKING:
    from .reader import Run

__all__ = ["step_table", "to_dataframe", "to_xarray"]


def step_table(run: "Run") -> Any:
    """pandas DataFrame, one row per committed step: ``step`` (0-based, the row; the convention everywhere in
    latent_probe), ``index`` (the scheduler's own step index), ``timestep``, ``sigma``, ``alpha``, ``expert``."""
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover
        raise ImportError("step_table needs pandas: pip install pandas") from None
    return pd.DataFrame({"step": np.arange(run._n), "index": run.step_indices, "timestep": run.timesteps,
                         "sigma": run.sigmas, "alpha": run.alphas,
                         "expert": np.asarray([str(e) for e in run.experts], dtype=object)})


def to_dataframe(run: "Run", space: str = "x0") -> Any:
    """Tidy pandas DataFrame of the adjacent-frame metrics of ``space`` (step, batch, pair, metric, value,
    space; from the ``run.metrics`` extension) with each step's ``timestep``, ``sigma`` and ``expert``. ``step``
    is 0-based: row s is ``scheduler.timesteps[s]`` of a generation that started at the first timestep."""
    df = run.metrics.to_dataframe(space)
    steps = step_table(run)
    extra = [c for c in ("timestep", "sigma", "expert") if c not in df.columns]
    if not extra or "step" not in df.columns:
        return df
    return df.merge(steps[["step", *extra]], on="step", how="left", sort=False)


def to_xarray(run: "Run") -> Any:
    """The committed steps as an ``xarray.Dataset`` (needs xarray and h5netcdf): every quantity on dimensions
    (step, batch, channel, frame, height, width), coordinates step (0-based), timestep, sigma, alpha and
    expert. Read lazily from this run's open file, so it works for a file being recorded or left by a killed
    writer too (``xarray.open_dataset(path, engine="h5netcdf")`` needs a cleanly closed one); load it
    (``.load()``) before closing the run. Files written before dimension scales were added are refused."""
    try:
        import h5netcdf
        import xarray as xr
    except ImportError:
        raise ImportError("to_xarray needs xarray and h5netcdf: pip install xarray h5netcdf") from None
    if schema.STEP_DIM not in run._file:
        raise RunFileError(f"{run._where} was written without HDF5 dimension scales (by latent_probe "
                           f"{run._root_attrs.get('library_version', '?')}): xarray cannot name its axes")
    check_netcdf_view(run._file, run._where, run._file_size())
    if run._file.swmr_mode:  # a live run: let the step scale and coordinates show what was committed since
        for name in (schema.STEP_DIM, *schema.STEP_COORDS):
            obj = run._file.get(name)
            if isinstance(obj, h5py.Dataset):
                obj.refresh()
    store = xr.backends.H5NetCDFStore(h5netcdf.File(run._file, "r"))
    ds = xr.open_dataset(store).isel({schema.STEP_DIM: slice(0, run._n)})
    if schema.LATENT_STEP_DIM in ds.dims:  # latents for chosen steps: the committed rows
        ds = ds.isel({schema.LATENT_STEP_DIM: slice(0, run._k)})
    if schema.BLOCKS_GROUP in run._file:  # the block probes' metrics (run.blocks, registered by latent_probe.metrics)
        blocks = run.blocks.to_xarray().drop_vars(["sigma", "expert"])
        ds = ds.assign(blocks.data_vars).assign_coords(branch=blocks.branch, block=blocks.block)
    return ds
