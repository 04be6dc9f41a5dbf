"""Per step: what the DiT experts returned, what ``step`` received, and what follows from it.

Forward hooks on each expert note which expert ran and (with ``cfg_branches``) keep its outputs until
the scheduler's ``step`` is called; the intercepted ``step`` then builds one record:

* ``x_t``   the latent ``step`` received, [B, C, F, H, W] (the model saw it, cast to its dtype);
* ``pred``  the guided model output ``step`` received;
* ``x0``, ``eps``  from the parameterisation of the scheduler's configuration;
* ``pred_cond``, ``pred_uncond``  the expert's outputs of that step (cond first, as Wan2.2 and diffusers
  call them; one call with a doubled batch is split as diffusers' batched CFG: uncond, cond).

σ is read at the index the scheduler used for this step (``step_index − 1`` once ``step`` returned).

Each generation is its own run (its own writer): the generation recorder (recorder.py) owns them — when one begins
and ends, its writer, its end state; capture subscribes to it and tells it of each step.
"""

from __future__ import annotations

import inspect
import threading
import warnings
from typing import Any

import torch
from einops import rearrange

from .adapters.base import TargetParts
from .adapters._util import jsonable
from .hooks import ModelHook, ThreadStack, static_lookup
from .latent_steps import LatentSteps, boundary_step
from .parameterization import (
    Parameterization,
    UnknownParameterizationError,
    estimate_x0_eps,
    noise_convention,
    noise_level_at,
    parameterization_of,
)
from .recorder import GenerationListener, GenerationRecorder
from .store.writer import HiddenRows, StepMeta
from .errors import LatentProbeError

__all__ = ["StepCapture", "LayoutError", "CAPTURABLE", "check_step_signature"]

CAPTURABLE = ("x_t", "pred", "x0", "eps")
BRANCHES = ("pred_cond", "pred_uncond")
STORED_LAYOUT = "b c f h w"


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


class StepCapture(GenerationListener):
    """Turns hook events and ``step`` calls into records, handed to the writer of the recorder's generation.

    ``recorder`` (recorder.GenerationRecorder) owns the generations and their writers; capture subscribes to it
    (a generation begins: per-generation state is reset) and reports each step to it. ``online``
    (metrics.online.OnlineSums) computes each step's metric sums on the tensors' device; ``latent_steps`` chooses
    the steps whose latents are stored (None: every step); ``blocks`` (block_probe.BlockProbe, a subscriber of the
    recorder too): its sums travel with the step.
    """

    def __init__(self, parts: TargetParts, recorder: GenerationRecorder, capture: tuple[str, ...],
                 cfg_branches: bool, parameterization: Parameterization | None, attrs: dict[str, Any],
                 online: Any = None, latent_steps: LatentSteps | None = None, blocks: Any = None) -> None:
        self.parts = parts
        self.recorder = recorder
        self.capture = capture
        self.cfg_branches = cfg_branches
        self._fixed_param = parameterization
        self.online = online
        self.blocks = blocks
        self.latent_steps = None if latent_steps is None or latent_steps.all else latent_steps
        self._chosen: Any = None  # the current generation's resolved latent_steps
        self._params: dict[int, Parameterization] = {}
        self._attrs = attrs
        self._calls: list[tuple[str, torch.Tensor | None]] = []
        self._local = threading.local()
        recorder.subscribe(self)

    @property
    def steps(self) -> int:
        """Steps recorded since the probe attached, all generations together."""
        return self.recorder.steps

    def on_begin(self, recorder: GenerationRecorder, explicit: bool) -> None:
        """A generation begins: no step chosen yet, the online sums start over; ``explicit`` (a generation call
        was entered): DiT calls made before it belong to no step."""
        self._chosen = None
        if self.online is not None:
            self.online.reset()
        if explicit:
            self._calls = []

    # ------------------------------------------------------------------ hooks on experts and on step
    def expert_hook(self, expert: str) -> ModelHook:
        """The hook after each DiT call of ``expert``: which expert ran (and its output, with cfg_branches)."""
        return _ExpertCall(self, expert)

    def step_hook(self, scheduler: Any = None, scoped: bool = False) -> ModelHook:
        """The hook on ``scheduler.step`` (an instance's); ``scheduler=None``: on ``SchedulerClass.step``, called
        with the scheduler first; ``scoped``: record only calls made inside this probe's own generation call (two
        targets in two threads share the class)."""
        return _Step(self, scheduler, scoped)

    def parameterization_for(self, scheduler: Any) -> Parameterization:
        if self._fixed_param is not None:
            return self._fixed_param
        key = id(scheduler)
        if key not in self._params:
            self._params[key] = parameterization_of(scheduler)
        return self._params[key]

    def step_begins(self, scheduler: Any, args: tuple, kwargs: dict) -> tuple | None:
        """Before a ``step`` call (the outermost): what its record needs, or None when it is not recorded."""
        rec = self.recorder
        rec.step_called()
        if rec.stopped:
            if self.blocks is not None:
                self.blocks.discard()
            return None
        try:
            model_output, timestep, sample = _step_args(scheduler, args, kwargs)
            param = self.parameterization_for(scheduler)
        except LayoutError as exc:
            self._stop(exc)
            return None
        return scheduler, param, model_output, timestep, sample

    def step_ends(self, frame: tuple) -> None:
        """After the ``step`` call ``frame`` came from returned: its record."""
        calls, self._calls = self._calls, []
        scheduler, param, model_output, timestep, sample = frame
        try:
            self._record(scheduler, param, model_output, timestep, sample, calls)
        except (LayoutError, UnknownParameterizationError) as exc:
            self._stop(exc)

    def _stop(self, exc: Exception) -> None:
        """Stop recording (never the generation) when a step cannot be recorded exactly; the run says why."""
        rec = self.recorder
        if self.blocks is not None:
            self.blocks.discard()  # hidden states staged for this step go back to the writer
        if not rec.stopped:
            rec.stopped = f"recording stopped at step {rec.generation_steps}: {exc}"
            warnings.warn(f"latent_probe: {rec.stopped}; the generation goes on", RuntimeWarning, stacklevel=6)

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
        rec = self.recorder
        after = getattr(scheduler, "step_index", None)
        idx = None if after is None else int(after) - 1
        first = rec.generation_steps == 0
        if first:
            rec.planned_steps = _planned_steps(scheduler, idx)
            switch = boundary_step(getattr(scheduler, "timesteps", None), idx or 0,
                                   self._attrs.get("boundary_timestep"))
            if self.blocks is not None:
                self.blocks.resolve_hidden(rec.planned_steps, switch)  # block_steps=: refused here when outside
            if self.latent_steps is not None:
                if self.latent_steps.needs_plan and rec.planned_steps is None:
                    raise LayoutError(f"latent_steps={self.latent_steps.spec!r} counts from the planned end, but "
                                      f"{type(scheduler).__name__} has no timesteps to plan with")
                self._chosen = self.latent_steps.resolve(rec.planned_steps, switch)
                outside = self.latent_steps.outside(rec.planned_steps, switch)
                if outside:
                    warnings.warn(f"latent_probe: latent_steps {outside} select no step of this generation of "
                                  f"{rec.planned_steps} planned steps", RuntimeWarning, stacklevel=5)
        keep = self._chosen is None or rec.generation_steps in self._chosen
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
        hidden = None
        if self.blocks is not None:
            sums = {**(sums or {}), **self.blocks.step(x_t.shape[0])}
            if self.blocks.hidden_plan is not None:
                shape, count, rows, keep_hidden = self.blocks.hidden_plan
                hidden = HiddenRows(shape, count, rows, keep_hidden)
        if self.cfg_branches:
            for name, t in self._branches(calls, x_t.shape[0]).items():
                tensors[name] = self._to_stored(t, f"an expert output ({name})")
        expert = calls[-1][0] if calls else "unknown"
        meta = StepMeta(
            index=idx if idx is not None else rec.generation_steps,
            timestep=timestep,
            sigma=level.sigma,
            alpha=level.alpha,
            expert=expert,
            guidance_scale=self.parts.guidance_scale(expert),
            generation=rec.generation - 1,
            model_calls=len(calls),
        )
        rec.step_recorded()
        writer: Any = rec.writer  # store.writer.RunWriter
        if writer is not None:
            attrs = None
            if first:  # what is known only once the generation runs (the rest was written at creation)
                call = jsonable(dict(self.parts.call_args))
                attrs = {k: v for k, v in call.items() if k not in self._attrs}
                attrs.update(parameterization=param.value, capture=list(self.capture),
                             cfg_branches=self.cfg_branches, step_layout=self.parts.step_layout,
                             call_args=call, planned_steps=rec.planned_steps,
                             noise_convention=noise_convention(level), latent_shape=list(x_t.shape),
                             source_dtypes=_source_dtypes(x_t, pred, sigma_tensor))
                if self.latent_steps is not None:
                    attrs["latent_steps"] = self.latent_steps.spec
            writer.submit(meta, tensors, owned=frozenset(owned), attrs=attrs, sums=sums, keep_latents=keep,
                          hidden=hidden)


