"""The generation recorder (recorder.py) and the one hook shape (hooks.py), issue 22.

* the recorder's events come in the order begin, step…, end for each generation of a block;
* ModelHooks of two overlapping owners, removed in either order, leave modules and attributes exactly as before;
* an exception inside a generation ends it (its end event says why) and the block removes every hook;
* FrameTruncation's step index, now the recorder's, equals the derivation it replaced (from the DiT call's
  timestep and the steps recorded) on a diffusers WanPipeline and on the Wan2.2 stand-in, for 2 generations.
"""

from __future__ import annotations

import pytest
import torch

import wan
from conftest import run_pipe
from wan.configs import tiny_t2v_config

from latent_probe import FrameTruncation, LatentProbe
from latent_probe.adapters.dit_calls import DitIO
from latent_probe.hooks import FnHook, HookRegistry, ModelHook, module_hooks
from latent_probe.recorder import GenerationListener

STEPS = (4, 3)
WAN_KW = dict(size=(64, 64), frame_num=17, offload_model=False)


class Events(GenerationListener):
    def __init__(self) -> None:
        self.seen: list[tuple] = []

    def on_begin(self, rec, explicit):
        self.seen.append(("begin", rec.generation))

    def on_step(self, rec):
        self.seen.append(("step", rec.generation, rec.generation_steps))

    def on_end(self, rec, state):
        self.seen.append(("end", rec.generation, state["complete"], state.get("error")))


def expected(*steps: int) -> list[tuple]:
    out: list[tuple] = []
    for g, n in enumerate(steps, start=1):
        out += [("begin", g)] + [("step", g, k) for k in range(1, n + 1)] + [("end", g, True, None)]
    return out


def test_events_begin_steps_end_for_two_generations_in_one_block(two_expert_pipe):
    events = Events()
    with LatentProbe(two_expert_pipe, store_dtype="float32") as probe:
        probe.recorder.subscribe(events)
        for seed, steps in enumerate(STEPS):
            run_pipe(two_expert_pipe, steps=steps, seed=seed)
    assert events.seen == expected(*STEPS)
    assert [r.num_steps for r in probe.runs] == list(STEPS)


def test_events_of_a_modules_target_generations_split_by_set_timesteps():
    from diffusers import UniPCMultistepScheduler

    model = torch.nn.Conv3d(4, 4, 3, padding=1)
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    events = Events()
    with LatentProbe((model, sched), store_dtype="float32") as probe, torch.no_grad():
        probe.recorder.subscribe(events)
        for steps in STEPS:
            sched.set_timesteps(steps)
            x = torch.randn(1, 4, 3, 4, 4, generator=torch.Generator().manual_seed(0))
            for t in sched.timesteps:
                x = sched.step(model(x), t, x).prev_sample
    assert events.seen == expected(*STEPS)


# ---------------------------------------------------------------------------------------------- hooks
class Tag(ModelHook):
    """Adds ``value`` to a module's output, and counts the calls of an attribute it wraps."""

    def __init__(self, value: float) -> None:
        self.value, self.calls = value, 0

    def pre_forward(self, site, args, kwargs):
        self.calls += 1
        return None

    def post_forward(self, site, args, kwargs, output):
        return output + self.value if isinstance(output, torch.Tensor) else None


def _state(module: torch.nn.Module, sched) -> tuple:
    return (dict(module._forward_hooks), dict(module._forward_pre_hooks), module_hooks(module),
            vars(sched).get("step"), type(sched).__dict__["step"], "step" in vars(sched))


@pytest.mark.parametrize("order", ["reverse", "same"])
def test_two_overlapping_owners_removed_in_either_order_leave_everything_as_before(order):
    from diffusers import UniPCMultistepScheduler

    module = torch.nn.Linear(2, 2)
    sched = UniPCMultistepScheduler()
    user = module.register_forward_hook(lambda m, a, o: None)  # a user's hook: never touched
    before = _state(module, sched)
    step_before = type(sched).__dict__["step"]
    x = torch.ones(1, 2)
    plain = module(x)
    first, second = HookRegistry(), HookRegistry()
    a, b = Tag(1.0), Tag(10.0)
    first.add(module, a)
    first.add_call(sched, "step", a)
    second.add(module, b)
    second.add_call(sched, "step", b)
    assert module_hooks(module) == (a, b) and len(module._forward_hooks) == 2  # the user's + the one site
    assert torch.equal(module(x), plain + 11.0)
    for owner in ([second, first] if order == "reverse" else [first, second]):
        owner.remove_all()
        owner.remove_all()  # twice: nothing more happens
    assert _state(module, sched) == before and type(sched).__dict__["step"] is step_before
    assert torch.equal(module(x), plain) and "step" not in vars(sched)
    user.remove()
    assert not module._forward_hooks and not module._forward_pre_hooks


