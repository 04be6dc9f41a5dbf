"""``FrameTruncation``: the DiT denoises only K key latent frames before ``until``, all frames after.

Passed as ``LatentProbe(target, path, intervene=FrameTruncation(keep=3))``. Before ``until`` a forward
pre-hook on each DiT expert keeps only the key frames of the model input (and shrinks what depends on the
frame count: Wan2.2's ``seq_len`` and ``y``, per-token timesteps), and a forward hook expands the
prediction back to all F frames by interpolation along the frame axis at the keys' true positions. The
scheduler therefore always integrates full-size tensors, and the probe records them. With
``positions="true"`` (the default) the key frames keep their true rotary time positions (the adapter says
where the DiT's rope lives: adapters/rope.py). See docs/frame-truncation.md for the assumptions (time
positions, I2V first frame, the VAE's causal frame).

Variants (docs/frame-truncation.md, "Variants"): ``schedule=[(3, 4), (6, 8), (11, 12)]`` grows the key frames
(3 until step 4, then 6 until step 8, 11 until 12, then all; each stage keeps the earlier stages' keys);
``fill="motion"`` aligns neighbouring key frames by phase correlation before blending (``interpolation``);
``renoise=True`` re-noises the filled frames of the latent to the scheduler's σ at the switch (below).

Counters (per attached run): ``frames_seen`` (latent frames each DiT call received), ``calls`` (one
record per call), ``token_steps_full`` / ``token_steps_run`` (Σ over DiT calls of the tokens the call
would have had with all frames / actually had; CFG's two calls per step both count).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ..adapters import rope
from ..adapters.base import TargetParts
from ..hooks import FnHook, HookRegistry, ModelHook
from ..recorder import GenerationRecorder
from ..adapters.dit_calls import CallShape, DitIO, frame0_is_conditioning, is_image_conditioned
from ..frames import FILLS, FillPlan, default_keyframes, resolve_keyframes
from .step_sigma import checked_sigma

__all__ = ["FrameTruncation", "TruncatedCall", "POSITIONS"]

POSITIONS = ("true", "compressed")
FILL_SPACES = ("prediction", "x0")


@dataclass(frozen=True)
class TruncatedCall:
    """One DiT call: the generation's step index, the expert, frames received / in the video, tokens."""

    step: int
    expert: str
    frames: int
    num_frames: int
    tokens: int
    tokens_full: int

    @property
    def truncated(self) -> bool:
        return self.frames < self.num_frames


