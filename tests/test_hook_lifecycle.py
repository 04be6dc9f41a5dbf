"""Several probes on one target, in any order, and probes in several threads (issue 9, items 3–4).

Each probe records exactly the generations that ran while it was attached; afterwards every module,
scheduler and class is exactly as before; nothing hangs (every test runs under a time limit).
"""

from __future__ import annotations

import itertools
import signal
import threading

import numpy as np
import pytest
import torch

import wan
from conftest import run_pipe
from wan.configs import tiny_t2v_config
from wan.utils.fm_solvers import FlowDPMSolverMultistepScheduler
from wan.utils.fm_solvers_unipc import FlowUniPCMultistepScheduler

from latent_probe import LatentProbe

WAN_KW = dict(size=(64, 64), frame_num=17, sampling_steps=6, offload_model=False)
STEPS = 5


@pytest.fixture(autouse=True)
def time_limit():
    """A hang fails the test instead of CI."""
    def boom(*_):
        raise TimeoutError("test exceeded 120 s (a hang?)")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def pipe_state(pipe) -> dict:
    """Everything a probe may touch on a diffusers pipeline, as identities."""
    mods = {n: getattr(pipe, n) for n in ("transformer", "transformer_2") if getattr(pipe, n, None) is not None}
    return {
        "scheduler_dict": dict(vars(pipe.scheduler)).keys() - {"_step_index", "_begin_index", "model_outputs",
                                                                 "timestep_list", "lower_order_nums", "last_sample",
                                                                 "this_order", "timesteps", "sigmas",
                                                                 "num_inference_steps", "_step_index"},
        "scheduler_class_step": type(pipe.scheduler).__dict__.get("step"),
        "pipe_dict": {k for k in vars(pipe) if k in ("check_inputs", "prepare_latents", "__call__")},
        "hooks": {n: (dict(m._forward_hooks), dict(m._forward_pre_hooks)) for n, m in mods.items()},
    }


def steps_of(probe) -> np.ndarray:
    """x_t of every generation the probe recorded (one run each), in order."""
    return np.concatenate([run.latents("x_t")[:] for run in probe.runs])


_REFS: dict[tuple[int, int], np.ndarray] = {}


def reference_steps(pipe, seeds) -> list[np.ndarray]:
    """x_t of each seed's generation recorded alone (cached per pipeline: generations are deterministic)."""
    out = []
    for seed in seeds:
        if (id(pipe), seed) not in _REFS:
            with LatentProbe(pipe, store_dtype="float32") as p:
                run_pipe(pipe, steps=STEPS, seed=seed)
            _REFS[id(pipe), seed] = steps_of(p)
        out.append(_REFS[id(pipe), seed])
    return out


@pytest.mark.parametrize("exit_order", list(itertools.permutations(range(3))))
def test_three_overlapping_probes_exit_in_any_order(two_expert_pipe, exit_order):
    pipe = two_expert_pipe
    before = pipe_state(pipe)
    # seed k is the generation run after probe k entered; each probe records from its entry to its exit
    ref = reference_steps(pipe, range(6))
    probes = [LatentProbe(pipe, store_dtype="float32") for _ in range(3)]
    active: set[int] = set()
    expected: dict[int, list[int]] = {k: [] for k in range(3)}
    seed = 0
    for k in range(3):  # enter 0, 1, 2, with a generation after each entry
        probes[k].__enter__()
        active.add(k)
        run_pipe(pipe, steps=STEPS, seed=seed)
        for a in active:
            expected[a].append(seed)
        seed += 1
    for k in exit_order:  # exit in the given order, with a generation after each exit
        probes[k].__exit__(None, None, None)
        active.discard(k)
        run_pipe(pipe, steps=STEPS, seed=seed)
        for a in active:
            expected[a].append(seed)
        seed += 1
    for k, probe in enumerate(probes):
        got = steps_of(probe)
        want = np.concatenate([ref[s] for s in expected[k]])
        assert got.shape == want.shape, f"probe {k} recorded {got.shape[0]} steps, expected {want.shape[0]}"
        assert got.tobytes() == want.tobytes(), f"probe {k} holds steps of generations it did not see"
        assert probe.hooks_attached == 0
    assert pipe_state(pipe) == before
    assert "step" not in vars(pipe.scheduler)
    out = run_pipe(pipe, steps=STEPS, seed=0)  # a plain call after all that: no dead writer in the way
    assert out.shape[0] == 1


