"""Run files that xarray can read: HDF5 dimension scales name every axis (issue 11, item 7).

``xarray.open_dataset(path, engine="h5netcdf")`` shows the latents on (step, batch, channel, frame, height, width)
with step coordinates sigma, timestep and expert, no ``phony_dim_N``; every value is checked against what plain
h5py reads from ``/latents`` and ``/steps``. A run killed mid-way still opens in xarray (through ``open_run``)
with its committed steps; a file written before the view still opens with ``open_run``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from conftest import run_pipe

from latent_probe import LatentProbe, RunFileError, open_run

xr = pytest.importorskip("xarray")
pytest.importorskip("h5netcdf")

HERE = os.path.dirname(__file__)
DIMS = ("step", "batch", "channel", "frame", "height", "width")


@pytest.fixture(scope="module")
def pipe_run(tmp_path_factory, two_expert_pipe):
    path = tmp_path_factory.mktemp("xarray") / "run.h5"
    with LatentProbe(two_expert_pipe, path, cfg_branches=True):
        run_pipe(two_expert_pipe, steps=6, seed=4)
    return str(path)


def h5py_truth(path: str) -> dict:
    """What the file holds, read with plain h5py from the tables open_run reads (independent of the view)."""
    with h5py.File(path, "r") as f:
        steps = f["steps"][:]
        names = json.loads(f.attrs["experts"]) + ["unknown"]
        return {"latents": {q: ds[:] for q, ds in f["latents"].items()}, "sigma": steps["sigma"],
                "timestep": steps["timestep"], "alpha": steps["alpha"],
                "expert": [names[i] for i in steps["expert"]]}


def check_dataset(ds, truth: dict, n: int | None = None) -> None:
    n = len(truth["sigma"]) if n is None else n
    assert not [d for d in ds.dims if str(d).startswith("phony_dim")], ds.dims
    assert set(truth["latents"]) <= set(ds.data_vars)
    for q, arr in truth["latents"].items():
        assert ds[q].dims == DIMS
        assert ds[q].shape == (n, *arr.shape[1:])
        assert ds[q].values.tobytes() == arr[:n].tobytes(), q
    for c in ("sigma", "timestep", "alpha", "expert"):
        assert c in ds.coords and ds[c].dims == ("step",)
    np.testing.assert_array_equal(ds["step"].values, np.arange(n))
    np.testing.assert_array_equal(ds["sigma"].values, truth["sigma"][:n])
    np.testing.assert_array_equal(ds["timestep"].values, truth["timestep"][:n])
    np.testing.assert_array_equal(ds["alpha"].values, truth["alpha"][:n])
    assert [str(e) for e in ds["expert"].values] == truth["expert"][:n]
    assert all(isinstance(e, str) for e in ds["expert"].values)  # decoded names, not bytes
    b, c, f, h, w = next(iter(truth["latents"].values())).shape[1:]
    for name, size in zip(DIMS[1:], (b, c, f, h, w)):
        np.testing.assert_array_equal(ds[name].values, np.arange(size))


def test_open_dataset_names_dims_and_step_coordinates(pipe_run):
    truth = h5py_truth(pipe_run)
    assert len(set(truth["expert"])) == 2  # the two experts, by name
    ds = xr.open_dataset(pipe_run, engine="h5netcdf")
    try:
        check_dataset(ds, truth)
        assert set(truth["latents"]) == {"x_t", "pred", "x0", "eps", "pred_cond", "pred_uncond"}
        assert int(ds["generation"].values[0]) == 1 and ds["run_state"].dims == ("generation",)
        assert ds.attrs["schema"] == "latent_probe"
        # the sigma coordinate selects steps like any xarray coordinate
        late = ds.x0.where(ds.sigma < 0.5, drop=True)
        assert late.sizes["step"] == int((truth["sigma"] < 0.5).sum())
    finally:
        ds.close()
    with open_run(pipe_run) as run:  # the reader and plain h5py still read the file as before
        assert run.num_steps == 6 and run.complete
        for q, arr in truth["latents"].items():
            assert run.latents(q)[:].tobytes() == arr.tobytes()
        ds = run.to_xarray()
        check_dataset(ds, truth)
        np.testing.assert_array_equal(ds.sigma.values, run.sigmas)


def test_in_memory_run_to_xarray(two_expert_pipe):
    with LatentProbe(two_expert_pipe, store_dtype="float32") as probe:
        run_pipe(two_expert_pipe, steps=4, seed=1)
    run = probe.run
    ds = run.to_xarray()
    assert ds.x0.dims == DIMS and ds.sizes["step"] == 4
    assert ds.x0.values.tobytes() == run.latents("x0")[:].tobytes()
    assert list(ds.expert.values) == list(run.experts)


def test_to_dataframe_carries_sigma_timestep_expert_with_0_based_steps(pipe_run):
    with open_run(pipe_run) as run:
        df = run.to_dataframe("x0")
        assert {"step", "batch", "pair", "metric", "value", "timestep", "sigma", "expert"} <= set(df.columns)
        assert sorted(df.step.unique()) == list(range(run.num_steps))
        for s in range(run.num_steps):
            rows = df[df.step == s]
            assert (rows.sigma == run.sigmas[s]).all() and (rows.timestep == run.timesteps[s]).all()
            assert (rows.expert == run.experts[s]).all()
        table = run.step_table()
        assert table.step.tolist() == list(range(run.num_steps)) and table.sigma.tolist() == run.sigmas.tolist()


def test_killed_run_opens_in_xarray_with_its_committed_steps(tmp_path):
    path = tmp_path / "killed.h5"
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "scripts", "slow_generation.py"), str(path), "400"],
                            env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # wait for a few committed steps
            if path.exists():
                try:
                    with open_run(path) as run:
                        if run.num_steps >= 4:
                            break
                except RunFileError:
                    pass
            time.sleep(0.05)
        else:
            pytest.fail("the generation never committed 4 steps")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    with open_run(path) as run:
        n = run.num_steps
        assert 4 <= n < 400 and not run.complete and not run.recording
        want = {q: run.latents(q)[:] for q in run.quantities}
        sigmas, experts = run.sigmas, list(run.experts)
        ds = run.to_xarray()  # through the reader: the stale "open for writing" mark is hidden from HDF5
        assert ds.sizes["step"] == n and ds.x0.dims == DIMS
        for q, arr in want.items():
            assert ds[q].values.tobytes() == arr.tobytes(), q
        np.testing.assert_array_equal(ds.sigma.values, sigmas)
        assert list(ds.expert.values) == experts
        ds.close()
    # plain HDF5 refuses the killed writer's mark (documented); h5py's SWMR read mode opens it as it is
    with pytest.raises(OSError, match="open for write"):
        xr.open_dataset(path, engine="h5netcdf")
    import h5netcdf

    with h5py.File(path, "r", swmr=True, libver="latest") as f:
        ds = xr.open_dataset(xr.backends.H5NetCDFStore(h5netcdf.File(f, "r")))
        assert ds.sizes["step"] >= n  # + at most one step written but not committed when the writer died
        for q, arr in want.items():
            assert ds[q][:n].values.tobytes() == arr.tobytes(), q
        np.testing.assert_array_equal(ds.sigma.values[:n], sigmas)
        ds.close()


def test_a_file_without_the_view_still_reads(pipe_run, tmp_path):
    """A version-2 file as latent_probe wrote it before dimension scales: /latents, /steps, /run_state only."""
    old = tmp_path / "old.h5"
    with h5py.File(pipe_run, "r") as src, h5py.File(old, "w", libver="latest") as dst:
        for k in src.attrs:
            if k not in ("generation", "probe_id", "planned_steps", "checksum"):
                dst.attrs.create(k, src.attrs[k], dtype=src.attrs.get_id(k).dtype)
        dst.create_dataset("run_state", data=src["run_state"][:])
        steps = dst.create_dataset("steps", data=src["steps"][:], maxshape=(None,), chunks=(256,))
        steps.attrs["quantities"] = src["steps"].attrs["quantities"]
        lat = dst.create_group("latents")
        for q, ds in src["latents"].items():
            lat.create_dataset(q, data=ds[:], maxshape=(None, *ds.shape[1:]), chunks=(1, *ds.shape[1:]))
    truth = h5py_truth(pipe_run)
    with open_run(old) as run:
        assert run.num_steps == 6 and run.complete and run.generation is None and run.generations == []
        assert run.planned_steps is None
        for q, arr in truth["latents"].items():
            assert run.latents(q)[:].tobytes() == arr.tobytes()
        assert list(run.experts) == truth["expert"]
        with pytest.raises(RunFileError, match="without HDF5 dimension scales"):
            run.to_xarray()


def test_live_run_to_xarray_shows_the_committed_steps(tmp_path):
    path = tmp_path / "live.h5"
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "scripts", "slow_generation.py"), str(path), "40"],
                            env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not path.exists() and time.time() < deadline:
            time.sleep(0.02)
        with open_run(path) as run:
            seen = []
            while True:
                recording = run.recording
                run.refresh()
                ds = run.to_xarray()
                n = run.num_steps
                assert ds.sizes["step"] == n and ds.x0.values.tobytes() == run.latents("x0")[:].tobytes()
                np.testing.assert_array_equal(ds.sigma.values, run.sigmas)
                ds.close()
                seen.append(n)
                if not recording or time.time() > deadline:
                    break
                time.sleep(0.1)
        assert seen == sorted(seen) and seen[-1] == 40 and proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