class FrameTruncation:
    """Run the DiT on key frames only until ``until``; fill the other frames' prediction by interpolation.

    Args:
        keep: number of key frames, evenly spaced including the first and last latent frame
            (``np.linspace(0, F−1, keep).round()``). Default 3 when ``keyframes`` is not given.
        keyframes: explicit latent frame indices instead of ``keep`` (negatives count from the end).
        until: ``"boundary"`` — truncate while the high-noise expert runs (t ≥ boundary; two-expert models
            only); or an int step index — truncate the steps with index < until (0-based, per generation).
        fill: ``"linear"``, ``"nearest"`` or ``"slerp"`` (see ``interpolation``).
        positions: rotary (RoPE) time positions of the key frames in a truncated call. ``"true"`` (default):
            each key frame gets the angles it has in the full-length call (keys 0, 10, 20 of 21 → positions
            0, 10, 20), so the call is the full call with the other frames' tokens left out; refused on entry
            (``TimePositionsError``, one line) for a target whose rope latent_probe does not know.
            ``"compressed"``: positions 0 … K−1, as the DiT derives them from a K-frame input (the
            behaviour before this option; runs without ``positions`` in their ``intervention`` attribute).
        schedule: ``[(keep, until_step), ...]`` a growing key-frame schedule instead of ``keep``/``until``.
        renoise: re-noise the filled frames to the scheduler's σ at the switch (``renoise_seed``: ε's seed;
            default from the generation's initial latent).
        fill_space: ``"prediction"`` (default) fills the DiT's prediction v; ``"x0"`` fills x̂₀ = x_t − σ·v of the
            key frames and returns v = (x_t − x̂₀)/σ on every frame, so each filled frame keeps its own noise
            (flow matching; diffusers targets with a scheduler instance). See docs/frame-truncation.md, "Variants".
    """

    kind = "frame_truncation"

    def __init__(self, keep: int | None = None, *, keyframes: Sequence[int] | None = None,
                 until: str | int | None = None, fill: str = "linear", positions: str = "true",
                 schedule: Sequence[tuple[int, int]] | None = None, renoise: bool = False,
                 renoise_seed: int | None = None, fill_space: str = "prediction") -> None:
        if keep is not None and keyframes is not None:
            raise ValueError("give keep= or keyframes=, not both")
        if schedule is not None:
            if keep is not None or keyframes is not None or until is not None:
                raise ValueError("schedule= replaces keep=, keyframes= and until=: give it alone")
            schedule = _check_schedule(schedule)
            keep = schedule[0][0]
            until = schedule[-1][1]
        until = "boundary" if until is None else until
        if fill_space not in FILL_SPACES:
            raise ValueError(f"fill_space must be one of {FILL_SPACES}, got {fill_space!r}")
        if not isinstance(renoise, bool):
            raise ValueError(f"renoise must be True or False, got {renoise!r}")
        if renoise_seed is not None and (isinstance(renoise_seed, bool) or not isinstance(renoise_seed, int)):
            raise ValueError(f"renoise_seed must be an int, got {renoise_seed!r}")
        if keyframes is None:
            keep = 3 if keep is None else keep
            if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
                raise ValueError(f"keep must be a positive int, got {keep!r}")
        else:
            keyframes = [int(k) for k in keyframes]
            if not keyframes:
                raise ValueError("keyframes is empty")
        if until != "boundary" and (isinstance(until, bool) or not isinstance(until, int) or until < 0):
            raise ValueError(f"until must be 'boundary' or a step index >= 0, got {until!r}")
        if fill not in FILLS:
            raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
        self.keep = keep
        self.keyframes = keyframes
        self.until = until
        self.fill = fill
        self.positions = positions
        self.schedule = schedule
        self.renoise = renoise
        self.renoise_seed = renoise_seed
        self.fill_space = fill_space
        self._reset()

    # ------------------------------------------------------------------ bookkeeping
    def _reset(self) -> None:
        self.calls: list[TruncatedCall] = []
        self.keys_used: list[int] | None = None
        self._pending: dict[int, FillPlan | None] = {}
        self._plans: dict[tuple[int, int], FillPlan] = {}  # (num_frames, schedule stage) → plan
        self._recorder: GenerationRecorder | None = None
        self._truncating: set[str] | None = None  # experts truncated under until="boundary"
        self._last_plan: FillPlan | None = None     # the plan of the latest truncated call (renoise)
        self._renoised: list[dict[str, Any]] = []   # one record per switch that re-noised
        self._noise_key: int | None = None
        self._inputs: dict[int, tuple[Any, Any]] = {}   # fill_space="x0": the call's full latent and timestep

    @property
    def frames_seen(self) -> list[int]:
        """Latent frames each DiT call received, in call order."""
        return [c.frames for c in self.calls]

    @property
    def token_steps_full(self) -> int:
        return sum(c.tokens_full for c in self.calls)

    @property
    def token_steps_run(self) -> int:
        return sum(c.tokens for c in self.calls)

    @property
    def token_steps_skipped_fraction(self) -> float:
        full = self.token_steps_full
        return 0.0 if full == 0 else 1.0 - self.token_steps_run / full

    def describe(self) -> dict[str, Any]:
        """JSON-able description, stored by the probe as the run attribute ``intervention`` (the variants'
        keys only when used, so earlier runs' descriptions are unchanged)."""
        out = {"kind": self.kind, "keep": self.keep, "keyframes": self.keyframes, "until": self.until,
               "fill": self.fill, "positions": self.positions}
        if self.schedule is not None:
            out["schedule"] = [list(stage) for stage in self.schedule]
        if self.renoise:
            out.update(renoise=True, renoise_seed=self.renoise_seed)
        if self.fill_space != "prediction":
            out["fill_space"] = self.fill_space
        return out

    def summary(self) -> dict[str, Any]:
        """Counters after a run: keys, calls truncated / total, token-steps."""
        return {**self.describe(), "keys_used": self.keys_used, "dit_calls": len(self.calls),
                "truncated_calls": sum(c.truncated for c in self.calls),
                "token_steps_full": self.token_steps_full, "token_steps_run": self.token_steps_run,
                "token_steps_skipped_fraction": self.token_steps_skipped_fraction,
                **({"renoised": self._renoised} if self.renoise else {})}

    def keys_for(self, num_frames: int, stage: int = 0) -> list[int]:
        """The key latent frames of a video of ``num_frames`` latent frames (at ``stage`` of a schedule: the union
        of the evenly spaced keys of this stage and every earlier one, so a key frame stays a key)."""
        if self.keyframes is not None:
            return resolve_keyframes(self.keyframes, num_frames)
        if self.schedule is not None:
            keys: set[int] = set()
            for k, _ in self.schedule[: stage + 1]:
                keys.update(default_keyframes(num_frames, k))
            return sorted(keys)
        return default_keyframes(num_frames, self.keep)

    def _plan(self, num_frames: int, stage: int = 0) -> FillPlan:
        if (num_frames, stage) not in self._plans:
            self._plans[(num_frames, stage)] = FillPlan(self.keys_for(num_frames, stage), num_frames, self.fill)
        return self._plans[(num_frames, stage)]

    # ------------------------------------------------------------------ attach
    def attach(self, registry: HookRegistry, parts: TargetParts, recorder: GenerationRecorder | None) -> None:
        """Register a hook on every expert of ``parts`` through ``registry`` (the probe's).

        ``recorder.step_index`` (the probe's generation recorder) gives the step index for an int ``until``; without
        a recorder (a rank that records nothing) every call counts as step 0.
        Raises ``ValueError`` for ``until="boundary"`` on a model without a high- and a low-noise expert,
        for explicit key frames without frame 0 on an image-to-video model, and (``TimePositionsError``) for
        ``positions="true"`` where the adapter knows no way to give key frames their true time positions.
        """
        self._reset()
        self._recorder = recorder
        self._truncating = self.validate(parts)
        for name, module in parts.experts.items():
            io = DitIO(module, parts.dit_calls)
            registry.add(module, FnHook(self._pre_hook(name, io), self._post_hook(io, parts)))
            if self.positions == "true":
                rope.install(registry, parts.rope, module, self._keys_now(module))
        if self.renoise:   # added before the probe's own listener: outermost, it sees step's result last
            registry.add_call(parts.scheduler, "step", _Renoise(self, parts))

    def validate(self, parts: TargetParts) -> set[str] | None:
        """Check this truncation can run on ``parts`` (a ``TargetParts``) without attaching anything.

        Returns the experts truncated under ``until="boundary"`` (None for an int ``until``).
        """
        if parts.dit_calls is None:
            family = parts.attrs.get("pipeline_family", parts.family)
            raise ValueError(f"frame truncation cannot slice the DiT calls of this {family} target: "
                             + (parts.dit_calls_refused or "latent_probe has not verified where its DiT input keeps "
                                                           "the frame axis"))
        for name, module in parts.experts.items():
            DitIO(module, parts.dit_calls)  # temporal patch size 1
            if (self.keyframes is not None and 0 not in resolve_keyframes(self.keyframes, 10**9)
                    and is_image_conditioned(module, parts.dit_calls)):
                raise ValueError(f"{name} is an image-to-video expert: frame 0 carries the image and must be a "
                                 f"key frame; keyframes={self.keyframes} lacks 0")
        truncating = self._boundary_experts(parts) if self.until == "boundary" else None
        if self.positions == "true":
            self._check_positions(parts)
        if self.renoise:
            _check_renoise_scheduler(parts)
        if self.fill_space == "x0":
            _check_x0_space(parts)
        return truncating

    @staticmethod
    def _check_positions(parts: TargetParts) -> None:
        """Raise ``TimePositionsError`` (one line) unless every expert's rope is known to the adapter."""
        for name, module in parts.experts.items():
            why = (parts.rope_refused if parts.rope is None else None) or rope.refusal(parts.rope, module)
            if why is not None:
                family = parts.attrs.get("pipeline_family", parts.family)
                raise rope.TimePositionsError(
                    f"positions='true' is not available for this {family} target ({name}): {why}; pass "
                    "FrameTruncation(..., positions='compressed') to give key frames positions 0..K-1")

    @staticmethod
    def _boundary_experts(parts: TargetParts) -> set[str]:
        high = parts.high_noise_expert
        have = set(parts.experts)
        if high is None or parts.attrs.get("boundary_timestep") is None:
            raise ValueError(
                f"until='boundary' needs a two-expert model (a high-noise expert, then a low-noise expert after "
                f"the boundary timestep); this {parts.family} target has experts {sorted(have)}"
                f"{'' if parts.attrs.get('boundary_timestep') is not None else ' and no boundary'}. "
                "Pass until=<step index> instead, e.g. FrameTruncation(keep=3, until=10) to truncate steps 0-9")
        return {high}

    # ------------------------------------------------------------------ hooks
    def _step_index(self) -> int:
        """0-based step of the current generation whose DiT calls are in flight: the recorder's."""
        return 0 if self._recorder is None else self._recorder.step_index

    def _should_truncate(self, expert: str, step: int) -> bool:
        if self.until == "boundary":
            return expert in (self._truncating or ())
        return step < int(self.until)

    def _stage(self, step: int) -> int:
        """The schedule stage of ``step`` (0 without a schedule)."""
        if self.schedule is None:
            return 0
        return next(i for i, (_, until) in enumerate(self.schedule) if step < until)

    def _pre_hook(self, expert: str, io: DitIO) -> Callable:
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            shape = io.shape(args, kwargs)
            t = io.timestep(args, kwargs)
            step = self._step_index()
            plan = None
            if self._should_truncate(expert, step):
                plan = self._plan(shape.frames, self._stage(step))
                self.keys_used = plan.keys
                self._last_plan = plan
                if 0 not in plan.keys and (io.conditioned(args, kwargs) or frame0_is_conditioning(t, shape)):
                    raise ValueError(f"frame 0 is image conditioning in this call and must be a key frame; "
                                     f"keys {plan.keys} lack it")
            self._pending[id(module)] = plan
            if plan is not None and self.fill_space == "x0":
                self._inputs[id(module)] = (io.latent(args, kwargs), t)
            self._count(step, expert, shape, shape.frames if plan is None else len(plan.keys))
            if plan is None:
                return None
            return io.take_frames(args, kwargs, plan, shape)

        return hook

    def _count(self, step: int, expert: str, shape: CallShape, frames: int) -> None:
        self.calls.append(TruncatedCall(step=step, expert=expert, frames=frames, num_frames=shape.frames,
                                        tokens=shape.tokens(frames), tokens_full=shape.tokens()))

    def _keys_now(self, module: torch.nn.Module) -> Callable[[], tuple[list[int], int] | None]:
        """(keys, F) of ``module``'s call in flight while it is truncated, else None (read by the rope hooks)."""

        def now() -> tuple[list[int], int] | None:
            plan = self._pending.get(id(module))
            return None if plan is None else (plan.keys, plan.num_frames)

        return now

    def _post_hook(self, io: DitIO, parts: TargetParts) -> Callable:
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            plan = self._pending.pop(id(module), None)
            if plan is None:
                return None
            if self.fill_space == "x0":
                x_t, t = self._inputs.pop(id(module))
                return io.fill_frames(output, _X0Fill(plan, x_t, _call_sigma(parts, t)))
            return io.fill_frames(output, plan)

        return hook

    # ------------------------------------------------------------------ renoise at the switch
    def _switches_after(self, parts: TargetParts, scheduler: Any) -> bool:
        """True when the step just taken was truncated and the next one will not be (the switch)."""
        if not self.calls or not self.calls[-1].truncated:
            return False
        nxt = int(scheduler.step_index)
        if nxt >= len(scheduler.timesteps):
            return False   # truncated to the end: no switch
        if self.until == "boundary":
            return float(scheduler.timesteps[nxt]) < float(parts.attrs["boundary_timestep"])
        return nxt >= int(self.until)

    def _renoised_output(self, out: Any, sched: Any, plan: FillPlan) -> Any:
        """``step``'s result with the filled frames set to (1 − σ)·x̂₀ + σ·ε at the next step's σ; the solver's
        multistep history is cleared so its next step starts first-order from the re-noised latent."""
        prev = out[0] if isinstance(out, tuple) else out.prev_sample
        x0 = sched.model_outputs[-1]          # the scheduler's own x̂₀ of this step
        i = int(sched.step_index)
        sigma = float(sched.sigmas[i])
        filled = [f for f in range(plan.num_frames) if f not in set(plan.keys)]
        if filled:
            g = torch.Generator("cpu").manual_seed(int(self._noise_key or 0))
            eps = torch.randn(tuple(prev.shape), generator=g, dtype=torch.float32).to(prev.device, prev.dtype)
            idx = torch.as_tensor(filled, device=prev.device)
            new = prev.clone()
            mixed = (1 - sigma) * x0.index_select(-3, idx).to(prev.dtype) + sigma * eps.index_select(-3, idx)
            new.index_copy_(-3, idx, mixed)
            prev = new
        sched.last_sample = None     # no corrector on the next step: it would pull back to the old trajectory
        sched.lower_order_nums = 0   # the next step is first-order (a fresh start from the re-noised latent)
        self._renoised.append({"step": i - 1, "sigma": sigma, "frames": filled, "seed": int(self._noise_key or 0)})
        if isinstance(out, tuple):
            return (prev, *out[1:])
        out.prev_sample = prev
        return out

    def __repr__(self) -> str:
        what = f"keep={self.keep}" if self.keyframes is None else f"keyframes={self.keyframes}"
        if self.schedule is not None:
            what = f"schedule={[tuple(st) for st in self.schedule]}"
        extra = f", renoise=True, renoise_seed={self.renoise_seed!r}" if self.renoise else ""
        return (f"FrameTruncation({what}, until={self.until!r}, fill={self.fill!r}, positions={self.positions!r}"
                f"{extra})")


