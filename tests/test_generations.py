"""Each generation inside one probe block is its own run (issue 11, item 3).

Two generations in one ``with LatentProbe(target, "run.h5")`` block give ``run.h5`` and ``run.gen2.h5``, each
holding exactly what a probe around that generation alone records (same seed: bit-identical latents), with
its own steps, experts and phases; a generation stopped by a diffusers callback says how many steps were
planned. Diffusers pipelines (``pipe(...)``), the Wan2.2 repository stand-in (``generate``) and
``(modules, scheduler)`` targets (``set_timesteps``) each tell generations apart exactly.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import wan
from conftest import run_pipe
from wan.configs import tiny_t2v_config

from latent_probe import LatentProbe, open_run

STEPS = (5, 7)  # the two generations differ in length, so merged runs could not pass for separate ones
WAN_KW = dict(size=(64, 64), frame_num=17, offload_model=False)


def same_run(run, ref) -> None:
    """``run`` holds exactly what ``ref`` (a probe around that generation alone) recorded."""
    assert run.num_steps == ref.num_steps and run.quantities == ref.quantities
    for q in ref.quantities:
        assert run.latents(q)[:].tobytes() == ref.latents(q)[:].tobytes(), f"{q} differs from the lone generation's"
    for field in ("sigmas", "timesteps", "step_indices", "guidance_scales"):
        np.testing.assert_array_equal(getattr(run, field), getattr(ref, field))
    assert list(run.experts) == list(ref.experts)
    phases = [(r["kind"], r["name"], r["start"], r["stop"]) for r in run.metrics.summary("x0").rows]
    assert phases == [(r["kind"], r["name"], r["start"], r["stop"]) for r in ref.metrics.summary("x0").rows]
    assert run.complete and ref.complete and run.planned_steps == ref.planned_steps == ref.num_steps


def lone(pipe, steps: int, seed: int):
    with LatentProbe(pipe, store_dtype="float32") as probe:
        run_pipe(pipe, steps=steps, seed=seed)
    return probe.run


def test_two_pipeline_calls_are_two_runs_each_equal_to_its_lone_generation(two_expert_pipe, tmp_path):
    pipe = two_expert_pipe
    call_before = type(pipe).__dict__.get("__call__")
    refs = [lone(pipe, s, seed) for seed, s in enumerate(STEPS, start=1)]
    path = tmp_path / "run.h5"
    with LatentProbe(pipe, path, store_dtype="float32") as probe:
        for seed, s in enumerate(STEPS, start=1):
            run_pipe(pipe, steps=s, seed=seed)
    assert type(pipe).__dict__.get("__call__") is call_before and probe.hooks_attached == 0
    second = str(tmp_path / "run.gen2.h5")
    assert sorted(os.listdir(tmp_path)) == ["run.gen2.h5", "run.h5"]
    assert probe.paths == [str(path), second]
    assert len(probe.runs) == 2 and probe.run is probe.runs[0]
    for n, (run, ref) in enumerate(zip(probe.runs, refs), start=1):
        same_run(run, ref)
        assert run.generation == n and run.attrs["seed"] == n and run.attrs["planned_steps"] == STEPS[n - 1]
        assert list(run.experts)[0] == "transformer"  # each run starts with the high-noise expert: not merged
        assert set(run.file["steps"].fields("generation")[:]) == {n - 1}
        assert run.generations == [str(path), second]
    assert "generation 2 of 2" in repr(probe.runs[1]) and "generation 1 of 2" in repr(probe.runs[0])
    with open_run(second) as run:  # a file names its generation and its siblings
        assert run.generation == 2 and run.generations == [str(path), second]


def test_in_memory_runs_one_per_generation(two_expert_pipe):
    pipe = two_expert_pipe
    refs = [lone(pipe, s, seed) for seed, s in enumerate(STEPS, start=1)]
    with LatentProbe(pipe, store_dtype="float32") as probe:
        for seed, s in enumerate(STEPS, start=1):
            run_pipe(pipe, steps=s, seed=seed)
    assert [r.generation for r in probe.runs] == [1, 2] and probe.paths == []
    for run, ref in zip(probe.runs, refs):
        same_run(run, ref)


def test_interrupt_by_callback_records_the_planned_steps(two_expert_pipe, tmp_path):
    pipe = two_expert_pipe
    ref = lone(pipe, 8, seed=3)

    def stop_after_third(p, i, t, kwargs):
        if i == 2:
            p._interrupt = True  # diffusers: the loop skips the remaining steps
        return kwargs

    path = tmp_path / "run.h5"
    with LatentProbe(pipe, path, store_dtype="float32") as probe:
        run_pipe(pipe, steps=8, seed=3, callback_on_step_end=stop_after_third)
        run_pipe(pipe, steps=8, seed=3)  # the next call resets _interrupt: a whole generation
    stopped, whole = probe.runs
    assert stopped.num_steps == 3 and stopped.planned_steps == 8
    assert not stopped.complete and stopped.error == "interrupted: stopped after 3 of 8 planned steps"
    a = stopped.attrs
    assert a["steps"] == a["steps_seen"] == 3 and a["closed"] and a["planned_steps"] == 8
    assert "steps=3 of 8 planned" in repr(stopped)
    for q in ref.quantities:  # the steps that ran are the uninterrupted generation's first three
        assert stopped.latents(q)[:].tobytes() == ref.latents(q)[:3].tobytes()
    same_run(whole, ref)
    assert whole.error is None and whole.generation == 2


def test_wan_repository_two_generate_calls(tmp_path):
    t2v = wan.WanT2V(tiny_t2v_config())
    refs = []
    for k, steps in enumerate(STEPS):
        with LatentProbe(t2v, store_dtype="float32", cfg_branches=True) as p:
            t2v.generate(f"prompt {k}", seed=10 + k, sampling_steps=steps, **WAN_KW)
        refs.append(p.run)
    path = tmp_path / "wan.h5"
    with LatentProbe(t2v, path, store_dtype="float32", cfg_branches=True) as probe:
        for k, steps in enumerate(STEPS):
            t2v.generate(f"prompt {k}", seed=10 + k, sampling_steps=steps, **WAN_KW)
    assert "generate" not in vars(t2v) and probe.hooks_attached == 0
    assert probe.paths == [str(path), str(tmp_path / "wan.gen2.h5")]
    for k, (run, ref) in enumerate(zip(probe.runs, refs)):
        same_run(run, ref)
        assert run.attrs["prompt"] == f"prompt {k}" and run.attrs["seed"] == 10 + k
        assert run.experts[0] == "high_noise_model" and run.experts[-1] == "low_noise_model"


def _schedule(sched, model, steps, seed):
    sched.set_timesteps(steps)
    x = torch.randn(1, 4, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(model(x), t, x).prev_sample
    return x


def test_modules_target_a_new_schedule_is_a_new_generation(tmp_path):
    from diffusers import UniPCMultistepScheduler

    torch.manual_seed(0)
    model = torch.nn.Conv3d(4, 4, 3, padding=1)
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    refs = []
    for seed, steps in enumerate(STEPS):
        with LatentProbe((model, sched), store_dtype="float32") as p:
            _schedule(sched, model, steps, seed)
        refs.append(p.run)
    with LatentProbe((model, sched), tmp_path / "m.h5", store_dtype="float32") as probe:
        for seed, steps in enumerate(STEPS):
            _schedule(sched, model, steps, seed)
    assert len(probe.runs) == 2 and "set_timesteps" not in vars(sched)
    for run, ref in zip(probe.runs, refs):
        same_run(run, ref)
    # steps of one schedule, with no set_timesteps in between, stay one generation
    sched.set_timesteps(6)
    with LatentProbe((model, sched), store_dtype="float32") as probe:
        x = torch.zeros(1, 4, 3, 4, 4)
        for t in sched.timesteps:
            sched.step(model(x), t, x)
    assert len(probe.runs) == 1 and probe.run.num_steps == 6 and probe.run.complete


def test_existing_later_generation_is_refused_without_overwrite(two_expert_pipe, tmp_path):
    pipe = two_expert_pipe
    path = tmp_path / "run.h5"
    with LatentProbe(pipe, path, store_dtype="float32"):
        for seed in range(3):
            run_pipe(pipe, steps=3, seed=seed)
    assert sorted(os.listdir(tmp_path)) == ["run.gen2.h5", "run.gen3.h5", "run.h5"]
    os.unlink(path)
    with pytest.raises(FileExistsError, match="run.gen2.h5 exists"):
        with LatentProbe(pipe, path):
            run_pipe(pipe, steps=3)
    assert not path.exists() and len(os.listdir(tmp_path)) == 2
    with LatentProbe(pipe, path, overwrite=True) as probe:  # replaces run.gen2.h5; run.gen3.h5 is not its own
        for seed in range(2):
            run_pipe(pipe, steps=3, seed=seed)
    assert probe.run.generations == [str(path), str(tmp_path / "run.gen2.h5")]
    with open_run(tmp_path / "run.gen3.h5") as stale:  # the earlier probe's third generation, left as it was
        assert stale.generation == 3 and stale.generations == [str(tmp_path / "run.gen3.h5")]


def test_a_call_that_fails_before_its_first_step_takes_no_number(two_expert_pipe, tmp_path):
    pipe = two_expert_pipe
    path = tmp_path / "run.h5"
    with LatentProbe(pipe, path, store_dtype="float32") as probe:
        with pytest.raises(ValueError):
            run_pipe(pipe, steps=3, height=63)  # refused by check_inputs, before any step
        run_pipe(pipe, steps=4, seed=1)
        with pytest.raises(ValueError):
            run_pipe(pipe, steps=3, height=63)
    assert os.listdir(tmp_path) == ["run.h5"] and probe.paths == [str(path)]
    assert probe.run.num_steps == 4 and probe.run.complete and probe.run.generations == [str(path)]


def test_an_exception_ends_only_the_generation_it_interrupts(two_expert_pipe, tmp_path):
    pipe = two_expert_pipe
    calls = {"n": 0}

    def fail_on_third_step(p, i, t, kwargs):
        calls["n"] += 1
        if calls["n"] == 5 + 3:  # the second generation's third step
            raise RuntimeError("callback exploded")
        return kwargs

    with pytest.raises(RuntimeError, match="block failed"):
        with LatentProbe(pipe, tmp_path / "run.h5", store_dtype="float32"):
            run_pipe(pipe, steps=5, seed=1, callback_on_step_end=fail_on_third_step)
            with pytest.raises(RuntimeError, match="callback exploded"):
                run_pipe(pipe, steps=5, seed=2, callback_on_step_end=fail_on_third_step)
            raise RuntimeError("block failed")  # after both generations ended: they stay as recorded
    with open_run(tmp_path / "run.h5") as first, open_run(tmp_path / "run.gen2.h5") as second:
        assert first.complete and first.num_steps == 5 and first.error is None
        assert not second.complete and second.num_steps == 3 and "callback exploded" in second.error