def test_an_outermost_hook_wraps_the_others():
    module, order = torch.nn.Linear(2, 2), []
    reg = HookRegistry()
    reg.add(module, FnHook(lambda *a: order.append("pre a"), lambda *a: order.append("post a")))
    reg.add(module, FnHook(lambda *a: order.append("pre timer"), lambda *a: order.append("post timer")),
            outermost=True)
    reg.add(module, FnHook(lambda *a: order.append("pre b"), lambda *a: order.append("post b")))
    module(torch.ones(1, 2))
    reg.remove_all()
    assert order == ["pre timer", "pre a", "pre b", "post a", "post b", "post timer"]
    assert not module._forward_hooks and not module._forward_pre_hooks


def test_an_attribute_hook_sees_the_exception_of_the_call_it_wraps():
    class Owner:
        def run(self, x):
            raise ValueError(f"bad {x}")

    class Seen(ModelHook):
        errors: list = []

        def on_error(self, site, exc):
            self.errors.append(str(exc))

    owner, reg = Owner(), HookRegistry()
    reg.add_call(owner, "run", Seen())
    with pytest.raises(ValueError, match="bad 3"):
        owner.run(3)
    reg.remove_all()
    assert Seen.errors == ["bad 3"] and "run" not in vars(owner)


def test_an_exception_mid_generation_ends_it_and_the_block_removes_everything(two_expert_pipe):
    pipe = two_expert_pipe
    experts = [pipe.transformer, pipe.transformer_2]
    call_before = type(pipe).__dict__.get("__call__")

    def explode(p, i, t, kwargs):
        if i == 1:
            raise RuntimeError("callback exploded")
        return kwargs

    events = Events()
    with pytest.raises(RuntimeError, match="callback exploded"):
        with LatentProbe(pipe, store_dtype="float32") as probe:
            probe.recorder.subscribe(events)
            run_pipe(pipe, steps=4, callback_on_step_end=explode)
    assert events.seen == [("begin", 1), ("step", 1, 1), ("step", 1, 2),
                           ("end", 1, False, "RuntimeError: callback exploded")]
    assert probe.hooks_attached == 0 and probe.recorder is None
    assert type(pipe).__dict__.get("__call__") is call_before and "step" not in vars(pipe.scheduler)
    assert not any(m._forward_hooks or m._forward_pre_hooks or module_hooks(m) for m in experts)
    assert not probe.run.complete and probe.run.num_steps == 2


# ---------------------------------------------------------------------------------------------- truncation
class OldIndex:
    """FrameTruncation's step index before the recorder: steps recorded since the generation began, a new
    generation detected by a DiT call's timestep larger than the previous call's."""

    def __init__(self) -> None:
        self.gen_start, self.last_t, self.seen = 0, None, []

    def __call__(self, t, steps: int) -> None:
        if isinstance(t, torch.Tensor) and t.numel():
            now = float(t.detach().max())
            if self.last_t is not None and now > self.last_t:
                self.gen_start = steps
            self.last_t = now
        self.seen.append(steps - self.gen_start)


def _spy(probe, old: OldIndex) -> HookRegistry:
    """A hook after FrameTruncation's on each expert: the old derivation at the same DiT call."""
    reg = HookRegistry()
    for module in probe.parts.experts.values():
        io = DitIO(module, probe.parts.dit_calls)
        reg.add(module, FnHook(pre=lambda m, a, k, io=io: old(io.timestep(a, k), probe.recorder.steps)))
    return reg


def test_truncation_step_index_equals_the_old_derivation_on_a_diffusers_pipeline(two_expert_pipe):
    ft, old = FrameTruncation(keep=2, until=2, positions="compressed"), OldIndex()
    with LatentProbe(two_expert_pipe, store_dtype="float32", intervene=ft) as probe:
        spy = _spy(probe, old)
        try:
            for seed, steps in enumerate(STEPS):
                run_pipe(two_expert_pipe, steps=steps, seed=seed)
        finally:
            spy.remove_all()
    steps = [c.step for c in ft.calls]
    assert steps == old.seen
    assert steps == [k for n in STEPS for k in range(n) for _ in range(2)]  # CFG: two DiT calls a step
    assert [c.truncated for c in ft.calls] == [c.step < 2 for c in ft.calls]


def test_truncation_step_index_equals_the_old_derivation_on_the_wan_standin():
    t2v = wan.WanT2V(tiny_t2v_config())
    ft, old = FrameTruncation(keep=2, until=2), OldIndex()
    with LatentProbe(t2v, store_dtype="float32", intervene=ft) as probe:
        spy = _spy(probe, old)
        try:
            for k, steps in enumerate(STEPS):
                t2v.generate(f"prompt {k}", seed=10 + k, sampling_steps=steps, **WAN_KW)
        finally:
            spy.remove_all()
    steps = [c.step for c in ft.calls]
    assert steps == old.seen and len(probe.runs) == 2
    assert steps == [k for n in STEPS for k in range(n) for _ in range(2)]


