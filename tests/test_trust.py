"""Trust, round two (issue 18): the last ways a run was lost, a value was wrong, or a file was believed.

One test (or more) per row of the issue's table; each failed before the change it names.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from latent_probe import LatentProbe, open_run
from conftest import run_pipe


# ----------------------------------------------------------------------------- 1. a block that records nothing
def test_empty_block_over_a_complete_run_leaves_it_untouched(one_expert_pipe, tmp_path):
    path = tmp_path / "run.h5"
    with LatentProbe(one_expert_pipe, path, capture=("x0",)):
        run_pipe(one_expert_pipe, steps=3)
    before = path.read_bytes()
    stat = os.stat(path)
    with pytest.warns(RuntimeWarning, match="recorded no step") as caught:
        with LatentProbe(one_expert_pipe, path, overwrite=True):
            pass
    assert len([w for w in caught if "latent_probe" in str(w.message)]) == 1
    assert path.read_bytes() == before and os.stat(path).st_ino == stat.st_ino
    assert sorted(os.listdir(tmp_path)) == ["run.h5"]  # no partial file left beside it
    with open_run(path) as run:
        assert run.num_steps == 3 and run.complete


def test_empty_block_on_a_new_path_leaves_no_file(one_expert_pipe, tmp_path):
    path = tmp_path / "new.h5"
    with pytest.warns(RuntimeWarning, match="recorded no step"):
        with LatentProbe(one_expert_pipe, path) as probe:
            pass
    assert os.listdir(tmp_path) == []
    assert probe.runs == [] and probe.paths == []
    with pytest.warns(RuntimeWarning, match="recorded no step"):
        with LatentProbe(one_expert_pipe) as probe:  # in memory: the same rule
            pass
    assert probe.runs == []


# ----------------------------------------------------------------------------- 5. packed layouts (LTX)
@pytest.fixture(scope="module")
def ltx():
    from video_families import BUILDERS

    return BUILDERS["ltx"]()


def _ltx_sizes(pipe, height, width, num_frames):
    """The latent sizes, by the pipeline's own formula (pipeline_ltx.py: latent_num_frames, ...)."""
    return ((num_frames - 1) // pipe.vae_temporal_compression_ratio + 1,
            height // pipe.vae_spatial_compression_ratio, width // pipe.vae_spatial_compression_ratio)


def _packed_latents(pipe, height, width, num_frames, seed=3):
    import torch

    f, h, w = _ltx_sizes(pipe, height, width, num_frames)
    x = torch.randn(1, pipe.transformer.config.in_channels, f, h, w, generator=torch.Generator().manual_seed(seed))
    # through the class: the probe listens to the instance's own calls only
    return type(pipe)._pack_latents(x, pipe.transformer_spatial_patch_size, pipe.transformer_temporal_patch_size)


def _assert_unpacked_as_the_pipeline(run, calls, pipe, sizes):
    x_t = run.latents("x_t")[:]
    assert run.num_steps == len(calls) > 0
    for i, call in enumerate(calls):
        ref = pipe._unpack_latents(call.sample, *sizes, pipe.transformer_spatial_patch_size,
                                   pipe.transformer_temporal_patch_size).numpy()
        assert x_t[i].shape == ref.shape
        np.testing.assert_array_equal(x_t[i], ref)


def test_ltx_second_generation_with_latents_at_another_size_is_unpacked_with_its_own_sizes(ltx, tmp_path):
    from video_families import Recorder

    pipe = ltx.pipe
    one, other = dict(height=32, width=64, num_frames=9), dict(height=64, width=32, num_frames=9)  # same token count
    with Recorder(ltx) as rec, LatentProbe(pipe, tmp_path / "ltx.h5", store_dtype="float32",
                                           capture=("x_t",)) as probe:
        ltx.run(seed=0, **one)
        first = len(rec.steps("pipe"))
        ltx.run(seed=0, latents=_packed_latents(pipe, **other), **other)
    calls = rec.steps("pipe")
    runs = probe.runs
    assert len(runs) == 2 and all(r.complete for r in runs)
    _assert_unpacked_as_the_pipeline(runs[0], calls[:first], pipe, _ltx_sizes(pipe, **one))
    _assert_unpacked_as_the_pipeline(runs[1], calls[first:], pipe, _ltx_sizes(pipe, **other))


def test_ltx_with_latents_one_generation_is_recorded(ltx, tmp_path):
    from video_families import Recorder

    pipe, kw = ltx.pipe, ltx.kwargs
    with Recorder(ltx) as rec, warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "recording stopped"
        with LatentProbe(pipe, tmp_path / "ltx.h5", store_dtype="float32", capture=("x_t",)) as probe:
            ltx.run(seed=0, latents=_packed_latents(pipe, kw["height"], kw["width"], kw["num_frames"]))
    assert probe.run.complete
    _assert_unpacked_as_the_pipeline(probe.run, rec.steps("pipe"), pipe,
                                     _ltx_sizes(pipe, kw["height"], kw["width"], kw["num_frames"]))


def test_ltx_without_its_size_attributes_is_refused_at_entry(ltx, monkeypatch):
    from latent_probe.adapters import UnsupportedTargetError

    monkeypatch.setattr(ltx.pipe, "vae_temporal_compression_ratio", None)
    probe = LatentProbe(ltx.pipe)
    with pytest.raises(UnsupportedTargetError, match="vae_temporal_compression_ratio"):
        probe.__enter__()
    assert probe.hooks_attached == 0


def _toy_target(steps: int):
    """A ``(modules, scheduler)`` target: a module that returns its input and a flow UniPC scheduler set to ``steps``."""
    import torch
    from diffusers import UniPCMultistepScheduler

    class Toy(torch.nn.Module):
        def forward(self, x):
            return x

    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True)
    sched.set_timesteps(steps)
    return Toy(), sched


