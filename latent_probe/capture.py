"""Per step: what the DiT experts returned, what ``step`` received, and what follows from it.

Forward hooks on each expert note which expert ran and (with ``cfg_branches``) keep its outputs until
the scheduler's ``step`` is called; the intercepted ``step`` then builds one record:

* ``x_t``   the latent ``step`` received, [B, C, F, H, W] (the model saw it, cast to its dtype);
* ``pred``  the guided model output ``step`` received;
* ``x0``, ``eps``  from the parameterisation of the scheduler's configuration;
* ``pred_cond``, ``pred_uncond``  the expert's outputs of that step (cond first, as Wan2.2 and diffusers
  call them; one call with a doubled batch is split as diffusers' batched CFG: uncond, cond).

σ is read at the index the scheduler used for this step (``step_index − 1`` once ``step`` returned).

Each generation is its own run (its own writer): a generation call (Wan2.2's ``generate``, a diffusers
pipeline's ``__call__``; ``generation_listener``) begins one when it is entered (outermost call) and ends it when
it returns or raises. Steps made outside any generation call (``(modules, scheduler)`` targets, a hand-written
loop) form one generation until the scheduler's ``set_timesteps`` is called again after a recorded step
(``schedule_listener``): that begins the next one. Nothing is inferred from σ or the timesteps.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import threading
import warnings
from typing import Any, Callable

import torch
from einops import rearrange

from .adapters.base import TargetParts
from .adapters._util import jsonable
from .hooks import static_lookup
from .latent_steps import LatentSteps, boundary_step
from .parameterization import (
    Parameterization,
    UnknownParameterizationError,
    estimate_x0_eps,
    noise_convention,
    noise_level_at,
    parameterization_of,
)
from .store.writer import RunWriter, StepMeta
from .errors import LatentProbeError

__all__ = ["StepCapture", "LayoutError", "CAPTURABLE", "check_step_signature"]

CAPTURABLE = ("x_t", "pred", "x0", "eps")
BRANCHES = ("pred_cond", "pred_uncond")
STORED_LAYOUT = "b c f h w"


# the captures whose generation call is running in this context (thread): routes class-level step calls
_ACTIVE: contextvars.ContextVar[frozenset[int]] = contextvars.ContextVar("latent_probe_active", default=frozenset())


class LayoutError(LatentProbeError, ValueError):
    """A tensor does not have the layout the adapter expects."""


_STEP_SIGNATURES: dict[type, inspect.Signature] = {}


def step_signature(scheduler_class: type) -> inspect.Signature:
    """The signature of ``scheduler_class.step`` (self included), read through any dispatcher."""
    sig = _STEP_SIGNATURES.get(scheduler_class)
    if sig is None:
        sig = _STEP_SIGNATURES[scheduler_class] = inspect.signature(static_lookup(scheduler_class, "step"))
    return sig


def check_step_signature(scheduler_class: type) -> None:
    """Refuse, before anything runs, a ``step`` that does not name model_output, timestep and sample."""
    names = list(step_signature(scheduler_class).parameters)
    missing = [n for n in ("model_output", "timestep", "sample") if n not in names]
    if missing:
        raise LayoutError(f"{scheduler_class.__name__}.step{tuple(names[1:])} does not name {missing}: latent_probe "
                          "cannot tell which argument is the prediction and which the latent")


def _step_args(scheduler: Any, args: tuple, kwargs: dict) -> tuple[torch.Tensor, Any, torch.Tensor]:
    """(model_output, timestep, sample) of one ``step`` call, bound by name against the scheduler's own
    signature (CogVideoX-DPM passes ``old_pred_original_sample`` second)."""
    try:
        bound = step_signature(type(scheduler)).bind_partial(scheduler, *args, **kwargs).arguments
    except TypeError as exc:
        raise LayoutError(f"{type(scheduler).__name__}.step called with arguments its signature refuses: {exc}") \
            from None
    model_output, timestep, sample = bound.get("model_output"), bound.get("timestep"), bound.get("sample")
    churn = bound.get("s_churn")
    if isinstance(churn, (int, float)) and churn > 0:  # Euler: noise added inside step, to a sample we never see
        raise LayoutError(f"{type(scheduler).__name__}.step was called with s_churn={churn}: it re-noises the sample "
                          "inside step, so its x̂₀ is not the one of the sample it received")
    if bound.get("per_token_timesteps") is not None:
        raise LayoutError(f"{type(scheduler).__name__}.step was called with per_token_timesteps: one σ per token, "
                          "which latent_probe does not record")
    if not isinstance(model_output, torch.Tensor) or not isinstance(sample, torch.Tensor):
        raise LayoutError(f"{type(scheduler).__name__}.step received no model_output/sample tensors")
    return model_output, timestep, sample


def _planned_steps(scheduler: Any, first_index: int | None) -> int | None:
    """Step calls the schedule holds from the generation's first step on: len(scheduler.timesteps) less the index
    the first step used (an image-to-video pipeline starting part-way), or None without a schedule."""
    timesteps = getattr(scheduler, "timesteps", None)
    try:
        n = len(timesteps)
    except TypeError:
        return None
    n -= max(0, first_index or 0)
    return n if n > 0 else None


def _source_dtypes(x_t: torch.Tensor, pred: torch.Tensor, sigma: torch.Tensor | None) -> dict[str, str]:
    """The dtypes x̂₀ and ε̂ were computed from (and σ's, when the scheduler's own tensor was used): what deriving
    them on read needs to repeat the computation exactly."""
    out = {"x_t": str(x_t.dtype).removeprefix("torch."), "pred": str(pred.dtype).removeprefix("torch.")}
    if sigma is not None:
        out["sigma"] = str(sigma.dtype).removeprefix("torch.")
    return out


def _shares_storage(t: torch.Tensor, *others: torch.Tensor) -> bool:
    """``t`` is (a view of) one of ``others``: the caller may overwrite it, so the writer must copy it."""
    ptr = t.untyped_storage().data_ptr()
    return any(o.untyped_storage().data_ptr() == ptr for o in others)


class StepCapture:
    """Turns hook events and ``step`` calls into records, one :class:`RunWriter` per generation.

    ``first_writer`` records generation 1 (made when the block is entered, so that a path that cannot be written
    fails before anything runs); ``open_writer(n)`` makes the writer of generation n ≥ 2 when it begins (None:
    that generation is not recorded). Writers are closed when their generation ends; ``closed`` lists them.
    ``online`` (metrics.online.OnlineSums) computes each step's metric sums on the tensors' device; ``latent_steps``
    chooses the steps whose latents are stored (None: every step).
    """

    def __init__(self, parts: TargetParts, first_writer: RunWriter | None, capture: tuple[str, ...],
                 cfg_branches: bool, parameterization: Parameterization | None, attrs: dict[str, Any],
                 open_writer: Callable[[int], RunWriter | None] | None = None, online: Any = None,
                 latent_steps: LatentSteps | None = None, blocks: Any = None) -> None:
        self.parts = parts
        self.writer = first_writer  # the current (or next) generation's writer
        self._writer_generation = 1  # the generation self.writer records
        self._open_writer = open_writer
        self.closed: list[tuple[int, RunWriter]] = []  # (generation, writer), in the order they ended
        self.capture = capture
        self.cfg_branches = cfg_branches
        self._fixed_param = parameterization
        self.online = online
        self.blocks = blocks  # block_probe.BlockProbe: its sums travel with the step
        self.latent_steps = None if latent_steps is None or latent_steps.all else latent_steps
        self._chosen: Any = None  # the current generation's resolved latent_steps
        self._params: dict[int, Parameterization] = {}
        self._attrs = attrs
        self._calls: list[tuple[str, torch.Tensor | None]] = []
        self._local = threading.local()
        self._lock = threading.RLock()
        self.generation = 0  # the current (or last) generation, 1-based; 0 before the first
        self.steps = 0  # steps recorded since the probe attached, all generations together
        self.generation_steps = 0  # steps recorded in the current generation
        self.generation_seen = 0  # step calls seen in the current generation
        self.planned_steps: int | None = None  # len(scheduler.timesteps) from the generation's first step on
        self.stopped: str | None = None  # why recording of the current generation stopped
        self._in_generation = False  # a generation has begun and not ended
        self._new_schedule = False  # set_timesteps was called outside a generation call since the last step

    # ------------------------------------------------------------------ generations
    def begin_generation(self, explicit: bool = False) -> None:
        """Start the next generation (a generation that has recorded no step yet simply goes on). ``explicit``: at
        the start of a generation call (DiT calls made before it belong to no step); otherwise at a step, whose
        DiT calls were already made."""
        with self._lock:
            if self._in_generation:
                if self.generation_steps == 0:
                    return
                self.end_generation()
            if self.writer is None and self._open_writer is not None and self.generation >= 1:
                self._writer_generation = self.generation + 1
                self.writer = self._open_writer(self._writer_generation)
            elif self.writer is None:
                self._writer_generation = self.generation + 1
            self.generation = self._writer_generation
            self._in_generation = True
            self.generation_steps = self.generation_seen = 0
            self.planned_steps = None
            self.stopped = None
            self._chosen = None
            if self.online is not None:
                self.online.reset()
            if self.blocks is not None:
                self.blocks.reset()
            if explicit:
                self._calls = []

    def end_generation(self, exc_type: Any = None, exc: Any = None, *, final: bool = False) -> None:
        """End the current generation: close its writer with its end state. A generation that recorded no step
        keeps its writer for the next one, unless ``final`` (the block ends): then it is closed too (a later
        generation's empty file is discarded; generation 1's follows the writer's rules). Raises the writer's
        error (on_write_error="raise") unless ``exc_type`` is set."""
        with self._lock:
            if not self._in_generation and not final:
                return
            self._in_generation = False
            writer = self.writer
            if writer is None or (self.generation_steps == 0 and not final):
                return
            self.writer = None
            state: dict[str, Any] = {"complete": exc_type is None, "steps_seen": self.generation_seen}
            if exc_type is not None:
                state["error"] = (f"{exc_type.__name__}: {exc}".splitlines() or [exc_type.__name__])[0]
            elif self.stopped:
                state.update(complete=False, error=self.stopped)
            elif self.planned_steps is not None and self.generation_seen < self.planned_steps:
                state.update(complete=False, error=f"interrupted: stopped after {self.generation_seen} of "
                                                   f"{self.planned_steps} planned steps")
            if self.generation_steps == 0 and self._writer_generation > 1:
                state["complete"] = False  # a later generation that recorded nothing leaves no file
            self.closed.append((self._writer_generation, writer))
            try:
                writer.close(state)
            except Exception:
                if exc_type is None:
                    raise

    def generation_listener(self, owner: Any = None, scoped: bool = False) -> Callable:
        """Listener for the call that runs one generation (Wan2.2's ``generate``; a pipeline class's ``__call__``,
        then ``owner`` is the instance whose calls count). ``scoped``: also mark this context, so that class-level
        ``step`` patches record only the steps of this target's generation."""

        def listener(call_next: Callable, *args: Any, **kwargs: Any) -> Any:
            if owner is not None and not (args and args[0] is owner):
                return call_next(*args, **kwargs)
            if getattr(self._local, "generating", 0):  # a nested call is part of the outer generation
                return call_next(*args, **kwargs)
            self.begin_generation(explicit=True)
            self._local.generating = 1
            token = _ACTIVE.set(_ACTIVE.get() | {id(self)}) if scoped else None
            try:
                result = call_next(*args, **kwargs)
            except BaseException as exc:
                self._local.generating = 0
                self.end_generation(type(exc), exc)
                raise
            finally:
                self._local.generating = 0
                if token is not None:
                    _ACTIVE.reset(token)
            self.end_generation()
            return result

        return listener

    def scope_listener(self) -> Callable:
        """The generation listener of a target whose generation call also scopes class-level ``step`` patches."""
        return self.generation_listener(scoped=True)

    def schedule_listener(self) -> Callable:
        """Listener for ``scheduler.set_timesteps``: outside a generation call, a new schedule after recorded steps
        begins the next generation (at its first step)."""

        def listener(call_next: Callable, *args: Any, **kwargs: Any) -> Any:
            if not getattr(self._local, "generating", 0):
                self._new_schedule = True
            return call_next(*args, **kwargs)

        return listener

    # ------------------------------------------------------------------ hooks on experts
    def forward_hook(self, expert: str) -> Callable:
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            keep = self.parts.dit_output(output) if self.cfg_branches else None
            self._calls.append((expert, keep))

        return hook

    # ------------------------------------------------------------------ step interception (hooks.py listeners)
    def step_listener(self, scheduler: Any) -> Callable:
        """Listener for ``scheduler.step`` replaced on that instance."""

        def listener(call_next: Callable, *args: Any, **kwargs: Any) -> Any:
            return self.on_step(scheduler, call_next, args, kwargs)

        return listener

    def class_step_listener(self, scoped: bool) -> Callable:
        """Listener for ``SchedulerClass.step`` (called with the scheduler first). ``scoped``: record only
        calls made inside this probe's own generation call (two targets in two threads share the class)."""

        def listener(call_next: Callable, scheduler: Any, *args: Any, **kwargs: Any) -> Any:
            if scoped and not self.in_scope():
                return call_next(scheduler, *args, **kwargs)
            return self.on_step(scheduler, functools.partial(call_next, scheduler), args, kwargs)

        return listener

    def in_scope(self) -> bool:
        return id(self) in _ACTIVE.get()

    def parameterization_for(self, scheduler: Any) -> Parameterization:
        if self._fixed_param is not None:
            return self._fixed_param
        key = id(scheduler)
        if key not in self._params:
            self._params[key] = parameterization_of(scheduler)
        return self._params[key]

    def on_step(self, scheduler: Any, call: Callable, args: tuple, kwargs: dict) -> Any:
        if getattr(self._local, "depth", 0):  # a step that calls step: record the outer one only
            return call(*args, **kwargs)
        if not self._in_generation or (self._new_schedule and not getattr(self._local, "generating", 0)):
            self.begin_generation()
        self._new_schedule = False
        self.generation_seen += 1
        if self.stopped:
            if self.blocks is not None:
                self.blocks.discard()
            return call(*args, **kwargs)
        try:
            model_output, timestep, sample = _step_args(scheduler, args, kwargs)
            param = self.parameterization_for(scheduler)
        except LayoutError as exc:
            return self._stop(exc, call, args, kwargs)
        self._local.depth = 1
        try:
            result = call(*args, **kwargs)
        finally:
            self._local.depth = 0
        calls, self._calls = self._calls, []
        try:
            self._record(scheduler, param, model_output, timestep, sample, calls)
        except (LayoutError, UnknownParameterizationError) as exc:
            self._stop(exc)
        return result

    def _stop(self, exc: Exception, call: Callable | None = None, args: tuple = (), kwargs: dict | None = None) -> Any:
        """Stop recording (never the generation) when a step cannot be recorded exactly; the run says why."""
        if not self.stopped:
            self.stopped = f"recording stopped at step {self.generation_steps}: {exc}"
            warnings.warn(f"latent_probe: {self.stopped}; the generation goes on", RuntimeWarning, stacklevel=4)
        return None if call is None else call(*args, **(kwargs or {}))

    # ------------------------------------------------------------------ one record
    def _to_stored(self, t: torch.Tensor, what: str) -> torch.Tensor:
        """[B, C, F, H, W] from the layout the adapter declares (packed tokens unpacked with the sizes the
        pipeline computed for this generation)."""
        layout, target = self.parts.step_layout, self.parts.unpacked_layout
        if layout == STORED_LAYOUT:
            if t.dim() != 5:
                raise LayoutError(f"scheduler.step received {what} of shape {tuple(t.shape)}; expected layout "
                                  f"'{layout}'")
            return t
        try:
            return rearrange(t, f"{layout} -> {target}", **self.parts.layout_sizes)
        except Exception as exc:  # einops: a shape that does not fit the declared layout and sizes
            raise LayoutError(f"scheduler.step received {what} of shape {tuple(t.shape)}, which does not fit the "
                              f"layout '{layout}' with sizes {self.parts.layout_sizes}") from exc

    def _branches(self, calls: list[tuple[str, torch.Tensor | None]], batch: int) -> dict[str, torch.Tensor]:
        """The cond / uncond predictions of one step, by the CFG call pattern the adapter declares."""
        outs = [t for _, t in calls if t is not None]
        if not outs:
            return {}
        if self.parts.cfg == "batched":  # one call on [uncond, cond] (diffusers' batched CFG)
            only = outs[-1]
            if only.shape[0] == 2 * batch:
                uncond, cond = only.chunk(2)
                return {"pred_cond": cond, "pred_uncond": uncond}
            return {"pred_cond": only}  # guidance off: one half only
        if len(outs) == 1:  # "sequential": cond first, then uncond; guidance off: one call
            return {"pred_cond": outs[0]}
        return {"pred_cond": outs[-2], "pred_uncond": outs[-1]}

    def _record(self, scheduler: Any, param: Parameterization, model_output: torch.Tensor, timestep: Any,
                sample: torch.Tensor, calls: list[tuple[str, torch.Tensor | None]]) -> None:
        after = getattr(scheduler, "step_index", None)
        idx = None if after is None else int(after) - 1
        first = self.generation_steps == 0
        if first:
            self.planned_steps = _planned_steps(scheduler, idx)
            if self.latent_steps is not None:
                switch = boundary_step(getattr(scheduler, "timesteps", None), idx or 0,
                                       self._attrs.get("boundary_timestep"))
                if self.latent_steps.needs_plan and self.planned_steps is None:
                    raise LayoutError(f"latent_steps={self.latent_steps.spec!r} counts from the planned end, but "
                                      f"{type(scheduler).__name__} has no timesteps to plan with")
                self._chosen = self.latent_steps.resolve(self.planned_steps, switch)
                outside = self.latent_steps.outside(self.planned_steps, switch)
                if outside:
                    warnings.warn(f"latent_probe: latent_steps {outside} select no step of this generation of "
                                  f"{self.planned_steps} planned steps", RuntimeWarning, stacklevel=5)
        keep = self._chosen is None or self.generation_steps in self._chosen
        level = noise_level_at(scheduler, idx, timestep)
        sigma_tensor = None
        if level.flow and idx is not None and isinstance(getattr(scheduler, "sigmas", None), torch.Tensor):
            sigma_tensor = scheduler.sigmas[idx]
        x_t = self._to_stored(sample, "a sample")
        pred = self._to_stored(model_output, "a model_output")
        tensors: dict[str, torch.Tensor] = {}
        if "x_t" in self.capture:
            tensors["x_t"] = x_t
        if "pred" in self.capture:
            tensors["pred"] = pred
        owned = set()
        spaces = {"x_t": x_t, "pred": pred}
        online = () if self.online is None else self.online.spaces
        if {"x0", "eps"} & (set(self.capture) | set(online)):
            x0, eps = estimate_x0_eps(param, x_t, pred, level, sigma_tensor)
            spaces.update(x0=x0, eps=eps)
            for name, t in (("x0", x0), ("eps", eps)):
                if name in self.capture:
                    tensors[name] = t
                    if not _shares_storage(t, sample, model_output):  # ε̂ of ε-prediction *is* the output
                        owned.add(name)
        sums = self.online.step({k: spaces[k] for k in online}) if online else None
        if self.blocks is not None:
            sums = {**(sums or {}), **self.blocks.step(x_t.shape[0])}
        if self.cfg_branches:
            for name, t in self._branches(calls, x_t.shape[0]).items():
                tensors[name] = self._to_stored(t, f"an expert output ({name})")
        expert = calls[-1][0] if calls else "unknown"
        meta = StepMeta(
            index=idx if idx is not None else self.generation_steps,
            timestep=timestep,
            sigma=level.sigma,
            alpha=level.alpha,
            expert=expert,
            guidance_scale=self.parts.guidance_scale(expert),
            generation=self.generation - 1,
            model_calls=len(calls),
        )
        self.steps += 1
        self.generation_steps += 1
        if self.writer is not None:
            attrs = None
            if first:  # what is known only once the generation runs (the rest was written at creation)
                call = jsonable(dict(self.parts.call_args))
                attrs = {k: v for k, v in call.items() if k not in self._attrs}
                attrs.update(parameterization=param.value, capture=list(self.capture),
                             cfg_branches=self.cfg_branches, step_layout=self.parts.step_layout,
                             call_args=call, planned_steps=self.planned_steps,
                             noise_convention=noise_convention(level), latent_shape=list(x_t.shape),
                             source_dtypes=_source_dtypes(x_t, pred, sigma_tensor))
                if self.latent_steps is not None:
                    attrs["latent_steps"] = self.latent_steps.spec
            self.writer.submit(meta, tensors, owned=frozenset(owned), attrs=attrs, sums=sums, keep_latents=keep)