class _ExpertCall(ModelHook):
    """After a DiT call of one expert: note it (and keep its output with cfg_branches) until ``step``."""

    def __init__(self, cap: StepCapture, expert: str) -> None:
        self.cap, self.expert = cap, expert

    def post_forward(self, site: Any, args: tuple, kwargs: dict, output: Any) -> None:
        cap = self.cap
        cap._calls.append((self.expert, cap.parts.dit_output(output) if cap.cfg_branches else None))
        return None


class _Step(ModelHook):
    """Around ``step``: the generation's bookkeeping before it, the record after it. A step that calls ``step``
    is recorded once (the outer call); per thread, a stack of the calls in flight (None: not recorded)."""

    def __init__(self, cap: StepCapture, scheduler: Any, scoped: bool) -> None:
        self.cap, self.scheduler, self.scoped = cap, scheduler, scoped
        self._local = ThreadStack()  # per call in flight: its record's makings, or None (not recorded)

    def pre_forward(self, site: Any, args: tuple, kwargs: dict) -> None:
        stack = self._local.stack
        scheduler = self.scheduler
        if scheduler is None:  # class-level: the scheduler comes first
            scheduler, args = args[0], args[1:]
            if self.scoped and not self.cap.recorder.in_scope():
                stack.append(None)
                return None
        if any(frame is not None for frame in stack):  # a step inside a recorded step: the outer one only
            stack.append(None)
            return None
        stack.append(self.cap.step_begins(scheduler, args, kwargs))  # may raise: nothing pushed, step not called
        return None

    def post_forward(self, site: Any, args: tuple, kwargs: dict, output: Any) -> None:
        frame = self._local.stack.pop()
        if frame is not None:
            self._local.ending = True  # the record may raise the writer's error: on_error must not pop again
            self.cap.step_ends(frame)
            self._local.ending = False
        return None

    def on_error(self, site: Any, exc: BaseException) -> None:
        if getattr(self._local, "ending", False):
            self._local.ending = False
            return
        self._local.stack.pop()