def test_a_module_gets_only_the_torch_hooks_its_model_hooks_need():
    """A post-only hook (capture's on each expert) costs one torch forward hook per call, no pre-hook."""
    module, reg = torch.nn.Linear(2, 2), HookRegistry()
    reg.add(module, FnHook(post=lambda *a: None))
    assert len(module._forward_hooks) == 1 and not module._forward_pre_hooks
    reg.add(module, FnHook(pre=lambda *a: None))
    assert len(module._forward_hooks) == 1 and len(module._forward_pre_hooks) == 1
    reg.remove_all()
    assert not module._forward_hooks and not module._forward_pre_hooks and module_hooks(module) == ()


@pytest.mark.parametrize("why", ["rank", "disk_full"])
def test_a_probe_that_records_nothing_truncates_at_the_same_steps(two_expert_pipe, tmp_path, monkeypatch, why):
    """FrameTruncation(until=2) on a rank that writes nothing (or whose first file the disk refused) truncates steps
    0-1 only, like the recording probe, over two generations in one block: the outputs are bit-identical. (It
    used to count every call as step 0 there and truncate every step.)"""
    import latent_probe.probe as probe_mod
    from latent_probe.store.writer import DiskFullError

    def generate_twice():
        return [run_pipe(two_expert_pipe, steps=5, seed=s) for s in (0, 1)]

    ft = FrameTruncation(keep=2, until=2)
    with LatentProbe(two_expert_pipe, tmp_path / "rec.h5", intervene=ft):
        recorded = generate_twice()
    counts_recorded = (ft.token_steps_run, ft.token_steps_full)
    if why == "rank":
        monkeypatch.setattr(probe_mod, "_rank", lambda: 1)
    else:
        def refuse(*a, **k):
            raise DiskFullError("no space left on device (test)")
        monkeypatch.setattr(probe_mod, "RunWriter", refuse)
    ft2 = FrameTruncation(keep=2, until=2)
    with pytest.warns(RuntimeWarning):
        with LatentProbe(two_expert_pipe, tmp_path / "none.h5", intervene=ft2, on_write_error="warn"):
            silent = generate_twice()
    assert not (tmp_path / "none.h5").exists()
    for a, b in zip(recorded, silent):
        assert torch.equal(a, b)
    assert (ft2.token_steps_run, ft2.token_steps_full) == counts_recorded
    monkeypatch.undo()
    with LatentProbe(two_expert_pipe, None, capture=("x0",)):
        plain = run_pipe(two_expert_pipe, steps=5, seed=0)
    assert not torch.equal(plain, silent[0])   # the truncation did change the output


# ---------------------------------------------------------------------------------------------- order, errors, reset
def test_the_package_hooks_run_as_one_group_where_the_first_was_registered():
    """The order docs/architecture.md promises: a user's torch hook registered before the package's first hook on a
    module runs before the package's hooks, one registered after runs after — also one registered between two
    owners (never between them); among the package's hooks an outermost one (the DiT timer) wraps the others."""
    module, order = torch.nn.Linear(2, 2), []

    def user(tag):
        return (module.register_forward_pre_hook(lambda m, a: order.append(f"pre user {tag}")),
                module.register_forward_hook(lambda m, a, o: order.append(f"post user {tag}")))

    def package(tag, outermost=False):
        reg = HookRegistry()
        reg.add(module, FnHook(lambda *a: order.append(f"pre {tag}"), lambda *a: order.append(f"post {tag}")),
                outermost=outermost)
        return reg

    handles = user("before")
    probe = package("probe")
    handles += user("between")
    timer = package("timer", outermost=True)
    handles += user("after")
    module(torch.ones(1, 2))
    assert order == ["pre user before", "pre timer", "pre probe", "pre user between", "pre user after",
                     "post user before", "post probe", "post timer", "post user between", "post user after"]
    for owner in (probe, timer):
        owner.remove_all()
    assert [k for k in module._forward_pre_hooks] == [h.id for h in handles[0::2]]
    assert [k for k in module._forward_hooks] == [h.id for h in handles[1::2]]