def test_recording_that_stops_after_a_commit_keeps_a_readable_file_with_its_reason(tmp_path):
    import torch

    toy, sched = _toy_target(steps=4)
    x = torch.randn(1, 4, 3, 6, 6)
    path = tmp_path / "stop.h5"
    with pytest.warns(RuntimeWarning, match="recording stopped at step 2"):
        with LatentProbe((toy, sched), path, capture=("x_t",)):
            for i, t in enumerate(sched.timesteps):
                y = x[0] if i == 2 else x  # the third step receives [C, F, H, W]: it cannot be recorded exactly
                y = sched.step(torch.zeros_like(y), t, y).prev_sample
                x = y if y.dim() == 5 else y[None]
    with open_run(path) as run:
        assert run.num_steps == 2 and not run.complete
        assert "recording stopped at step 2" in run.error and "expected layout" in run.error


# ----------------------------------------------------------------------------- 2. bounded memory and time
BOUNDED_CHILD = r"""
import os, resource, sys, time
import latent_probe
from latent_probe import RunFileError, open_run
vm = int([l for l in open("/proc/self/status") if l.startswith("VmSize")][0].split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + int(sys.argv[2]) * 2**20, resource.RLIM_INFINITY))
t0 = time.perf_counter()
try:
    with open_run(sys.argv[1]) as run:
        cmd = sys.argv[3]
        if cmd != "open":
            getattr(run, cmd)() if callable(getattr(run, cmd)) else getattr(run, cmd)
    print("OPENED", time.perf_counter() - t0)
except RunFileError as exc:
    print("REFUSED", time.perf_counter() - t0, str(exc))
"""


