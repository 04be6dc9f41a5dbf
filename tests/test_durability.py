"""Committed steps survive kills, full disks and live readers; stored values are the values (issue 8).

Every check compares what a damaged run holds with a reference run of the same deterministic generation,
bit for bit.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import warnings

import json

import h5py
import numpy as np
import pytest
import torch

from latent_probe import LatentProbe, RunFileError, WriterError, open_run

HERE = os.path.dirname(__file__)
SCRIPTS = os.path.join(HERE, "scripts")


def assert_steps_equal(run, ref, n=None) -> None:
    """The first n steps of ``run`` equal ``ref``'s bit for bit (latents and per-step metadata)."""
    n = run.num_steps if n is None else n
    assert n <= ref.num_steps
    assert run.quantities == ref.quantities
    for q in ref.quantities:
        a, b = run.latents(q)[:n], ref.latents(q)[:n]
        assert a.tobytes() == b.tobytes(), f"{q} differs from the reference"
    for field in ("sigmas", "timesteps", "step_indices"):
        np.testing.assert_array_equal(getattr(run, field)[:n], getattr(ref, field)[:n])
    assert list(run.experts[:n]) == list(ref.experts[:n])


def timed_open(path, limit=5.0):
    t0 = time.perf_counter()
    run = open_run(path)
    assert time.perf_counter() - t0 < limit
    return run


