"""The HDF5 store: crash safety, foreign/truncated files, live reading, torchrun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from latent_probe import RunFileError, open_run

HERE = os.path.dirname(__file__)


def test_sigkill_leaves_every_flushed_step(tmp_path):
    path = tmp_path / "killed.h5"
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "scripts", "slow_generation.py"), str(path), "400"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        seen = 0
        while time.time() < deadline and seen < 5:
            time.sleep(0.2)
            if path.exists():
                try:
                    with open_run(path) as live:  # follows the live file (SWMR)
                        seen = live.num_steps
                except RunFileError:
                    pass  # not a single step yet
        assert seen >= 5, f"the writer committed only {seen} steps in 60 s"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    with open_run(path) as run:
        n = run.num_steps
        assert n >= seen and n < 400
        assert not run.complete
        x0 = run.latents("x0")
        for i in range(n):  # every committed step reads back, with finite data and its metadata
            assert np.isfinite(x0[i]).all()
        assert len(run.sigmas) == n and np.all(np.diff(run.sigmas) < 0)
        assert np.all(np.diff(run.step_indices) == 1)


def test_not_hdf5_foreign_and_truncated(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(RunFileError, match="not an HDF5 file"):
        open_run(junk)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["data"] = np.zeros(3)
    with pytest.raises(RunFileError, match="not a latent_probe run"):
        open_run(foreign)
    with pytest.raises(FileNotFoundError):
        open_run(tmp_path / "missing.h5")

    from latent_probe.demo import run_demo_generation

    good = tmp_path / "good.h5"
    _, run = run_demo_generation(good, steps=4, frames=5)
    run.close()
    data = good.read_bytes()
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(RunFileError, match="is truncated"):
        open_run(truncated)


def test_future_schema_refused(tmp_path):
    from latent_probe.demo import run_demo_generation

    path = tmp_path / "r.h5"
    run_demo_generation(path, steps=3, frames=5)[1].close()
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(RunFileError, match="schema version 99"):
        open_run(path)


def test_lazy_view_indexing(tmp_path):
    from latent_probe.demo import run_demo_generation

    _, run = run_demo_generation(None, steps=5, frames=5, store_dtype="float32")
    view = run.latents("x_t")
    full = view[:]
    assert full.shape == view.shape == (5, 1, 16, 5, 24, 32)
    np.testing.assert_array_equal(view[-1], full[4])
    np.testing.assert_array_equal(view[[3, 1]], full[[3, 1]])
    np.testing.assert_array_equal(view[1:4, 0, :, 2], full[1:4, 0, :, 2])
    assert sum(1 for _ in view) == 5
    with pytest.raises(IndexError):
        view[5]
    with pytest.raises(KeyError, match="was not captured"):
        run.latents("pred_uncond")


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="torchrun test uses gloo on linux")
def test_torchrun_two_processes_rank0_writes(tmp_path):
    path = tmp_path / "dist.h5"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(HERE, "scripts", "distributed_generation.py"), str(path), HERE]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "rank 0 ok" in res.stdout and "rank 1 ok" in res.stdout
    with open_run(path) as run:
        assert run.complete and run.num_steps == 6