def bounded(path, what="open", mem_mb=256, limit=20):
    """Run ``open_run(path)`` (then ``run.<what>``) in a child under RLIMIT_AS = its size + mem_mb and a time
    limit; returns (outcome, seconds, message)."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", BOUNDED_CHILD, str(path), str(mem_mb), what], capture_output=True,
                         text=True, timeout=limit + 30, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr[-1500:]
    outcome, seconds, *msg = res.stdout.strip().splitlines()[-1].split(" ", 2)
    assert float(seconds) < limit, f"{what} took {seconds} s"
    return outcome, float(seconds), (msg or [""])[0]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, one_expert_pipe):
    path = tmp_path_factory.mktemp("claims") / "ref.h5"
    with LatentProbe(one_expert_pipe, path, capture=("x0",), metrics=("x0",)):
        run_pipe(one_expert_pipe, steps=3)
    return path


def _crafted(src, dst, edit):
    import shutil

    import h5py

    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        edit(f)
    return dst


def _claim(f, n, names):
    for name in names:
        f[name].resize(n, axis=0)
    state = f["run_state"][0]
    state["steps"] = n
    f["run_state"][0] = state


@pytest.fixture(scope="module")
def small_rows_run(tmp_path_factory, one_expert_pipe):
    path = tmp_path_factory.mktemp("claims") / "rows.h5"
    with LatentProbe(one_expert_pipe, path, capture=("x0",), latent_steps="every:2"):
        run_pipe(one_expert_pipe, steps=3)
    return path


@pytest.mark.parametrize("what", ["steps", "latent rows", "metric sum rows"])
def test_claims_of_3e8_rows_are_refused_from_the_file_size(small_run, small_rows_run, tmp_path, what):
    n = 300_000_000
    sums = ["online/x0/change", "online/x0/sq", "online/x0/dot", "online/x0/dd"]
    names = {"steps": ["steps", "latents/x0", *sums], "latent rows": ["steps", "latents/x0", "latent_step"],
             "metric sum rows": ["steps", *sums]}[what]

    def edit(f):
        if what == "metric sum rows":  # a metrics-only run: no latents, so no checksums either
            del f["latents/x0"], f["x0"], f["checksums"]
            del f.attrs["checksum"]
        _claim(f, n, names)

    path = _crafted(small_rows_run if what == "latent rows" else small_run, tmp_path / "claim.h5", edit)
    outcome, seconds, msg = bounded(path, mem_mb=256, limit=5)
    assert outcome == "REFUSED" and "claims 300000000 steps" in msg, msg


def test_a_group_of_5000_members_is_refused_before_they_are_opened(small_run, tmp_path):
    def edit(f):
        src = f["latents/x0"]
        for i in range(5000):
            f["latents"].create_dataset(f"q{i}", shape=(0, *src.shape[1:]), maxshape=(None, *src.shape[1:]),
                                        chunks=src.chunks, dtype=src.dtype)

    outcome, seconds, msg = bounded(_crafted(small_run, tmp_path / "g.h5", edit), limit=5)
    assert outcome == "REFUSED" and "5000" in msg and "at most" in msg, msg


# ----------------------------------------------------------------------------- 8. every failure names the path
@pytest.mark.parametrize("kind", ["symlink loop", "/proc/self/mem", "directory"])
def test_every_failure_to_open_is_a_run_file_error_naming_the_path(tmp_path, kind):
    from latent_probe import RunFileError

    if kind == "symlink loop":
        path = tmp_path / "loop.h5"
        os.symlink(path, path)
    elif kind == "directory":
        path = tmp_path
    else:
        path = "/proc/self/mem"
    with pytest.raises(RunFileError) as err:
        open_run(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_dangling_symlink_output_path_is_refused_at_entry(one_expert_pipe, tmp_path):
    path = tmp_path / "out.h5"
    os.symlink(tmp_path / "nowhere" / "x.h5", path)
    probe = LatentProbe(one_expert_pipe, path)
    with pytest.raises(FileExistsError, match="dangling symbolic link"):
        probe.__enter__()
    assert probe.hooks_attached == 0 and os.listdir(tmp_path) == ["out.h5"]


# ----------------------------------------------------------------------------- 3. integrity end to end
@pytest.fixture(scope="module")
def demo_path(tmp_path_factory):
    from latent_probe.demo import run_demo_generation

    path = tmp_path_factory.mktemp("integrity") / "demo.h5"
    run_demo_generation(path, steps=4, frames=5)[1].close()
    return path


def _latent_chunks(path):
    """(quantity, row, byte offset, size) of every stored latent chunk."""
    import h5py

    out = []
    with h5py.File(path, "r") as f:
        for q, ds in f["latents"].items():
            for i in range(ds.shape[0]):
                info = ds.id.get_chunk_info_by_coord((i, 0, 0, 0, 0, 0))
                out.append((q, i, info.byte_offset, info.size))
    return out


def test_every_bit_flip_in_stored_latent_data_is_detected_on_read(demo_path, tmp_path):
    import random
    import shutil

    from latent_probe import RunFileError

    rng = random.Random(18)
    chunks = _latent_chunks(demo_path)
    with open_run(demo_path) as run:
        assert run.checksum_algorithm in ("crc32c", "crc32")
        ref = {q: run.latents(q)[:] for q in run.quantities}
    for trial in range(40):
        q, row, offset, size = rng.choice(chunks)
        bit = rng.randrange(size * 8)
        path = tmp_path / f"flip{trial}.h5"
        shutil.copyfile(demo_path, path)
        with open(path, "r+b") as fh:
            fh.seek(offset + bit // 8)
            byte = fh.read(1)[0]
            fh.seek(offset + bit // 8)
            fh.write(bytes([byte ^ (1 << bit % 8)]))
        with open_run(path) as run:
            with pytest.raises(RunFileError, match=f"{q} at step {row} does not match the"):
                run.latents(q)[row]
            with pytest.raises(RunFileError, match="does not match"):
                run.metrics(q) if q in ("x0", "eps", "x_t", "pred") else run.latents(q)[:]
            run.verify = False  # the way to skip: the changed value is read
            changed = run.latents(q)[row]
            assert changed.tobytes() != ref[q][row].tobytes()
            assert np.array_equal(run.latents(q)[row - 1], ref[q][row - 1]) if row else True


def test_a_metrics_cache_overwritten_with_other_numbers_is_a_miss(demo_path, tmp_path):
    import shutil

    import h5py

    path = tmp_path / "cache.h5"
    shutil.copyfile(demo_path, path)
    with open_run(path) as run:
        truth = run.metrics("x0").l2.copy()
    with open_run(path, "r+") as run:
        run.metrics("x0")  # cached in the file
    with h5py.File(path, "r+") as f:
        f["metrics/x0/adjacent/l2"][...] = 7.0  # same shape, other numbers
    with open_run(path) as run:
        np.testing.assert_array_equal(run.metrics("x0").l2, truth)
    from latent_probe.app import cli

    out = tmp_path / "m.csv"
    cli.main(["metrics", str(path), "--csv", "-o", str(out)])
    import pandas as pd

    table = pd.read_csv(out)
    l2 = table[table.metric == "l2"]
    assert len(l2) and not np.any(l2.value == 7.0)


def test_a_cache_of_other_data_or_without_checksums_is_a_miss(demo_path, tmp_path):
    import shutil

    import h5py

    path = tmp_path / "cache.h5"
    shutil.copyfile(demo_path, path)
    with open_run(path, "r+") as run:
        run.metrics("x0")
        assert run.cache.has("x0/adjacent", 2)
    with h5py.File(path, "r+") as f:  # another run's latents (and their consistent checksums) under this cache
        x0 = f["latents/x0"]
        row = x0[0].copy()
        x0[0] = row * 2
        from latent_probe.store.checksum import checksum

        f["checksums/x0"][0] = checksum(x0[0], f.attrs["checksum"])
    with open_run(path) as run:
        assert not run.cache.has("x0/adjacent", 2)
    with h5py.File(path, "r+") as f:  # a file from before checksums: nothing cached can be believed
        del f["checksums"]
        del f.attrs["checksum"]
    with open_run(path) as run:
        assert run.checksum_algorithm is None and not run.cache.has("x0/adjacent", 2)
        run.latents("x0")[:]  # reads without verification: there is nothing to verify against


def test_root_attributes_beyond_any_run_are_refused_in_bounded_time(small_run, tmp_path):
    # 5,000 here (crafting is slow); tests/test_store_hostile.py opens one with 100,000 under its memory cap
    def edit(f):
        for i in range(5000):
            f.attrs[f"a{i}"] = i

    path = _crafted(small_run, tmp_path / "attrs.h5", edit)
    for what in ("open", "attrs"):
        outcome, seconds, msg = bounded(path, what, limit=5)
        assert outcome == "REFUSED" and "holds 50" in msg and "root attributes" in msg, msg
    with pytest.raises(ValueError, match="at most 1024"):
        LatentProbe(None, attrs={f"k{i}": i for i in range(2000)})


def test_float16_overflow_gives_one_warning(tmp_path):
    import torch

    toy, sched = _toy_target(steps=3)
    x = torch.full((1, 4, 3, 4, 4), 1e6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with LatentProbe((toy, sched), tmp_path / "o.h5", capture=("x_t",)):
            for t in sched.timesteps:
                x = sched.step(torch.zeros_like(x), t, x).prev_sample
    texts = [str(w.message) for w in caught]
    assert len(texts) == 1 and "exceed float16's range" in texts[0], texts


# ----------------------------------------------------------------------------- 6. non-finite values, metrics-only
@pytest.mark.parametrize("storage", [dict(capture=(), metrics=("x0",)),
                                     dict(capture=("x0",), metrics=("x0",), latent_steps="every:4")],
                         ids=["metrics-only", "latent_steps"])
def test_nonfinite_values_are_flagged_at_the_step_they_happened(tmp_path, storage):
    import torch

    toy, sched = _toy_target(steps=6)
    x = torch.randn(1, 4, 3, 4, 4)
    path = tmp_path / "nan.h5"
    with pytest.warns(RuntimeWarning, match="NaN/Inf in .*x0.* at step 2"):
        with LatentProbe((toy, sched), path, **storage):
            for i, t in enumerate(sched.timesteps):
                if i == 2:
                    x = x.clone()
                    x[0, 0, 1, 0, 0] = float("nan")
                x = sched.step(torch.zeros_like(x), t, x).prev_sample
    with open_run(path) as run:
        flags = run.nonfinite["x0"]
        assert flags.tolist()[:3] == [False, False, True], flags
        assert run.attrs["nonfinite_steps"] == int(flags.sum()) >= 1


# ----------------------------------------------------------------------------- 7. a killed study's partial files
def test_a_study_removes_unlocked_partials_of_its_jobs_however_young_and_keeps_live_ones(tmp_path):
    import torch
    from diffusers import UniPCMultistepScheduler

    from latent_probe.store.liveness import hold_writer_lock, writer_alive
    from latent_probe.study import Prompt, Suite, run_path, run_study

    class Toy(torch.nn.Module):
        def forward(self, x, t):
            return x * 0.5

    model = Toy()
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True)

    def generate(job):
        sched.set_timesteps(2)
        x = torch.randn(1, 4, 3, 4, 4, generator=torch.Generator().manual_seed(job.seed))
        for t in sched.timesteps:
            x = sched.step(model(x, t.expand(1)), t, x).prev_sample

    suite = Suite("partials", [Prompt("p0", "a prompt")], seeds=[0, 1])
    jobs = suite.jobs()
    out = tmp_path / "study"
    (out / "runs").mkdir(parents=True)

    def partial(job, tag):  # what a job killed before its first step leaves: just created, never locked again
        p = out / "runs" / f".{os.path.basename(run_path(out, job.id))}.{tag}.partial.h5"
        p.write_bytes(b"\x89HDF\r\n\x1a\n")
        return p

    killed = partial(jobs[0], "0123456789ab")  # younger than any age rule
    live = partial(jobs[0], "ba9876543210")
    fd = os.open(live, os.O_RDWR)
    try:
        assert hold_writer_lock(fd) and writer_alive(str(live)) is True
        run_study(suite, generate, (model, sched), out, intervene=None, log=None)
        assert not killed.exists(), "an unlocked partial of a redone job is removed, however young"
        assert live.exists(), "a partial whose writer holds its lock is left alone"
        later = partial(jobs[1], "00000000beef")  # a killed attempt of a job that is complete by now
        result = run_study(suite, generate, (model, sched), out, intervene=None, log=None)
        assert len(result.skipped) == 2 and not later.exists()
    finally:
        os.close(fd)
