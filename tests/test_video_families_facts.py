"""Every video DiT family in diffusers (issue 9): the tiny pipelines in ``video_families`` are deterministic, and
what their ``scheduler.step`` / DiT calls look like still matches ``FACTS`` (so the facts cannot rot silently).

For each family: build it, run it twice with the same seed (the second time under temporary hooks: ``step``
wrapped on the scheduler class, forward hooks on the experts) and require bit-identical latents; then check the
recorded step arguments (names, order, shapes, which scheduler object), the DiT calls per step (count, batch,
expert, which half is the unconditional one), and that the FACTS recipe for x0 gives the scheduler's own x0.
"""

from __future__ import annotations

import time

import pytest
import torch

from video_families import BUILDERS, FACTS, DitCall, Recorder, StepCall

TIMINGS: dict[str, float] = {}


def _build(family: str):
    try:
        return BUILDERS[family]()
    except (ImportError, AttributeError) as exc:  # the installed diffusers lacks this pipeline / model class
        pytest.skip(f"{family}: not available in the installed diffusers ({exc})")


def _blocks(events: list) -> list[tuple[list[DitCall], list[StepCall]]]:
    """Split the event stream into (DiT calls, the step calls that follow them) per loop iteration."""
    blocks: list[tuple[list, list]] = []
    for e in events:
        if isinstance(e, DitCall):
            if not blocks or blocks[-1][1]:
                blocks.append(([], []))
            blocks[-1][0].append(e)
        else:
            assert blocks, "a scheduler step before any DiT call"
            blocks[-1][1].append(e)
    return blocks


def _f64(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to(torch.float64)


def _check_x0(kind: str, facts: dict, s: StepCall, sched) -> None:
    x, v = _f64(s.sample), _f64(s.model_output)
    if kind == "model_outputs":  # UniPC / DPM-Solver++ flow: x0 kept for the multistep solver
        assert s.x0_own is not None
        torch.testing.assert_close(_f64(s.x0_own), x - s.sigma * v, atol=1e-5, rtol=1e-5)
    elif kind == "out1":  # step returned (prev, x0)
        assert isinstance(s.out, tuple) and len(s.out) == 2
        if facts["scheduler"].startswith("CogVideoX"):
            a = sched.alphas_cumprod[int(s.timestep)].to(torch.float64)
            recipe = a.sqrt() * x - (1 - a).sqrt() * v
        else:  # EulerAncestral, epsilon: x = x0 + sigma * eps
            recipe = x - s.sigma * v
        torch.testing.assert_close(_f64(s.x0_own), recipe, atol=1e-4, rtol=1e-5)
    elif kind in ("flow", "flow_inverted"):
        # No x0 is stored; the recipe must at least reproduce the Euler update: with x = (1 - n) x0 + n eps (n the
        # noise level, = 1 - s when the scheduler's sigmas are inverted), prev = (1 - n_next) x0 + n_next eps.
        # (Both readings of s satisfy this; which one is right is checked by the endpoints in _check_endpoints.)
        inverted = kind == "flow_inverted"
        n = 1 - s.sigma if inverted else s.sigma
        n_next = 1 - s.sigma_next if inverted else s.sigma_next
        x0 = x + (1 - s.sigma) * v if inverted else x - s.sigma * v
        eps = (x - (1 - n) * x0) / n
        torch.testing.assert_close((1 - n_next) * x0 + n_next * eps, _f64(s.out[0]), atol=1e-4, rtol=1e-4)
    else:  # pragma: no cover
        raise AssertionError(f"unknown x0 kind {kind}")


def _check_endpoints(kind: str, steps: list[StepCall]) -> None:
    """Flow schedules start from pure noise (noise level 1) and end on data (0): this is what tells an inverted
    sigma table (Mochi: s runs 0 -> 1, noise level = 1 - s) from a normal one (noise level = s)."""
    if kind not in ("flow", "flow_inverted", "model_outputs"):
        return
    level = (lambda sig: 1 - sig) if kind == "flow_inverted" else (lambda sig: sig)
    by_sched: dict[str, list[StepCall]] = {}
    for s in steps:
        by_sched.setdefault(s.scheduler, []).append(s)
    for seq in by_sched.values():
        assert abs(level(seq[0].sigma) - 1.0) < 1e-3, ("first step is not at noise level 1", seq[0].sigma)
        assert abs(level(seq[-1].sigma_next)) < 1e-6, ("last step does not end at noise level 0", seq[-1].sigma_next)
        levels = [level(s.sigma) for s in seq]
        assert all(a > b for a, b in zip(levels, levels[1:])), "noise level must fall step by step"


def _embeds_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.reshape(-1).to(b.dtype), b.reshape(-1))