class _Renoise(ModelHook):
    """Around ``scheduler.step`` (added before the probe's own hook: outermost, it sees step's result last): at a
    generation's first step its noise key; after the switch step, the filled frames re-noised."""

    def __init__(self, ft: FrameTruncation, parts: TargetParts) -> None:
        self.ft, self.parts = ft, parts

    def pre_forward(self, site: Any, args: tuple, kwargs: dict) -> None:
        ft, sched = self.ft, self.parts.scheduler
        if sched.step_index in (None, 0):   # a new generation: its noise key
            sample = kwargs.get("sample", args[2] if len(args) > 2 else None)
            ft._noise_key = _noise_key(sample) if ft.renoise_seed is None else int(ft.renoise_seed)
        return None

    def post_forward(self, site: Any, args: tuple, kwargs: dict, output: Any) -> Any:
        ft, sched = self.ft, self.parts.scheduler
        if not ft._switches_after(self.parts, sched) or ft._last_plan is None:
            return None
        return ft._renoised_output(output, sched, ft._last_plan)


class _X0Fill:
    """Fill in x̂₀ space: key predictions v_K → x̂₀_K = x_t,K − σ·v_K → x̂₀ = fill(x̂₀_K) → v = (x_t − x̂₀)/σ on
    every frame; key frames keep the DiT's own v bit for bit (flow matching, x_t = (1 − σ)x₀ + σε, v = ε − x₀)."""

    def __init__(self, plan: FillPlan, x_t: torch.Tensor, sigma: float) -> None:
        self.plan, self.x_t, self.sigma = plan, x_t, sigma

    def __call__(self, v_keys: torch.Tensor) -> torch.Tensor:
        work = torch.promote_types(v_keys.dtype, torch.float32)
        x = self.x_t.to(work)
        idx = self.plan.key_index(v_keys.device)
        x0_keys = x.index_select(-3, idx) - self.sigma * v_keys.to(work)
        v = (x - self.plan(x0_keys)) / self.sigma
        v = v.to(v_keys.dtype)
        v.index_copy_(-3, idx, v_keys)
        return v


