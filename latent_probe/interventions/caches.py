"""Acceleration baselines a user would pick instead of frame truncation, applied through diffusers' own hooks.

``Method`` is a small declarative description a study or a frontier runner iterates over::

    for m in [Method("baseline"), Method("steps", 12), Method("first_block_cache", 0.1),
              Method("truncation", 3, steps=12)]:
        with m.applied(pipe, mag_ratios=...) as counter:         # caches on every expert, removed after
            latent = pipe(**kwargs, num_inference_steps=m.num_steps(20)).frames
        counter.summary()      # unit calls computed vs skipped, per expert: a cache that never skipped shows 0

Caches are diffusers' ``apply_first_block_cache``, ``apply_mag_cache``, ``apply_taylorseer_cache``,
``apply_pyramid_attention_broadcast`` and ``apply_faster_cache`` (through ``ModelMixin.enable_cache``, which
dispatches to them, and ``disable_cache``, which removes exactly those hooks), one config per expert
(``transformer`` and ``transformer_2``); nothing here re-implements a cache. diffusers' pipelines never reset a
cache's state between generations: ``applied`` resets it when each generation begins — the pipeline's ``__call__``
is entered, as a probe's recorder delimits generations (``GenerationRecorder.delimit``), before its first DiT
call — keeping the cache context the managers hold.

``SkipCounter`` times each DiT call (CUDA events on a GPU, ``perf_counter`` on a CPU: ``dit_s``) and counts,
with ``hooks.ModelHook`` objects on its own ``HookRegistry``, every call of each block's compute units (``attn1``,
``attn2``, ``ffn`` of a Wan block): a unit is *called* when its block is called and *computed* when its first
Linear runs.
A cache that skips a block (FirstBlockCache, MagCache) or an attention (PAB, FasterCache, TaylorSeer) leaves
its units called but not computed.

Known behaviour of diffusers 0.42 on pipelines that call cond and uncond separately (Wan): FirstBlockCache,
MagCache and TaylorSeer keep one state per cache context (branch); Pyramid Attention Broadcast and
FasterCache keep one state per attention module, so a skipped call reuses the attention output of the
previous call — the other CFG branch. FasterCache also skips attention only for guidance-distilled models or
batched CFG; ``faster_cache`` therefore sets ``is_guidance_distilled=True`` (no CFG-branch skipping), and it
raises a TypeError inside diffusers when an expert's first call of a generation falls inside its
``spatial_attention_timestep_skip_range`` (nothing cached yet): keep that range below the timestep where an
expert starts. diffusers' default TaylorSeer patterns (``^blocks.*attn``, full match) match no Wan module,
so it never skipped there; ``taylorseer`` here caches ``blocks.N.attn1|attn2|ffn`` unless told otherwise.
``Method.shares_branch_state`` says which; docs/frame-truncation.md ("Baselines").
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch

from ..adapters import TargetParts, UnsupportedTargetError, resolve_target
from ..errors import LatentProbeError
from ..hooks import FnHook, HookRegistry, ModelHook
from ..recorder import GenerationRecorder

__all__ = ["Method", "MethodError", "SkipCounter", "CACHE_KINDS", "METHOD_KINDS", "frontier_methods",
           "experts_of", "expert_steps"]

CACHE_KINDS = ("first_block_cache", "mag_cache", "taylorseer", "pab", "faster_cache")
METHOD_KINDS = ("baseline", "steps", "truncation") + CACHE_KINDS
_STRENGTH = {  # what strength means for each kind, and its type
    "baseline": (None, None), "steps": ("sampling steps", int), "truncation": ("key frames kept", int),
    "first_block_cache": ("threshold", float), "mag_cache": ("threshold", float),
    "taylorseer": ("cache_interval", int), "pab": ("attention skip range", int),
    "faster_cache": ("attention skip range", int),
}
_UNITS = ("attn1", "attn2", "ffn")
TAYLORSEER_WAN_MODULES = (r"^blocks\.\d+\.(attn1|attn2|ffn)$",)  # re.fullmatch on module names


class MethodError(LatentProbeError, ValueError):
    """A method that cannot be applied as described (one line, before anything runs)."""


def _parts(pipe: Any) -> TargetParts:
    """What the adapter knows of ``pipe`` (its experts, which one is high-noise, the boundary): the family facts
    live there, not here."""
    try:
        return resolve_target(pipe)
    except UnsupportedTargetError as exc:
        raise MethodError(f"cannot apply a method to {type(pipe).__name__}: {exc}") from None


def experts_of(pipe: Any) -> dict[str, torch.nn.Module]:
    """The DiT experts of a diffusers pipeline, by attribute name, as its adapter finds them (high-noise first)."""
    out = dict(_parts(pipe).experts)
    if not out:
        raise MethodError(f"{type(pipe).__name__} has no transformer to apply a cache to")
    return out


def check_mag_config(doc: Any, where: str = "MagCache config") -> dict[str, Any]:
    """A ``MagCacheConfig`` keyword dict as ``latent-probe calibrate`` writes it, checked before anything runs:
    ``mag_ratios`` a non-empty list of finite positive numbers, ``num_inference_steps`` an int ≥ 1 (one
    ``MethodError`` line otherwise; diffusers would fail only at the first call, with a tensor-constructor error)."""
    if not isinstance(doc, dict):
        raise MethodError(f"{where}: expected a JSON object with mag_ratios and num_inference_steps")
    ratios, n = doc.get("mag_ratios"), doc.get("num_inference_steps")
    if not isinstance(ratios, list) or not ratios or not all(
            isinstance(r, (int, float)) and not isinstance(r, bool) and math.isfinite(r) and r > 0 for r in ratios):
        raise MethodError(f"{where}: mag_ratios must be a non-empty list of finite positive numbers")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise MethodError(f"{where}: num_inference_steps must be an int >= 1, got {n!r}")
    return doc


@dataclass(frozen=True)
class Method:
    """One acceleration setting: ``kind`` (``METHOD_KINDS``), its ``strength``, and options.

    strength: ``steps`` → sampling steps; ``truncation`` → key frames kept (``FrameTruncation(keep=…)``);
    ``first_block_cache`` / ``mag_cache`` → threshold; ``taylorseer`` → ``cache_interval``; ``pab`` /
    ``faster_cache`` → spatial attention skip range. ``steps`` on any kind overrides the sampling steps (so
    ``Method("truncation", 3, steps=12)`` is truncation combined with fewer steps). ``options``: extra keyword
    arguments of the cache config or of ``FrameTruncation`` (e.g. ``(("until", 6), ("renoise", True))``; a growing
    schedule as ``("schedule", "3@4/6@8/11@12")``, its first K equal to the strength).
    """

    kind: str
    strength: float | int | None = None
    steps: int | None = None
    options: tuple[tuple[str, Any], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.kind not in METHOD_KINDS:
            raise MethodError(f"unknown method {self.kind!r}; choose one of {', '.join(METHOD_KINDS)}")
        what, typ = _STRENGTH[self.kind]
        if typ is None and self.strength is not None:
            raise MethodError(f"{self.kind} takes no strength, got {self.strength!r}")
        if typ is not None:
            s = self.strength
            if s is None or isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
                raise MethodError(f"{self.kind} needs a numeric strength ({what}), got {s!r}")
            if typ is int and (float(s) != int(s) or int(s) < 1):
                raise MethodError(f"{self.kind}: {what} must be a positive integer, got {s!r}")
            if typ is float and s < 0:
                raise MethodError(f"{self.kind}: {what} must be >= 0, got {s!r}")
            object.__setattr__(self, "strength", typ(s))
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int)
                                       or self.steps < 1):
            raise MethodError(f"steps must be a positive int, got {self.steps!r}")
        if self.kind == "steps" and self.steps is not None:
            raise MethodError("Method('steps', N) gives the step count as its strength; steps= is for other kinds")
        object.__setattr__(self, "options", tuple(sorted(dict(self.options).items())))

    # ------------------------------------------------------------------ naming
    @property
    def name(self) -> str:
        """``kind[:strength][:steps=N][:key=value...]`` — parsed back by ``Method.parse``."""
        parts = [self.kind] + ([format(self.strength, "g")] if self.strength is not None else [])
        if self.steps is not None:
            parts.append(f"steps={self.steps}")
        parts += [f"{k}={v}" for k, v in self.options]
        return ":".join(parts)

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, text: str) -> "Method":
        """``"first_block_cache:0.1"``, ``"steps:12"``, ``"truncation:3:steps=12:until=6"``, ``"baseline"``."""
        parts = [p.strip() for p in str(text).strip().split(":")]
        kind, rest = parts[0], parts[1:]
        strength = None
        if rest and "=" not in rest[0]:
            strength = _number(rest.pop(0), text)
        steps, options = None, {}
        for p in rest:
            key, sep, value = p.partition("=")
            if not sep or not key:
                raise MethodError(f"method {text!r}: expected KIND[:STRENGTH][:key=value...], got part {p!r}")
            if key == "steps":
                steps = _number(value, text)
            else:
                options[key] = _value(value)
        return cls(kind, strength, steps, tuple(options.items()))

    def describe(self) -> dict[str, Any]:
        """JSON-able description (stored with a run)."""
        return {"method": self.name, "kind": self.kind, "strength": self.strength, "steps": self.steps,
                "options": dict(self.options)}

    # ------------------------------------------------------------------ what it changes
    def num_steps(self, base_steps: int) -> int:
        """Sampling steps this method runs when the baseline runs ``base_steps``."""
        if self.kind == "steps":
            return int(self.strength)
        return base_steps if self.steps is None else self.steps

    @property
    def is_cache(self) -> bool:
        return self.kind in CACHE_KINDS

    @property
    def shares_branch_state(self) -> bool:
        """True for caches whose diffusers hook keeps one state for both CFG branches (PAB, FasterCache)."""
        return self.kind in ("pab", "faster_cache")

    def intervention(self) -> Any:
        """A ``FrameTruncation`` for ``truncation`` (``keep=strength``, options as its keyword arguments), else None."""
        if self.kind != "truncation":
            return None
        from .frame_truncation import FrameTruncation

        opts = dict(self.options)
        try:
            if "schedule" in opts:   # "3@4/6@8/11@12": keep K until step U, stage after stage
                stages = [tuple(int(v) for v in part.split("@")) for part in str(opts.pop("schedule")).split("/")]
                if not stages or any(len(st) != 2 for st in stages) or stages[0][0] != int(self.strength):
                    raise ValueError(f"schedule must read K@U/K@U/... starting with K = {self.strength}")
                return FrameTruncation(schedule=stages, **opts)
            return FrameTruncation(keep=int(self.strength), **opts)
        except (TypeError, ValueError) as exc:
            raise MethodError(f"method {self.name}: {exc}") from None

    def cache_config(self, pipe: Any, expert: str, mag_ratios: dict[str, Any] | None = None) -> Any:
        """The diffusers config object of this cache for ``expert`` of ``pipe`` (None for a non-cache method).

        ``mag_ratios``: {expert name: a ``MagCacheConfig`` keyword dict (as ``latent-probe calibrate`` writes) or
        a ``MagCacheConfig``} — required for ``mag_cache`` (diffusers' MagCache needs calibrated ratios).
        """
        from diffusers.hooks import (FasterCacheConfig, FirstBlockCacheConfig, MagCacheConfig,
                                     PyramidAttentionBroadcastConfig, TaylorSeerCacheConfig)

        opts = dict(self.options)
        tick = lambda: pipe.current_timestep  # noqa: E731 — PAB / FasterCache read the pipeline's timestep
        try:
            if self.kind == "first_block_cache":
                return FirstBlockCacheConfig(threshold=float(self.strength), **opts)
            if self.kind == "taylorseer":   # diffusers' default patterns ('^blocks.*attn') match no Wan module
                opts.setdefault("cache_identifiers", list(TAYLORSEER_WAN_MODULES))
                return TaylorSeerCacheConfig(cache_interval=int(self.strength), **opts)
            if self.kind == "pab":
                return PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=int(self.strength),
                                                       current_timestep_callback=tick, **opts)
            if self.kind == "faster_cache":
                opts.setdefault("is_guidance_distilled", True)
                return FasterCacheConfig(spatial_attention_block_skip_range=int(self.strength),
                                         current_timestep_callback=tick, **opts)
            if self.kind == "mag_cache":
                cal = (mag_ratios or {}).get(expert)
                if cal is None:
                    raise MethodError(f"mag_cache needs calibrated mag_ratios for {expert} (latent-probe calibrate "
                                      f"STUDY --method magcache --expert {expert}); got none")
                kw = dict(vars(cal)) if isinstance(cal, MagCacheConfig) else \
                    dict(check_mag_config(cal, f"mag_ratios of {expert}"))
                kw.update(threshold=float(self.strength), **opts)
                return MagCacheConfig(**kw)
        except TypeError as exc:
            raise MethodError(f"method {self.name}: {exc}") from None
        return None

    @contextlib.contextmanager
    def applied(self, pipe: Any, mag_ratios: dict[str, Any] | None = None,
                steps: int | None = None) -> Iterator["SkipCounter"]:
        """Apply this method's cache to every expert of ``pipe`` (diffusers' hooks) and count what it skips.

        Yields a ``SkipCounter`` (counts for every method, so a baseline's shows nothing skipped). On exit the
        cache hooks (``disable_cache``) and the counter's hooks are removed: the pipeline is as before.
        Refuses (``MethodError``, one line) an expert that already has a cache enabled, and — given the
        sampling ``steps`` the pipeline will run — a MagCache config calibrated for another number of calls
        of its expert (its ratios would be indexed against other steps).
        """
        experts = experts_of(pipe)
        configs = {n: self.cache_config(pipe, n, mag_ratios) for n in experts} if self.is_cache else {}
        if self.kind == "mag_cache" and steps is not None:
            calls = expert_steps(pipe, steps)
            for n, cfg in configs.items():
                if calls.get(n, 0) and cfg.num_inference_steps != calls[n]:
                    raise MethodError(f"the MagCache config of {n} is for {cfg.num_inference_steps} of its steps; "
                                      f"at {steps} sampling steps it runs {calls[n]}: calibrate at steps={steps} "
                                      f"(or resample: latent-probe calibrate --num_inference_steps {calls[n]})")
        for n, m in experts.items():
            if getattr(m, "_cache_config", None) is not None:
                raise MethodError(f"{n} already has a cache enabled ({type(m._cache_config).__name__}); "
                                  "disable it first")
            if configs and not hasattr(m, "enable_cache"):
                raise MethodError(f"{n} ({type(m).__name__}) is not a diffusers model with enable_cache")
        counter = SkipCounter(experts, pipe)
        enabled: list[torch.nn.Module] = []
        try:
            for n, cfg in configs.items():
                experts[n].enable_cache(cfg)
                enabled.append(experts[n])
                if not _cache_hooks(experts[n]):
                    raise MethodError(f"{self.name} hooked no module of {n} ({type(experts[n]).__name__}): it "
                                      "could never skip anything")
            counter.attach(reset_caches=bool(configs))
            yield counter
        finally:
            counter.detach()
            for m in enabled:
                m.disable_cache()


def expert_steps(pipe: Any, steps: int) -> dict[str, int]:
    """How many of ``steps`` sampling steps each expert of a diffusers pipeline runs: a copy of its scheduler's
    timesteps against the boundary timestep its adapter reads from the pipeline, as the pipeline decides."""
    import copy

    parts = _parts(pipe)
    sched = copy.deepcopy(parts.scheduler)
    sched.set_timesteps(steps)
    names = list(parts.experts)
    boundary, high = parts.attrs.get("boundary_timestep"), parts.high_noise_expert
    if boundary is None or high is None or len(names) < 2:
        return {names[0]: len(sched.timesteps)}
    low = next(n for n in names if n != high)
    n_high = sum(float(t) >= float(boundary) for t in sched.timesteps)
    return {high: n_high, low: len(sched.timesteps) - n_high}


def _number(text: str, whole: str) -> int | float:
    try:
        v = float(text)
    except ValueError:
        raise MethodError(f"method {whole!r}: {text!r} is not a number") from None
    return int(v) if v.is_integer() and "." not in text and "e" not in text.lower() else v


def _value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


@dataclass
class _Call:
    expert: str
    index: int          # call number of this expert in this generation (CFG: cond, uncond, cond, ...)
    timestep: float | None
    called: int = 0     # units called
    computed: int = 0   # units that ran their computation
    start: Any = None   # CUDA event or perf_counter() at the call's start / end
    end: Any = None

    def seconds(self) -> float | None:
        if self.start is None or self.end is None:
            return None
        if isinstance(self.start, float):
            return self.end - self.start
        return self.start.elapsed_time(self.end) / 1000.0   # CUDA events: milliseconds


class SkipCounter:
    """Counts each expert's compute units (a block's ``attn1``, ``attn2``, ``ffn``) called vs computed, per DiT call.

    ``target``: the pipeline whose generations the DiT calls belong to; each generation's call index starts at 0
    (and, with ``attach(reset_caches=True)``, the experts' cache state is reset) when the recorder that delimits
    its generations (``GenerationRecorder.delimit``: the pipeline's ``__call__``, its scheduler's ``step`` and
    ``set_timesteps``) begins one. Without a target every call belongs to one generation."""

    def __init__(self, experts: dict[str, torch.nn.Module], target: Any = None) -> None:
        self.experts = experts
        self.target = target
        self.calls: list[_Call] = []
        self._registry = HookRegistry()
        self._current: dict[str, _Call] = {}

    # ------------------------------------------------------------------ hooks
    def attach(self, reset_caches: bool = False) -> None:
        try:
            for name, module in self.experts.items():
                blocks = _blocks(module)
                if not blocks:
                    raise MethodError(f"{name} ({type(module).__name__}) has no transformer blocks to count")
                self._registry.add(module, _DitCall(self, name, module, reset_caches))
                for block in blocks:
                    units = [u for u in (_first_linear(getattr(block, k, None)) for k in _UNITS) if u is not None]
                    if not units:
                        raise MethodError(f"{name}: a block without attn1/attn2/ffn linears ({type(block).__name__})")
                    self._registry.add(block, FnHook(pre=self._on_block(name, len(units))))
                    for lin in units:
                        self._registry.add(lin, FnHook(pre=self._on_unit(name)))
            if self.target is not None:
                GenerationRecorder(lambda generation: None).delimit(self._registry, _parts(self.target), self.target)
        except BaseException:
            self.detach()
            raise

    def detach(self) -> None:
        self._registry.remove_all()

    def _on_block(self, name: str, units: int) -> Any:
        def hook(mod: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            call = self._current.get(name)
            if call is not None:
                call.called += units

        return hook

    def _on_unit(self, name: str) -> Any:
        def hook(mod: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            call = self._current.get(name)
            if call is not None:
                call.computed += 1

        return hook

    # ------------------------------------------------------------------ results
    @property
    def called(self) -> int:
        return sum(c.called for c in self.calls)

    @property
    def computed(self) -> int:
        return sum(c.computed for c in self.calls)

    @property
    def skipped(self) -> int:
        """Unit calls a cache answered without computing them (0: the cache never skipped)."""
        return self.called - self.computed

    @property
    def skipped_fraction(self) -> float:
        return 0.0 if self.called == 0 else self.skipped / self.called

    @property
    def dit_seconds(self) -> float:
        """Time inside the DiT calls: CUDA events on a GPU (synchronises once), perf_counter on a CPU."""
        if any(not isinstance(c.start, float) for c in self.calls if c.start is not None):
            torch.cuda.synchronize()
        return float(sum(c.seconds() or 0.0 for c in self.calls))

    def per_call(self) -> list[dict[str, Any]]:
        """One row per DiT call: expert, its call index, timestep, units called / computed / skipped, seconds."""
        if any(not isinstance(c.start, float) for c in self.calls if c.start is not None):
            torch.cuda.synchronize()
        return [{"expert": c.expert, "call": c.index, "timestep": c.timestep, "units_called": c.called,
                 "units_computed": c.computed, "units_skipped": c.called - c.computed, "seconds": c.seconds()}
                for c in self.calls]

    def summary(self) -> dict[str, Any]:
        """Totals, per expert, and the calls that skipped anything."""
        per: dict[str, dict[str, int]] = {}
        for c in self.calls:
            d = per.setdefault(c.expert, {"calls": 0, "units_called": 0, "units_computed": 0, "calls_with_skips": 0})
            d["calls"] += 1
            d["units_called"] += c.called
            d["units_computed"] += c.computed
            d["calls_with_skips"] += c.computed < c.called
        for d in per.values():
            d["units_skipped"] = d["units_called"] - d["units_computed"]
        return {"dit_calls": len(self.calls), "units_called": self.called, "units_computed": self.computed,
                "units_skipped": self.skipped, "skipped_fraction": self.skipped_fraction,
                "dit_s": self.dit_seconds, "per_expert": per}


class _DitCall(ModelHook):
    """One expert's DiT calls for a ``SkipCounter``: a ``_Call`` opened (its index in the generation, its timestep,
    the clock started) before the forward, the clock stopped after it — also when the forward raised."""

    def __init__(self, counter: SkipCounter, name: str, module: torch.nn.Module, reset_caches: bool) -> None:
        self.counter, self.name, self.module, self.reset_caches = counter, name, module, reset_caches
        self.count = 0  # calls of this expert in the current generation

    def reset_state(self) -> None:
        self.count = 0
        if self.reset_caches:
            _reset_cache_state(self.module)

    def pre_forward(self, site: Any, args: tuple, kwargs: dict) -> None:
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        now = float(t.detach().max()) if isinstance(t, torch.Tensor) and t.numel() else None
        call = _Call(self.name, self.count, now, start=_clock(t))
        self.count += 1
        self.counter.calls.append(call)
        self.counter._current[self.name] = call
        return None

    def post_forward(self, site: Any, args: tuple, kwargs: dict, output: Any) -> None:
        self._stop()
        return None

    def on_error(self, site: Any, exc: BaseException) -> None:
        self._stop()

    def _stop(self) -> None:
        call = self.counter._current.get(self.name)
        if call is not None and call.end is None:
            call.end = _clock(call.start)


def _clock(like: Any) -> Any:
    """A CUDA event recorded now when ``like`` is a CUDA tensor or event, else ``time.perf_counter()``."""
    import time

    if (isinstance(like, torch.Tensor) and like.is_cuda) or isinstance(like, torch.cuda.Event):
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event
    return time.perf_counter()


def _blocks(module: torch.nn.Module) -> Sequence[torch.nn.Module]:
    blocks = getattr(module, "blocks", None)
    return list(blocks) if isinstance(blocks, torch.nn.ModuleList) else []


def _first_linear(unit: Any) -> torch.nn.Module | None:
    if not isinstance(unit, torch.nn.Module):
        return None
    return next((m for m in unit.modules() if isinstance(m, torch.nn.Linear)), None)


def _cache_hooks(module: torch.nn.Module) -> int:
    """Number of diffusers hooks registered under ``module``."""
    return sum(len(getattr(getattr(sub, "_diffusers_hook", None), "hooks", None) or {}) for sub in module.modules())


def _reset_cache_state(module: torch.nn.Module) -> None:
    """Reset every stateful diffusers cache hook under ``module`` (a new generation), keeping each state
    manager's cache context (the pipeline set it for this call; ``StateManager.reset`` clears it)."""
    from diffusers.hooks.hooks import StateManager

    managers = []
    for sub in module.modules():
        registry = getattr(sub, "_diffusers_hook", None)
        for hook in (getattr(registry, "hooks", None) or {}).values():
            managers += [v for v in vars(hook).values() if isinstance(v, StateManager)]
    contexts = [m._context for m in managers]
    module._reset_stateful_cache()
    for m, ctx in zip(managers, contexts):
        m._context = ctx


def frontier_methods(base_steps: int = 20) -> list[Method]:
    """A default frontier: the baseline and every method at three strengths (fewer steps at 80/60/40 %)."""
    s = [max(2, round(base_steps * f)) for f in (0.8, 0.6, 0.4)]
    out = [Method("baseline")]
    out += [Method("steps", n) for n in s]
    out += [Method("first_block_cache", t) for t in (0.05, 0.1, 0.2)]
    out += [Method("taylorseer", n, options=(("disable_cache_before_step", 2),)) for n in (2, 3, 4)]
    out += [Method("pab", n) for n in (2, 3, 4)]
    out += [Method("faster_cache", n) for n in (2, 3, 4)]
    out += [Method("mag_cache", t) for t in (0.02, 0.06, 0.12)]
    out += [Method("truncation", k) for k in (3, 5, 7)]
    out += [Method("truncation", 5, steps=n) for n in s[:2]]
    return out