@pytest.mark.parametrize("family", list(BUILDERS))
def test_family_matches_facts(family: str) -> None:
    facts = FACTS[family]
    t0 = time.perf_counter()
    fam = _build(family)
    t1 = time.perf_counter()
    first = fam.run(seed=0)
    t2 = time.perf_counter()
    with Recorder(fam) as rec:
        second = fam.run(seed=0)
    TIMINGS[family] = t2 - t1
    print(f"\n{family}: build {t1 - t0:.2f}s, one pipeline call {t2 - t1:.2f}s")

    # determinism (and the temporary hooks change nothing)
    assert torch.equal(first, second), f"{family}: two runs with the same seed differ"

    # --- step calls -------------------------------------------------------------------------------------------
    sf = facts["step"]
    if sf["scheduler"] == "pipe":
        steps = rec.steps("pipe")
    else:  # only deep copies of pipe.scheduler are stepped
        assert rec.steps("pipe") == [], f"{family}: pipe.scheduler.step was called"
        steps = [s for s in rec.steps(None) if s.scheduler != "pipe"]
    assert len(steps) == sf["calls"]
    for s in steps:
        assert list(s.positional) == sf["positional"], (family, s.positional)
        assert list(s.keyword) == sf["keyword"], (family, s.keyword)
        assert tuple(s.model_output.shape) == sf["model_output"]["tiny"]
        assert tuple(s.sample.shape) == sf["sample"]["tiny"]
        assert isinstance(s.out, tuple)  # return_dict=False everywhere
    if sf["scheduler"] == "copies":
        assert all(s.sample_is_view for s in steps), "expected per-frame slices of the latents"
        assert len({s.scheduler for s in steps}) == facts["dit"]["hidden_states"][2], "one copy per latent frame"
    others = [s for s in rec.steps(None) if s.scheduler != "pipe"] if sf["scheduler"] == "pipe" else []
    if "audio" in sf:  # LTX-2: the audio scheduler is a deep copy, stepped right after the video step
        assert len(others) == sf["calls"] and len({s.scheduler for s in others}) == 1
        assert all(tuple(s.sample.shape) == sf["audio"]["tiny"] for s in others)
    else:
        assert others == [], f"{family}: unexpected scheduler copies stepped"

    sched = fam.pipe.scheduler
    assert type(sched).__name__ == facts["scheduler"]
    for key, value in facts.get("config", {}).items():
        assert sched.config[key] == value, (family, key, sched.config[key])
    begin = getattr(fam.pipe.scheduler, "begin_index", None)
    assert begin == (0 if facts["set_begin_index"] else None), (family, begin)

    # --- x0: the FACTS recipe gives the scheduler's own x0 --------------------------------------------------------
    for s in steps:
        _check_x0(facts["x0"]["kind"], facts, s, fam.pipe.scheduler)
    _check_endpoints(facts["x0"]["kind"], steps)

    # --- DiT calls per step, batch, expert, CFG order ---------------------------------------------------------
    dit = rec.dit_calls()
    d0, df = dit[0], facts["dit"]
    assert d0.hidden_states == df["hidden_states"], (family, d0.hidden_states)
    assert d0.hidden_positional == df["hidden_positional"]
    assert tuple(d0.timestep.shape) == df["timestep"], (family, tuple(d0.timestep.shape))
    assert str(d0.timestep.dtype).replace("torch.", "") == df["timestep_dtype"]
    for k, shape in df.get("extra", {}).items():
        assert d0.extra.get(k) == shape, (family, k, d0.extra.get(k))

    cfg = facts["cfg"]
    blocks = _blocks(rec.events)
    for calls, block_steps in blocks:
        assert len(calls) == cfg["calls_per_step"], (family, len(calls))
        assert [c.hidden_states[0] for c in calls] == cfg["batch"], (family, [c.hidden_states for c in calls])
        assert block_steps, "DiT calls not followed by a step"
    if sf["scheduler"] == "pipe":
        assert len(blocks) == sf["calls"]

    experts = facts["experts"]
    used = {c.expert for c in dit}
    assert used == set(experts), (family, used)
    if len(experts) == 2:  # boundary rule: transformer while t >= boundary_ratio * num_train_timesteps
        boundary = fam.pipe.config.boundary_ratio * fam.pipe.scheduler.config.num_train_timesteps
        for calls, block_steps in blocks:
            t = block_steps[0].timestep
            want = experts[0] if t >= boundary else experts[1]
            assert {c.expert for c in calls} == {want}, (family, float(t), want)

    pos, neg = fam.kwargs.get("prompt_embeds"), fam.kwargs.get("negative_prompt_embeds")
    if cfg["mode"] in ("batched", "sequential") and pos is not None and neg is not None:
        c0 = blocks[0][0]
        if cfg["mode"] == "batched":
            ehs = c0[0].encoder_hidden_states
            halves = {"uncond": neg, "cond": pos}
            for i, who in enumerate(cfg["order"]):
                assert _embeds_equal(ehs[i], halves[who]), (family, i, who)
        else:
            for call, who in zip(c0, cfg["order"]):
                assert _embeds_equal(call.encoder_hidden_states, pos if who == "cond" else neg), (family, who)


def test_facts_cover_every_builder() -> None:
    assert set(FACTS) == set(BUILDERS)
    for name, f in FACTS.items():
        for key in ("pipeline", "experts", "expert_rule", "step", "scheduler", "sigmas", "model_predicts", "x0",
                    "cfg", "dit", "tricky", "evidence", "set_begin_index"):
            assert key in f, (name, key)