def _check_x0_space(parts: TargetParts) -> None:
    """fill_space='x0' needs the σ of each call: diffusers' flow-matching scheduler instance (one line if not)."""
    sched = parts.scheduler
    cfg = getattr(sched, "config", None)
    flow = getattr(cfg, "prediction_type", None) == "flow_prediction" or getattr(cfg, "use_flow_sigmas", False) \
        or type(sched).__name__.startswith("FlowMatch")
    if sched is None or getattr(sched, "sigmas", None) is None or not flow:  # None: created inside generation
        raise ValueError("fill_space='x0' needs the scheduler's σ at each DiT call: a diffusers pipeline with a "
                         "flow-matching scheduler instance (this target's scheduler is "
                         f"{type(sched).__name__ if sched is not None else 'created inside generation'})")


def _call_sigma(parts: TargetParts, t: Any) -> float:
    """σ of the step in progress (the scheduler's own), checked against the call's timestep t ≈ σ·T."""
    sched = parts.scheduler
    i = sched.step_index if sched.step_index is not None else (getattr(sched, "begin_index", None) or 0)
    try:
        return checked_sigma(sched, i, t)
    except ValueError as exc:
        raise ValueError(f"fill_space='x0': {exc}") from None


def _check_schedule(schedule: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """[(keep, until step), ...] with keep and until strictly increasing, keep >= 1, until >= 1."""
    try:
        stages = [(int(k), int(u)) for k, u in schedule]
    except (TypeError, ValueError):
        raise ValueError(f"schedule must be [(keep, until_step), ...], got {schedule!r}") from None
    if not stages:
        raise ValueError("schedule is empty")
    for (k0, u0), (k1, u1) in zip(stages, stages[1:]):
        if not (k1 > k0 and u1 > u0):
            raise ValueError(f"schedule {stages}: keep and until must both grow from stage to stage")
    if stages[0][0] < 1 or stages[0][1] < 1:
        raise ValueError(f"schedule {stages}: keep and until must be >= 1")
    return stages


def _check_renoise_scheduler(parts: TargetParts) -> None:
    """renoise needs a diffusers multistep UniPC scheduler predicting x̂₀ on flow sigmas (one line if not)."""
    sched = parts.scheduler
    name = type(sched).__name__
    cfg = getattr(sched, "config", None)
    ok = (sched is not None and name == "UniPCMultistepScheduler" and getattr(sched, "predict_x0", False)
          and getattr(cfg, "prediction_type", None) == "flow_prediction")
    if not ok:
        raise ValueError(f"renoise=True needs diffusers' UniPCMultistepScheduler with flow_prediction (it reads the "
                         f"scheduler's own x̂₀ and restarts its multistep history); this target's scheduler is "
                         f"{name if sched is not None else 'created inside generation (Wan2.2 repository)'}")


def _noise_key(sample: Any) -> int:
    """A seed from the generation's initial latent (its first 64 values): distinct clips, distinct ε."""
    import zlib

    if not isinstance(sample, torch.Tensor):
        return 0
    head = sample.detach().reshape(-1)[:64].float().cpu().numpy().tobytes()
    return zlib.crc32(head)