# ------------------------------------------------------------------------------------------- SIGKILL
@pytest.mark.slow  # the slowest 5 % of the suite: CI runs them, `-m "not slow"` skips them locally
@pytest.mark.skipif(not hasattr(os, "fork"), reason="trials fork a process each")
def test_sigkill_anywhere_including_close_keeps_every_committed_step(tmp_path):
    steps = 24
    script = os.path.join(SCRIPTS, "kill_trials.py")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, script, str(tmp_path), str(steps), "count"], capture_output=True,
                         text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    events = int(res.stdout.split()[-1])
    assert events > 20
    rng = random.Random(0)
    plans = [f"close:{k}" for k in sorted(rng.sample(range(1, events + 1), 16))]
    plans += [f"time:{rng.uniform(0.0, 0.5):.3f}" for _ in range(16)]
    res = subprocess.run([sys.executable, script, str(tmp_path), str(steps), *plans], capture_output=True,
                         text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    outcomes = dict(line.split(" ", 1) for line in res.stdout.strip().splitlines())
    with open_run(tmp_path / "count.h5") as ref:
        assert ref.complete and ref.num_steps == steps
        killed_in_close = 0
        for k, plan in enumerate(plans):
            path = tmp_path / f"run_{k}.h5"
            mark = (tmp_path / f"run_{k}.committed").read_text().strip()
            committed = int(mark) if mark else 0
            if plan.startswith("close"):
                killed_in_close += "killed" in outcomes[str(k)]
                assert committed == steps
            if not path.exists():  # killed before the first commit: nothing was published
                assert committed == 0, f"trial {k} ({plan}) committed {committed} steps but left no file"
                continue
            with timed_open(path) as run:
                assert run.num_steps >= committed, f"trial {k} ({plan}) lost committed steps"
                assert_steps_equal(run, ref)
                if run.complete:
                    assert run.num_steps == steps
                if not run.attrs["closed"]:
                    assert not run.recording  # a killed writer is told from a live one
    assert killed_in_close >= 12  # the profiler's kill points lie inside close, not after it


def test_live_reader_never_breaks_the_writer(tmp_path):
    """A reader following the run (SWMR) the whole time: the writer completes, the reader sees every step."""
    path = tmp_path / "live.h5"
    proc = subprocess.Popen([sys.executable, os.path.join(SCRIPTS, "slow_generation.py"), str(path), "40"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen, run, recording = 0, None, False
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if run is None and path.exists():
                run = open_run(path, swmr=True)
            if run is not None:
                recording |= run.recording
                run.refresh()
                assert run.num_steps >= seen  # monotone
                seen = run.num_steps
                if seen:
                    run.latents("x0")[seen - 1]  # the newest committed step reads
            time.sleep(0.02)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b"finished" in out and seen > 0 and recording
    run.refresh()
    assert not run.recording and run.complete
    assert run.num_steps == 40
    run.close()
    with open_run(path) as done:
        assert done.complete and done.num_steps == 40


def test_info_follow_prints_every_step_of_a_live_run(tmp_path):
    path = tmp_path / "live.h5"
    proc = subprocess.Popen([sys.executable, os.path.join(SCRIPTS, "slow_generation.py"), str(path), "30"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not path.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        res = subprocess.run([sys.executable, "-m", "latent_probe", "info", str(path), "--follow",
                              "--interval", "0.1"], capture_output=True, text=True, timeout=180)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stdout.splitlines() if ln.strip().startswith("step ")]
    assert [int(ln.split()[1]) for ln in lines] == list(range(30))
    assert res.stdout.rstrip().endswith("30 steps, complete")


def test_lock_conflict_is_named(tmp_path):
    from latent_probe.demo import run_demo_generation

    path = tmp_path / "r.h5"
    run_demo_generation(path, steps=3, frames=5)[1].close()
    holder = subprocess.Popen([sys.executable, "-c", "import h5py, sys, time; f = h5py.File(sys.argv[1], 'r+'); "
                               "print('open', flush=True); time.sleep(30)", str(path)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"open"
        with pytest.raises(RunFileError, match="locked by another process"):
            open_run(path)
    finally:
        holder.kill()
        holder.wait()
    with open_run(path) as run:  # the holder was killed: its stale mark does not lock the run out
        assert run.complete and run.num_steps == 3
    with pytest.raises(RunFileError, match="h5clear"):
        open_run(path, "r+")


# ------------------------------------------------------------------------------------------- disk full
DISK_FULL_SCRIPT = r"""
import json, os, sys, warnings
import torch
from diffusers import UniPCMultistepScheduler
from latent_probe import LatentProbe, WriterError

def generate(path, on_write_error="raise"):
    torch.manual_seed(0)
    model = torch.nn.Conv3d(8, 8, 3, padding=1)
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    sched.set_timesteps(12)
    x = torch.randn(1, 8, 5, 24, 24, generator=torch.Generator().manual_seed(0))
    with LatentProbe((model, sched), path, store_dtype="float32", overwrite=True,
                     on_write_error=on_write_error), torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(model(x), t, x).prev_sample
    return x

if sys.argv[1] == "reference":
    torch.save(generate(sys.argv[2]), sys.argv[2] + ".pt")
    sys.exit(0)
reference = torch.load(sys.argv[1])
for job in sys.argv[2:]:
    mode, path = job.split("=", 1)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            x = generate(path, on_write_error=mode)
        out = {"outcome": "finished", "warnings": [str(w.message) for w in caught
                                                   if "latent_probe" in str(w.message)]}
        out["final"] = x.tolist() == reference.tolist()
    except WriterError as exc:
        out = {"outcome": "error", "type": type(exc).__name__, "message": str(exc)}
    print(json.dumps(out), flush=True)
"""


def _mount_tmpfs(where, size: int) -> bool:
    os.makedirs(where, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    return res.returncode == 0


def _can_mount(tmp_path) -> bool:
    probe = tmp_path / "probe_mount"
    if os.geteuid() != 0 or not _mount_tmpfs(probe, 65536):
        return False
    subprocess.run(["umount", str(probe)])
    return True


@pytest.mark.slow
def test_disk_full_keeps_committed_steps_and_says_so(tmp_path):
    if not _can_mount(tmp_path):
        pytest.skip("cannot mount a small tmpfs here (needs root / CAP_SYS_ADMIN)")
    script = tmp_path / "disk_full.py"
    script.write_text(DISK_FULL_SCRIPT)
    ref_path = tmp_path / "ref.h5"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, str(script), "reference", str(ref_path)], capture_output=True, text=True,
                         timeout=120, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    step_bytes = 4 * 8 * 5 * 24 * 24 * 4
    levels = [64 * 1024, 200 * 1024, 300 * 1024] + [int(k * step_bytes) + 320 * 1024 for k in (0.5, 1.5, 2, 3.3, 5,
                                                                                                  7.7, 11, 13)]
    jobs = []
    try:
        for level in levels:
            for mode in ("raise", "warn"):
                mnt = tmp_path / f"fs_{level}_{mode}"
                assert _mount_tmpfs(mnt, level)
                jobs.append((mnt, mode))
        res = subprocess.run([sys.executable, str(script), str(ref_path) + ".pt",
                              *(f"{mode}={mnt / 'run.h5'}" for mnt, mode in jobs)],
                             capture_output=True, text=True, timeout=300, env=env)
        assert res.returncode == 0, f"exit {res.returncode}: {res.stderr[-2000:]}"  # no segfault at exit
        assert "Exception ignored" not in res.stderr and "Traceback" not in res.stderr, res.stderr
        outs = [json.loads(line) for line in res.stdout.strip().splitlines()]
        assert len(outs) == len(jobs)
        seen_counts = set()
        with open_run(ref_path) as ref:
            total = ref.num_steps
            for (mnt, mode), out in zip(jobs, outs):
                path = mnt / "run.h5"
                full = out["outcome"] == "error" or bool(out["warnings"])
                if mode == "raise" and out["outcome"] == "error":
                    assert out["type"] == "DiskFullError" and "\n" not in out["message"]
                    assert "disk full" in out["message"]
                if mode == "warn":
                    assert out["outcome"] == "finished" and out["final"], out  # the generation went on
                    assert len(out["warnings"]) <= 1
                files = sorted(os.listdir(mnt))
                assert all(not f.endswith(".partial.h5") for f in files), files  # nothing left behind
                if not path.exists():
                    assert full
                    continue
                with timed_open(path) as run:
                    assert_steps_equal(run, ref)
                    seen_counts.add(run.num_steps)
                    assert run.complete == (not full) and (run.num_steps == total) == (not full)
                    if full:
                        assert "disk full" in run.error
    finally:
        for mnt, _ in jobs:
            subprocess.run(["umount", str(mnt)])
        print("disk-full levels → committed steps:", sorted(seen_counts))
        assert len(seen_counts - {0, total}) >= 3  # disk full at several points mid-run


# ------------------------------------------------------------------------------------------- stored values
class _ReusingDenoiser(torch.nn.Module):
    """ε-prediction model that writes its output into one buffer it reuses every call."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(4, 4, 3, padding=1)
        self.out = None

    def forward(self, x):
        y = self.conv(x)
        if self.out is None:
            self.out = torch.empty_like(y)
        self.out.copy_(y)
        return self.out


def test_epsilon_from_a_reused_output_buffer_is_each_steps_own(tmp_path):
    from diffusers import DDIMScheduler

    torch.manual_seed(0)
    model = _ReusingDenoiser()
    sched = DDIMScheduler(prediction_type="epsilon", clip_sample=False)
    sched.set_timesteps(30)
    x = torch.randn(1, 4, 5, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = []
    with LatentProbe((model, sched), tmp_path / "eps.h5", store_dtype="float32"), torch.no_grad():
        for t in sched.timesteps:
            e = model(x)
            expected.append(e.clone())
            x = sched.step(e, t, x).prev_sample
    with open_run(tmp_path / "eps.h5") as run:
        eps = run.latents("eps")[:]
        assert eps.shape[0] == 30
        for i, e in enumerate(expected):
            assert eps[i].tobytes() == e.numpy().tobytes(), f"step {i}: stored ε̂ is not that step's"


def test_float16_overflow_is_flagged_and_nan_told_apart(tmp_path):
    from diffusers import UniPCMultistepScheduler

    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    sched.set_timesteps(4)
    model = torch.nn.Identity()
    x = torch.ones(1, 4, 3, 4, 4)
    with pytest.warns(RuntimeWarning, match="range"), LatentProbe((model, sched), tmp_path / "o.h5",
                                                                   capture=("x_t", "pred")):
        for i, t in enumerate(sched.timesteps):
            v = model(torch.full_like(x, 1e5 if i == 1 else (float("nan") if i == 2 else 0.5)))
            sched.step(v, t, x)
    with open_run(tmp_path / "o.h5") as run:
        pred = run.latents("pred")[:]
        assert np.isinf(pred[1]).all() and np.isnan(pred[2]).all() and np.isfinite(pred[[0, 3]]).all()
        assert list(run.overflow["pred"]) == [False, True, False, False]
        assert list(run.nonfinite["pred"]) == [False, True, True, False]
        assert not run.nonfinite["x_t"].any() and run.attrs["nonfinite_steps"] == 2
    with LatentProbe((model, sched), tmp_path / "o32.h5", capture=("pred",), store_dtype="float32"):
        sched.set_timesteps(2)
        for t in sched.timesteps:
            sched.step(torch.full_like(x, 1e5), t, x)
    with open_run(tmp_path / "o32.h5") as run:  # float32 holds 1e5: nothing flagged
        assert (run.latents("pred")[:] == 1e5).all() and not run.nonfinite["pred"].any()


@pytest.mark.parametrize("attrs, match", [
    ({"schema": "mine"}, "written by latent_probe"),
    ({"parameterization": "epsilon"}, "written by latent_probe"),
    ({"complete": True}, "written by latent_probe"),
    ({"x": {(1, 2): 3}}, "cannot be stored"),
    ({"bad\x00name": 1}, "cannot be stored"),
    ({"": 1}, "cannot be stored"),
])
def test_attrs_that_collide_or_cannot_be_stored_are_refused_before_anything_runs(tmp_path, attrs, match):
    from diffusers import UniPCMultistepScheduler

    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True)
    with pytest.raises(ValueError, match=match):
        LatentProbe((torch.nn.Identity(), sched), tmp_path / "a.h5", attrs=attrs)
    assert os.listdir(tmp_path) == []


def test_attrs_naming_what_the_adapter_records_are_refused_at_entry(tmp_path, two_expert_pipe):
    probe = LatentProbe(two_expert_pipe, tmp_path / "a.h5", attrs={"boundary": 0.5})
    with pytest.raises(ValueError, match="boundary"):
        probe.__enter__()
    assert os.listdir(tmp_path) == [] and probe.hooks_attached == 0
    assert "step" not in vars(two_expert_pipe.scheduler)


def test_user_values_are_kept_and_awkward_values_stored(tmp_path):
    from diffusers import UniPCMultistepScheduler

    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True)
    sched.set_timesteps(2)
    attrs = {"prompt": "ünïcödé " * 2000, "big": 2**70, "nested": {"a": [1, None, "x"]}, "obj": object(),
             "nul": "a\x00b"}
    with LatentProbe((torch.nn.Identity(), sched), tmp_path / "a.h5", attrs=attrs):
        for t in sched.timesteps:
            sched.step(torch.zeros(1, 4, 2, 2, 2), t, torch.zeros(1, 4, 2, 2, 2))
    with open_run(tmp_path / "a.h5") as run:
        a = run.attrs
        assert a["prompt"] == attrs["prompt"] and a["big"] == 2**70 and a["nested"] == {"a": [1, None, "x"]}
        assert a["nul"] == "a\x00b" and a["obj"].startswith("<object")
        assert a["parameterization"] == "flow_prediction"


def test_long_and_multibyte_expert_names_are_stored_whole(tmp_path):
    from diffusers import UniPCMultistepScheduler

    names = ["é" * 70 + "_high", "専門家" * 30]
    m = {names[0]: torch.nn.Identity(), names[1]: torch.nn.Identity()}
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True)
    sched.set_timesteps(4)
    x = torch.zeros(1, 4, 2, 2, 2)
    with LatentProbe((m, sched), tmp_path / "e.h5"):
        for i, t in enumerate(sched.timesteps):
            sched.step(m[names[i // 2]](x), t, x)
    with open_run(tmp_path / "e.h5") as run:
        assert list(run.experts) == [names[0]] * 2 + [names[1]] * 2
        assert run.attrs["experts"] == names


def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_step(tmp_path):
    from latent_probe.demo import run_demo_generation

    path = tmp_path / "r.h5"
    run_demo_generation(path, steps=4, frames=5)[1].close()
    before = path.read_bytes()
    from diffusers import UniPCMultistepScheduler

    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True)
    with pytest.raises(KeyError):
        with LatentProbe((torch.nn.Identity(), sched), path, overwrite=True):
            raise KeyError("the generation failed before its first step")
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["r.h5"]
    with open_run(path) as run:
        assert run.complete and run.num_steps == 4
    with pytest.raises(RuntimeError, match="boom"):  # a failure after a step replaces it: the new run is kept
        with LatentProbe((torch.nn.Identity(), sched), path, overwrite=True):
            sched.set_timesteps(3)
            sched.step(torch.zeros(1, 4, 2, 2, 2), sched.timesteps[0], torch.zeros(1, 4, 2, 2, 2))
            raise RuntimeError("boom")
    with open_run(path) as run:
        assert run.num_steps == 1 and not run.complete and "boom" in run.error
    assert os.listdir(tmp_path) == ["r.h5"]


def test_schema_layout_is_readable_by_plain_h5py(tmp_path):
    from latent_probe.demo import run_demo_generation

    path = tmp_path / "r.h5"
    run_demo_generation(path, steps=3, frames=5)[1].close()
    with h5py.File(path, "r") as f:
        assert f.attrs["schema_version"] == 3  # 3 adds /online and /latent_step; the layout read here is v2's
        state = f["run_state"][0]
        assert state["steps"] == 3 and state["complete"] == 1 and state["closed"] == 1
        experts = f["steps"].fields("expert")[:]
        assert list(experts) == [0, 0, 0] and f.attrs["experts"] == '["model"]'


@pytest.mark.parametrize("overwrite", [False, True])
def test_two_writers_on_one_path_lose_nothing(tmp_path, overwrite):
    """Two recordings started on the same path: the first to commit owns it; the other is refused with one
    line naming where its committed steps are kept — never deleted, never silently replacing a live run."""
    import re

    from latent_probe.store.writer import RunWriter, StepMeta

    path = tmp_path / "r.h5"
    first, second = RunWriter(path, "float32", overwrite=overwrite), RunWriter(path, "float32", overwrite=overwrite)
    x = torch.arange(2 * 4 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 4, 3, 2, 2)
    first.submit(StepMeta(0, 999, 1.0, 0.0, "model", None, 0, 1), {"x0": x})
    while first.steps_written < 1:
        time.sleep(0.01)
    second.submit(StepMeta(0, 999, 1.0, 0.0, "model", None, 0, 1), {"x0": 2 * x})
    with pytest.raises(WriterError) as err:
        second.close({"complete": True})
    first.close({"complete": True})
    message = str(err.value)
    assert "\n" not in message and "1 committed steps" in message
    kept = re.search(r"kept at (\S+\.partial\.h5)", message).group(1)
    with open_run(path) as run:
        assert run.complete and (run.latents("x0")[0] == x.numpy()).all()
    with open_run(kept) as run:
        assert run.num_steps == 1 and (run.latents("x0")[0] == 2 * x.numpy()).all()