def test_a_probe_that_raises_inside_another_leaves_the_outer_one_working(two_expert_pipe):
    pipe = two_expert_pipe
    before = pipe_state(pipe)
    with LatentProbe(pipe, store_dtype="float32") as outer:
        with pytest.raises(RuntimeError, match="inner failure"):
            with LatentProbe(pipe, store_dtype="float32"):
                run_pipe(pipe, steps=STEPS, seed=0)
                raise RuntimeError("inner failure")
        run_pipe(pipe, steps=STEPS, seed=1)
    assert [run.num_steps for run in outer.runs] == [STEPS, STEPS]  # one run per generation
    assert pipe_state(pipe) == before


def test_a_replacement_made_by_someone_else_is_never_overwritten(two_expert_pipe):
    pipe = two_expert_pipe
    probe = LatentProbe(pipe)
    probe.__enter__()
    mine = lambda *a, **k: "user's step"  # noqa: E731
    pipe.scheduler.step = mine
    with pytest.warns(RuntimeWarning, match="replaced by someone else"):
        probe.__exit__(None, None, None)
    assert pipe.scheduler.step is mine
    del pipe.scheduler.step
    assert "step" not in vars(pipe.scheduler)


def test_overlapping_probes_on_the_wan_repository(tmp_path):
    t2v = wan.WanT2V(tiny_t2v_config())
    classes = {c: vars(c)["step"] for c in (FlowUniPCMultistepScheduler, FlowDPMSolverMultistepScheduler)}
    a = LatentProbe(t2v, store_dtype="float32")
    b = LatentProbe(t2v, store_dtype="float32")
    a.__enter__()
    t2v.generate("first", seed=1, **WAN_KW)
    b.__enter__()
    t2v.generate("second", seed=2, **WAN_KW)
    a.__exit__(None, None, None)
    t2v.generate("third", seed=3, **WAN_KW)
    b.__exit__(None, None, None)
    assert [r.num_steps for r in a.runs] == [6, 6] and [r.num_steps for r in b.runs] == [6, 6]
    np.testing.assert_array_equal(a.runs[1].latents("x_t")[:], b.runs[0].latents("x_t")[:])  # both saw "second"
    assert {c: vars(c)["step"] for c in classes} == classes
    assert "generate" not in vars(t2v)
    assert not t2v.high_noise_model._forward_hooks and not t2v.low_noise_model._forward_hooks


def _in_threads(jobs):
    errors: list[BaseException] = []

    def wrap(job):
        try:
            job()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(j,)) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(100)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]


def test_two_wan_objects_in_two_threads_record_only_their_own_steps():
    objs = [wan.WanT2V(tiny_t2v_config()) for _ in range(2)]
    refs = []
    for k, obj in enumerate(objs):
        with LatentProbe(obj, store_dtype="float32") as p:
            obj.generate(f"prompt {k}", seed=10 + k, **WAN_KW)
        refs.append(p.run.latents("x_t")[:])
    probes = [LatentProbe(obj, store_dtype="float32") for obj in objs]

    def job(k):
        def run():
            with probes[k]:
                for _ in range(2):
                    objs[k].generate(f"prompt {k}", seed=10 + k, **WAN_KW)
        return run

    _in_threads([job(0), job(1)])
    for k, probe in enumerate(probes):
        got = steps_of(probe)
        assert got.shape[0] == 12, f"probe {k} recorded {got.shape[0]} steps (another thread's leaked in?)"
        assert got.tobytes() == np.concatenate([refs[k], refs[k]]).tobytes()


def test_two_diffusers_pipelines_in_two_threads_record_only_their_own_steps():
    from latent_probe.testing import tiny_wan_pipeline

    pipes = [tiny_wan_pipeline(two_experts=True, boundary_ratio=0.875) for _ in range(2)]
    refs = [reference_steps(p, [20 + k])[0] for k, p in enumerate(pipes)]
    probes = [LatentProbe(p, store_dtype="float32") for p in pipes]

    def job(k):
        def run():
            with probes[k]:
                for _ in range(2):
                    run_pipe(pipes[k], steps=STEPS, seed=20 + k)
        return run

    _in_threads([job(0), job(1)])
    for k, probe in enumerate(probes):
        got = steps_of(probe)
        assert got.shape[0] == 2 * STEPS
        assert got.tobytes() == np.concatenate([refs[k], refs[k]]).tobytes()
