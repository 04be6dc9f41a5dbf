"""What one generation cost: wall time, the calling thread's CPU time, time inside the DiT, token-steps.

``GenerationClock(experts)`` is a context manager around one generation (``with clock: pipe(...)``); after it,
``clock.result()`` is a ``GenerationCost``:

* ``wall_s`` — ``perf_counter`` seconds of the block (CUDA-synchronised at both ends when CUDA is in use);
* ``thread_cpu_s`` — ``time.thread_time`` seconds of the calling thread over the block;
* ``dit_s`` — time inside the experts' forward calls (``DiTTimer``): on a CPU the calling thread's CPU time
  (with ``torch.set_num_threads(1)`` all of torch's compute runs on that thread, so other processes' load
  barely moves it; with more threads the intra-op workers' time is *not* counted: ``threads`` says which);
  on a GPU CUDA events recorded at each call's start and end, summed after one synchronise;
* ``token_steps`` — Σ B·L of the hidden states entering each expert's first block (after any truncation; CFG's
  two calls both counted); ``dit_calls`` — expert forward calls; ``blocks_run`` — calls whose last block's
  self-attention ran (a cache that reuses the tail skips it).

The package's hooks (``hooks.HookRegistry``), owned here and removed on exit (also when the generation raises);
the timer's hook is outermost, so it starts before any other package hook of the expert (a probe's, an
intervention's) and stops after them.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import torch

from ..hooks import FnHook, HookRegistry
from .jobs import StudyError

__all__ = ["DiTTimer", "TokenCounter", "GenerationClock", "GenerationCost"]

_CPU_CLOCKS = {"thread": ("thread_cpu", time.thread_time), "wall": ("wall", time.perf_counter)}  # name, clock


def _is_cuda(module: torch.nn.Module) -> bool:
    p = next(module.parameters(), None)
    return p is not None and p.is_cuda


class DiTTimer:
    """Seconds spent inside ``modules``' forward calls, and how many calls: CUDA events on a GPU (recorded at each
    call's start and end, summed after one synchronise), else ``cpu_clock``: ``"thread"`` (``time.thread_time``
    of the calling thread) or ``"wall"`` (``time.perf_counter``). ``clock`` names the one in use.

    Its hook is outermost on each module (its ``pre_forward`` runs first and its ``post_forward`` last among the
    package's hooks), so a timer attached after a probe entered times everything the probe and interventions add.
    ``attach()`` / ``detach()`` add and remove exactly its own hooks."""

    def __init__(self, modules: Sequence[torch.nn.Module], *, cpu_clock: str = "thread") -> None:
        if cpu_clock not in _CPU_CLOCKS:
            raise ValueError(f"cpu_clock must be one of {tuple(_CPU_CLOCKS)}, got {cpu_clock!r}")
        self.modules = list(modules)
        name, self._now = _CPU_CLOCKS[cpu_clock]
        self.clock = "cuda_events" if any(_is_cuda(m) for m in self.modules) else name
        self._registry = HookRegistry()
        self._open: dict[int, Any] = {}
        self._events: list[tuple[Any, Any]] = []
        self._cpu_s = 0.0
        self.calls = 0

    def attach(self) -> "DiTTimer":
        for m in self.modules:
            self._registry.add(m, FnHook(self._start, self._stop), outermost=True)
        return self

    def detach(self) -> None:
        self._registry.remove_all()

    def _start(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if _is_cuda(module):
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self._open[id(module)] = ev
        else:
            self._open[id(module)] = self._now()

    def _stop(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        start = self._open.pop(id(module), None)
        self.calls += 1
        if isinstance(start, float):
            self._cpu_s += self._now() - start
        elif start is not None:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._events.append((start, end))

    def seconds(self) -> float:
        """The total so far (synchronises once, on the last CUDA event, when CUDA events are pending)."""
        if self._events:
            self._events[-1][1].synchronize()
        return self._cpu_s + sum(a.elapsed_time(b) for a, b in self._events) / 1e3


class TokenCounter:
    """Tokens the DiT really ran (Σ B·L at each expert's first block), expert calls, and calls whose last block's
    self-attention ran. ``attach()`` / ``detach()`` add and remove exactly its own hooks."""

    def __init__(self, experts: Sequence[torch.nn.Module]) -> None:
        self.experts = list(experts)
        self.tokens = 0
        self.calls = 0
        self.blocks_run = 0
        self._registry = HookRegistry()

    def attach(self) -> "TokenCounter":
        for m in self.experts:
            self._registry.add(m, FnHook(self._call))
            blocks = getattr(m, "blocks", None)
            if isinstance(blocks, torch.nn.ModuleList) and len(blocks):
                self._registry.add(blocks[0], FnHook(self._count))
                last = getattr(blocks[-1], "attn1", None)
                if isinstance(last, torch.nn.Module):
                    self._registry.add(last, FnHook(self._block))
        return self

    def detach(self) -> None:
        self._registry.remove_all()

    def _call(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self.calls += 1

    def _count(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        x = kwargs.get("hidden_states", args[0] if args else None)      # [B, L, D]
        if isinstance(x, torch.Tensor) and x.dim() >= 2:
            self.tokens += int(x.shape[0]) * int(x.shape[1])

    def _block(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self.blocks_run += 1


@dataclass(frozen=True)
class GenerationCost:
    """One generation's costs (see the module docstring); ``dit_clock``: ``thread_cpu`` or ``cuda_events``."""

    wall_s: float
    thread_cpu_s: float
    dit_s: float
    dit_clock: str
    token_steps: int
    dit_calls: int
    blocks_run: int
    threads: int
    device: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class GenerationClock:
    """Times one generation of the ``experts`` (a mapping or list of DiT modules); see the module docstring."""

    def __init__(self, experts: Mapping[str, torch.nn.Module] | list[torch.nn.Module]) -> None:
        self.experts = list(experts.values()) if isinstance(experts, Mapping) else list(experts)
        self.cuda = any(_is_cuda(m) for m in self.experts)
        self._cost: GenerationCost | None = None

    def __enter__(self) -> "GenerationClock":
        self._timer = DiTTimer(self.experts).attach()
        self._counter = TokenCounter(self.experts).attach()
        if self.cuda:
            torch.cuda.synchronize()
        self._w0, self._c0 = time.perf_counter(), time.thread_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if self.cuda and exc[0] is None:
                torch.cuda.synchronize()
            cpu, wall = time.thread_time() - self._c0, time.perf_counter() - self._w0
            if exc[0] is None:
                device = str(next(self.experts[0].parameters()).device) if self.experts else "cpu"
                self._cost = GenerationCost(wall_s=wall, thread_cpu_s=cpu, dit_s=self._timer.seconds(),
                                            dit_clock=self._timer.clock, token_steps=self._counter.tokens,
                                            dit_calls=self._counter.calls, blocks_run=self._counter.blocks_run,
                                            threads=torch.get_num_threads(), device=device)
        finally:
            self._timer.detach()
            self._counter.detach()

    def result(self) -> GenerationCost:
        """The costs of the timed block (``StudyError`` before the block ended without an error)."""
        if self._cost is None:
            raise StudyError("GenerationClock: no generation was timed to the end")
        return self._cost
