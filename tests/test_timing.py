"""The cost timers (``study.timing``): DiT time, calls and token-steps, shared by ``latent-probe study``,
``compare_truncation`` and the frontier scripts — checked against independent torch hooks and a known sleep."""

import time

import pytest
import torch

from latent_probe.hooks import FnHook, HookRegistry
from latent_probe.study.jobs import StudyError
from latent_probe.study.timing import DiTTimer, GenerationClock, TokenCounter


class _Block(torch.nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.attn1 = torch.nn.Linear(d, d)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states + self.attn1(hidden_states)


class _DiT(torch.nn.Module):
    """[B, L, D] → [B, L, D]; ``skip_last``: the tail reused, as a cache does (the last block's attn1 not run)."""

    def __init__(self, d: int = 8, n: int = 3) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(_Block(d) for _ in range(n))
        self.skip_last = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks[:-1] if self.skip_last else self.blocks:
            x = blk(hidden_states=x)
        return x


def _hook_counts(m: torch.nn.Module) -> tuple[int, int]:
    return len(m._forward_pre_hooks), len(m._forward_hooks)


def test_counts_calls_and_tokens_like_independent_torch_hooks_and_leaves_no_hook() -> None:
    a, b = _DiT(), _DiT()
    seen = {"calls": 0, "tokens": 0, "last": 0}
    refs = [m.register_forward_pre_hook(lambda *_: seen.__setitem__("calls", seen["calls"] + 1)) for m in (a, b)]
    refs += [m.blocks[0].register_forward_pre_hook(
        lambda mod, args, kw: seen.__setitem__("tokens", seen["tokens"] + kw["hidden_states"].shape[0]
                                               * kw["hidden_states"].shape[1]), with_kwargs=True) for m in (a, b)]
    refs += [m.blocks[-1].attn1.register_forward_pre_hook(lambda *_: seen.__setitem__("last", seen["last"] + 1))
             for m in (a, b)]
    before = [_hook_counts(m) for m in (a, b, a.blocks[0], a.blocks[-1].attn1)]
    timer, counter = DiTTimer([a, b]).attach(), TokenCounter([a, b]).attach()
    for i, (m, shape) in enumerate([(a, (2, 5, 8)), (b, (1, 7, 8)), (a, (3, 4, 8)), (b, (2, 5, 8))]):
        m.skip_last = i == 3
        m(torch.randn(shape))
    timer.detach()
    counter.detach()
    assert [_hook_counts(m) for m in (a, b, a.blocks[0], a.blocks[-1].attn1)] == before
    a(torch.randn(1, 2, 8))          # detached: nothing counted any more
    assert (timer.calls, counter.calls) == (4, 4) and seen["calls"] == 5
    assert counter.tokens == 10 + 7 + 12 + 10 == seen["tokens"] - 2
    assert counter.blocks_run == 3 == seen["last"] - 1
    assert timer.clock == "thread_cpu" and timer.seconds() > 0
    for r in refs:
        r.remove()


def test_the_timer_is_outermost_so_it_times_the_package_hooks_added_before_it() -> None:
    m = _DiT()
    slow = HookRegistry()
    slow.add(m, FnHook(lambda *_: time.sleep(0.05)))          # a probe's hook, added first
    timer = DiTTimer([m], cpu_clock="wall").attach()
    try:
        m(torch.randn(1, 3, 8))
        m(torch.randn(1, 3, 8))
    finally:
        timer.detach()
        slow.remove_all()
    assert timer.clock == "wall" and timer.calls == 2
    assert timer.seconds() >= 0.1


def test_a_bad_cpu_clock_is_refused() -> None:
    with pytest.raises(ValueError, match="cpu_clock must be one of"):
        DiTTimer([_DiT()], cpu_clock="gpu")


def test_generation_clock_removes_its_hooks_when_the_generation_raises() -> None:
    m = _DiT()
    before = [_hook_counts(x) for x in (m, m.blocks[0], m.blocks[-1].attn1)]
    clock = GenerationClock({"high_noise": m})
    with pytest.raises(RuntimeError, match="boom"):
        with clock:
            m(torch.randn(1, 3, 8))
            raise RuntimeError("boom")
    assert [_hook_counts(x) for x in (m, m.blocks[0], m.blocks[-1].attn1)] == before
    with pytest.raises(StudyError, match="no generation was timed"):
        clock.result()
    with clock:
        m(torch.randn(2, 3, 8))
    cost = clock.result()
    assert (cost.dit_calls, cost.token_steps, cost.blocks_run, cost.dit_clock) == (1, 6, 1, "thread_cpu")
    assert 0 < cost.dit_s <= cost.thread_cpu_s + 1e-3


def test_a_timer_attached_before_the_probe_also_times_the_probes_post_forward() -> None:
    """training/frontier_run attaches its timer before LatentProbe: the probe's and an intervention's post_forward
    (FrameTruncation's fill) are inside the timed window. The timer of study.timing before 4e6080b (torch hooks,
    post hook appended) left them out in that order: frontier_run's dit_s changed meaning with that commit."""
    def busy(*_):
        t = time.thread_time()
        while time.thread_time() - t < 0.02:
            pass

    m = _DiT()
    timer = DiTTimer([m]).attach()
    probe = HookRegistry()
    probe.add(m, FnHook(None, busy))          # the probe's hook, added after the timer
    try:
        for _ in range(3):
            m(torch.randn(1, 3, 8))
    finally:
        probe.remove_all()
        timer.detach()
    assert timer.calls == 3 and timer.seconds() >= 0.06