class Errors(ModelHook):
    """Records its pre_forward, post_forward and on_error calls in ``log`` (``fail``: its pre_forward raises)."""

    def __init__(self, tag: str, log: list, fail: bool = False) -> None:
        self.tag, self.log, self.fail = tag, log, fail

    def pre_forward(self, site, args, kwargs):
        if self.fail:
            raise KeyError(self.tag)
        self.log.append(f"pre {self.tag}")

    def post_forward(self, site, args, kwargs, output):
        self.log.append(f"post {self.tag}")

    def on_error(self, site, exc):
        self.log.append(f"error {self.tag}: {type(exc).__name__}")


class Raising(torch.nn.Module):
    def forward(self, x):
        if float(x.sum()) < 0:
            raise ValueError("negative")
        return x


def test_a_module_hook_sees_the_exception_of_the_forward_it_wraps_as_torch_always_call_would():
    module, log = Raising(), []
    reg = HookRegistry()
    reg.add(module, Errors("a", log))
    reg.add(module, FnHook(post=lambda *a: log.append("post fn")))  # no on_error: never told
    reg.add(module, Errors("b", log))
    module(torch.ones(1))
    assert log == ["pre a", "pre b", "post a", "post fn", "post b"]
    log.clear()
    with pytest.raises(ValueError, match="negative"):
        module(-torch.ones(1))
    assert log == ["pre a", "pre b", "error b: ValueError", "error a: ValueError"]   # innermost first
    log.clear()
    try:  # a forward that succeeds while the caller handles another exception is not an error
        raise RuntimeError("handled by the caller")
    except RuntimeError:
        module(torch.ones(1))
    assert log == ["pre a", "pre b", "post a", "post fn", "post b"]
    reg.remove_all()
    assert not module._forward_hooks and not module._forward_pre_hooks and not module._forward_hooks_always_called


def test_a_raising_pre_forward_tells_only_the_hooks_before_it():
    module, log = Raising(), []
    reg = HookRegistry()
    for hook in (Errors("a", log), Errors("b", log, fail=True), Errors("c", log)):
        reg.add(module, hook)
    with pytest.raises(KeyError):
        module(torch.ones(1))
    reg.remove_all()
    assert log == ["pre a", "error a: KeyError"]


class Resets(ModelHook):
    """A hook with per-generation state: the DiT calls since its last reset_state."""

    def __init__(self, log: list) -> None:
        self.log, self.calls = log, 0

    def reset_state(self):
        self.log.append(("reset", self.calls))
        self.calls = 0

    def pre_forward(self, site, args, kwargs):
        self.calls += 1


class WithResets:
    """An intervention that changes nothing: a Resets hook on the high-noise expert."""

    def __init__(self) -> None:
        self.log: list = []

    def describe(self):
        return {"kind": "resets"}

    def attach(self, registry, parts, recorder):
        self.hook = registry.add(parts.experts[parts.high_noise_expert], Resets(self.log))


def test_reset_state_is_called_when_each_generation_begins_before_its_first_dit_call(two_expert_pipe):
    intervention, events = WithResets(), Events()
    with LatentProbe(two_expert_pipe, store_dtype="float32", intervene=intervention) as probe:
        probe.recorder.subscribe(events)
        for seed, steps in enumerate(STEPS):
            run_pipe(two_expert_pipe, steps=steps, seed=seed)
        calls = intervention.hook.calls
    assert events.seen == expected(*STEPS)
    # generation 1 begins with no call made; generation 2 begins after generation 1's high-noise calls
    assert intervention.log[0] == ("reset", 0) and len(intervention.log) == len(STEPS)
    assert 0 < intervention.log[1][1] < 2 * STEPS[0] and 0 < calls < 2 * STEPS[1]


def test_skip_counter_stamps_a_call_that_raised_and_counts_calls_from_0_in_each_generation(two_expert_pipe):
    from latent_probe.interventions.caches import SkipCounter, experts_of

    experts = experts_of(two_expert_pipe)
    call_before, sched = type(two_expert_pipe).__dict__.get("__call__"), two_expert_pipe.scheduler
    counter = SkipCounter(experts, two_expert_pipe)
    counter.attach()
    try:
        run_pipe(two_expert_pipe, steps=3)
        run_pipe(two_expert_pipe, steps=2)
        with pytest.raises(TypeError):
            experts["transformer"](torch.zeros(1))   # the forward raises: the call is still timed
    finally:
        counter.detach()
    rows = counter.per_call()
    index = [(r["expert"], r["call"]) for r in rows[:-1]]
    firsts = [i for i, r in enumerate(index) if r[1] == 0]
    assert len(firsts) == 4 and all(r["seconds"] is not None for r in rows)   # 2 generations × 2 experts
    assert rows[-1]["units_called"] == 0
    assert not any(m._forward_hooks or m._forward_pre_hooks or module_hooks(m) for m in experts.values())
    assert type(two_expert_pipe).__dict__.get("__call__") is call_before
    assert "step" not in vars(sched) and "set_timesteps" not in vars(sched)
