"""What the model predicts, and how to turn a prediction into x̂₀ and ε̂.

Every supported schedule writes the noisy latent as x_t = α·x₀ + σ·ε:

* flow matching (Wan2.x):   α = 1 − σ, σ ∈ [0, 1]; the model predicts v = ε − x₀,
  so x̂₀ = x_t − σ·v and ε̂ = x_t + (1 − σ)·v.
* variance preserving (DDPM family): α = √ᾱ, σ = √(1 − ᾱ); the model predicts ε, v = α·ε − σ·x₀,
  or x₀ itself ("sample").

The parameterisation is read from the scheduler's configuration (``prediction_type``, ``use_flow_sigmas``,
the class being a flow-matching scheduler). Anything else is an :class:`UnknownParameterizationError`:
a wrong guess here silently corrupts every x̂₀ downstream.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any

import torch
from .errors import LatentProbeError

__all__ = [
    "Parameterization",
    "NoiseLevel",
    "UnknownParameterizationError",
    "parameterization_of",
    "noise_level_at",
    "estimate_x0_eps",
    "noise_convention",
    "recorded_level",
    "NOISE_CONVENTIONS",
    "SchedulerRule",
    "UnverifiedSchedulerError",
    "register_scheduler",
    "scheduler_rule",
    "check_scheduler",
]


class UnknownParameterizationError(LatentProbeError, ValueError):
    """The scheduler's configuration does not say what the model predicts."""


class Parameterization(str, enum.Enum):
    FLOW = "flow_prediction"
    EPSILON = "epsilon"
    V = "v_prediction"
    SAMPLE = "sample"


@dataclass(frozen=True)
class NoiseLevel:
    """x_t = alpha·x₀ + sigma·ε at one step, for the x_t ``step`` receives.

    ``inverted``: a flow scheduler whose own σ table runs upward (diffusers' ``invert_sigmas=True``, Mochi):
    its σ is 1 − sigma and the model predicts x₀ − ε. ``k_diffusion``: an Euler-type scheduler whose
    ``step`` receives the unscaled x = x₀ + σ·ε (the model saw x/√(σ²+1)); alpha is then 1."""

    alpha: float
    sigma: float
    flow: bool
    inverted: bool = False
    k_diffusion: bool = False


# How a run's stored (alpha, sigma) relate to the x_t that step received (the root attribute noise_convention).
NOISE_CONVENTIONS = ("flow", "flow_inverted", "k_diffusion", "variance_preserving")


def noise_convention(level: NoiseLevel) -> str:
    """The name recorded in a run file for ``level``'s convention."""
    if level.inverted:
        return "flow_inverted"
    if level.flow:
        return "flow"
    return "k_diffusion" if level.k_diffusion else "variance_preserving"


def recorded_level(convention: str, alpha: float, sigma: float) -> NoiseLevel:
    """The :class:`NoiseLevel` of a recorded step from its stored alpha and sigma (as :func:`noise_level_at` made
    them) and the run's ``noise_convention``; raises UnknownParameterizationError for another name."""
    if convention not in NOISE_CONVENTIONS:
        raise UnknownParameterizationError(f"noise convention {convention!r} is not one of {NOISE_CONVENTIONS}")
    return NoiseLevel(alpha=float(alpha), sigma=float(sigma), flow=convention.startswith("flow"),
                      inverted=convention == "flow_inverted", k_diffusion=convention == "k_diffusion")


class UnverifiedSchedulerError(UnknownParameterizationError):
    """A scheduler class whose σ convention and x̂₀ rule latent_probe has not verified against its own x̂₀."""


@dataclass(frozen=True)
class SchedulerRule:
    """How one scheduler class defines the noise level of the sample its ``step`` receives, read from its source.

    ``sigma``: where the σ of that sample is: ``"index"`` — ``sigmas[i]``, i the ``step_index`` the call used;
    ``"kdpm2"`` — ``sigmas[i]`` on a first-order call, ``sigmas_interpol[i]`` on a second-order one (KDPM2);
    ``"kdpm2_ancestral"`` — the same with ``sigmas_interpol[i - 1]`` (KDPM2-ancestral); ``"timestep"`` —
    ``alphas_cumprod[timestep]`` (no σ table). ``k_diffusion``: ``step`` receives the unscaled x = x₀ + σ·ε (the
    model saw x/√(σ²+1)). Multistep solvers (``"index"`` without k_diffusion) keep σ_k = √((1−ᾱ)/ᾱ), or flow σ
    when their configuration says so (``use_flow_sigmas`` / ``prediction_type="flow_prediction"``)."""

    sigma: str = "index"
    k_diffusion: bool = False


_D = "diffusers.schedulers."
_K = SchedulerRule("index", k_diffusion=True)
# (module, class name) -> rule, for every scheduler a supported pipeline accepts (diffusers'
# KarrasDiffusionSchedulers, the flow-matching ones, CogVideoX's, Wan2.2's own), each checked by
# tests/test_schedulers.py against the scheduler's own x̂₀ (pred_original_sample / model_outputs).
VERIFIED_SCHEDULERS: dict[tuple[str, str], SchedulerRule] = {
    (_D + "scheduling_ddim", "DDIMScheduler"): SchedulerRule("timestep"),
    (_D + "scheduling_ddpm", "DDPMScheduler"): SchedulerRule("timestep"),
    (_D + "scheduling_ddim_cogvideox", "CogVideoXDDIMScheduler"): SchedulerRule("timestep"),
    (_D + "scheduling_dpm_cogvideox", "CogVideoXDPMScheduler"): SchedulerRule("timestep"),
    (_D + "scheduling_lms_discrete", "LMSDiscreteScheduler"): _K,
    (_D + "scheduling_euler_discrete", "EulerDiscreteScheduler"): _K,
    (_D + "scheduling_euler_ancestral_discrete", "EulerAncestralDiscreteScheduler"): _K,
    (_D + "scheduling_heun_discrete", "HeunDiscreteScheduler"): _K,  # both orders use sigmas[step_index]
    (_D + "scheduling_k_dpm_2_discrete", "KDPM2DiscreteScheduler"): SchedulerRule("kdpm2", k_diffusion=True),
    (_D + "scheduling_k_dpm_2_ancestral_discrete", "KDPM2AncestralDiscreteScheduler"):
        SchedulerRule("kdpm2_ancestral", k_diffusion=True),
    (_D + "scheduling_dpmsolver_multistep", "DPMSolverMultistepScheduler"): SchedulerRule(),
    (_D + "scheduling_dpmsolver_singlestep", "DPMSolverSinglestepScheduler"): SchedulerRule(),
    (_D + "scheduling_deis_multistep", "DEISMultistepScheduler"): SchedulerRule(),
    (_D + "scheduling_unipc_multistep", "UniPCMultistepScheduler"): SchedulerRule(),
    (_D + "scheduling_flow_match_euler_discrete", "FlowMatchEulerDiscreteScheduler"): SchedulerRule(),
    (_D + "scheduling_flow_match_heun_discrete", "FlowMatchHeunDiscreteScheduler"): SchedulerRule(),
    (_D + "scheduling_flow_match_lcm", "FlowMatchLCMScheduler"): SchedulerRule(),
    ("wan.utils.fm_solvers_unipc", "FlowUniPCMultistepScheduler"): SchedulerRule(),  # Wan2.2's own
    ("wan.utils.fm_solvers", "FlowDPMSolverMultistepScheduler"): SchedulerRule(),
}
# accepted by a supported pipeline, but not recordable exactly (yet): refused with the reason
REFUSED_SCHEDULERS: dict[str, str] = {
    "PNDMScheduler": "its PRK/PLMS steps keep no x̂₀ to verify the noise level of the sample they receive against",
    "EDMEulerScheduler": "EDM preconditioning (c_skip, c_out with sigma_data) is none of the conventions latent_probe "
                         "computes x̂₀ for",
    "DPMSolverSDEScheduler": "not verified (its Brownian-tree noise needs torchsde, which the tests do not install)",
}
_REGISTERED: dict[type, SchedulerRule] = {}


def register_scheduler(cls: type, rule: SchedulerRule) -> None:
    """Declare the σ convention of your own scheduler class (exact class, not its subclasses): you state what
    latent_probe would otherwise have to guess. Classes latent_probe ships rules for cannot be redefined."""
    if not isinstance(cls, type) or not isinstance(rule, SchedulerRule):
        raise TypeError("register_scheduler(cls, SchedulerRule(...)) takes a class and a SchedulerRule")
    if rule.sigma not in ("index", "kdpm2", "kdpm2_ancestral", "timestep"):
        raise ValueError(f"SchedulerRule.sigma {rule.sigma!r} is not one of index, kdpm2, kdpm2_ancestral, timestep")
    if _shipped_rule(cls) is not None:
        raise ValueError(f"{cls.__name__} is verified by latent_probe already")
    _REGISTERED[cls] = rule


def _shipped_rule(cls: type) -> SchedulerRule | None:
    module, name = getattr(cls, "__module__", "") or "", cls.__qualname__
    for (mod, cname), rule in VERIFIED_SCHEDULERS.items():
        if name == cname and (module == mod or module.endswith("." + mod)):
            return rule
    return None


def scheduler_rule(cls: type) -> SchedulerRule:
    """The verified rule of scheduler class ``cls`` (exactly that class: a subclass may redefine ``step``); raises
    UnverifiedSchedulerError naming the class otherwise."""
    rule = _REGISTERED.get(cls) or _shipped_rule(cls)
    if rule is not None:
        return rule
    name = cls.__name__
    why = REFUSED_SCHEDULERS.get(name) if f"{cls.__module__}".startswith("diffusers.") else None
    raise UnverifiedSchedulerError(
        f"scheduler {name} ({cls.__module__}) is not verified by latent_probe"
        + (f": {why}" if why else "; its σ convention and x̂₀ rule would be a guess")
        + ". Verified: " + ", ".join(sorted({n for _, n in VERIFIED_SCHEDULERS}))
        + " (latent_probe.parameterization.register_scheduler declares your own class's)")


def _config(scheduler: Any) -> dict:
    cfg = getattr(scheduler, "config", None)
    if cfg is None:
        return {}
    if isinstance(cfg, dict):
        return dict(cfg)
    return {k: getattr(cfg, k) for k in dir(cfg) if not k.startswith("_")}


def is_flow_schedule(scheduler: Any) -> bool:
    """True when the scheduler's noise schedule is flow matching (α = 1 − σ)."""
    cfg = _config(scheduler)
    if cfg.get("use_flow_sigmas") or cfg.get("prediction_type") == "flow_prediction":
        return True
    return type(scheduler).__name__.startswith(("FlowMatch", "Flow"))


def parameterization_of(scheduler: Any) -> Parameterization:
    """Read the prediction type from ``scheduler.config``; raise if it is missing or unknown."""
    cfg = _config(scheduler)
    name = type(scheduler).__name__
    pred = cfg.get("prediction_type")
    if pred is None:
        if name.startswith("FlowMatch"):
            # diffusers' FlowMatch* schedulers have no prediction_type: they only do velocity.
            return Parameterization.FLOW
        raise UnknownParameterizationError(
            f"scheduler {name} has no config.prediction_type; pass parameterization= to LatentProbe "
            f"(one of {[p.value for p in Parameterization]})"
        )
    try:
        return Parameterization(pred)
    except ValueError:
        raise UnknownParameterizationError(
            f"scheduler {name} has prediction_type={pred!r}, which latent_probe does not know "
            f"(known: {[p.value for p in Parameterization]})"
        ) from None


def _scalar(x: Any) -> float:
    if isinstance(x, torch.Tensor):
        return float(x.detach().to("cpu", torch.float64))
    return float(x)


def check_scheduler(scheduler: Any) -> SchedulerRule:
    """The rule of ``scheduler``'s class, refusing (UnverifiedSchedulerError, one line) a class latent_probe has not
    verified or a configuration whose x̂₀ is not the prediction's: clipped (``clip_sample``) or thresholded."""
    rule = scheduler_rule(type(scheduler))
    cfg = _config(scheduler)
    for key in ("thresholding", "clip_sample"):
        if cfg.get(key):
            raise UnverifiedSchedulerError(
                f"{type(scheduler).__name__} is configured with {key}=True: its x̂₀ is {key.replace('_', ' ')}-ed "
                f"before use, which latent_probe does not reproduce; make it with {key}=False "
                f"(e.g. {type(scheduler).__name__}.from_config(config, {key}=False))")
    return rule


def noise_level_at(scheduler: Any, sigma_index: int | None, timestep: Any) -> NoiseLevel:
    """(α, σ) of the step the scheduler just took.

    ``sigma_index`` is the index into ``scheduler.sigmas`` that ``step`` used (its ``step_index`` before
    it advanced). Schedulers without ``sigmas`` (DDIM, DDPM) are read from ``alphas_cumprod[timestep]``.
    """
    rule = scheduler_rule(type(scheduler))
    flow = not rule.k_diffusion and rule.sigma == "index" and is_flow_schedule(scheduler)
    sigmas = getattr(scheduler, "sigmas", None)
    if rule.sigma in ("kdpm2", "kdpm2_ancestral") and sigma_index is not None:
        # a first-order call leaves the sample it started from for the second: state_in_first_order is False
        if not scheduler.state_in_first_order:
            sigmas = scheduler.sigmas
        else:
            sigmas = scheduler.sigmas_interpol
            sigma_index = sigma_index - (rule.sigma == "kdpm2_ancestral")
    if rule.sigma != "timestep" and sigmas is not None and sigma_index is not None:
        s = _scalar(sigmas[sigma_index])
        if flow and _config(scheduler).get("invert_sigmas"):
            return NoiseLevel(alpha=s, sigma=1.0 - s, flow=True, inverted=True)
        if flow:
            return NoiseLevel(alpha=1.0 - s, sigma=s, flow=True)
        if rule.k_diffusion:
            return NoiseLevel(alpha=1.0, sigma=s, flow=False, k_diffusion=True)
        # diffusers' VP multistep schedulers keep σ_k = √((1−ᾱ)/ᾱ).
        alpha = 1.0 / math.sqrt(s * s + 1.0)
        return NoiseLevel(alpha=alpha, sigma=s * alpha, flow=False)
    acp = getattr(scheduler, "alphas_cumprod", None)
    if acp is not None and timestep is not None:
        a = _scalar(acp[int(_scalar(timestep))])
        return NoiseLevel(alpha=math.sqrt(a), sigma=math.sqrt(1.0 - a), flow=False)
    raise UnknownParameterizationError(
        f"cannot read the noise level from scheduler {type(scheduler).__name__}: it has neither sigmas "
        "with a step_index nor alphas_cumprod"
    )


def estimate_x0_eps(
    param: Parameterization,
    x_t: torch.Tensor,
    pred: torch.Tensor,
    level: NoiseLevel,
    sigma_tensor: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x̂₀ and ε̂ from x_t and a prediction, both [B, C, F, H, W]; float32 (float64 for float64 x_t).

    For flow matching, ``sigma_tensor`` (the scheduler's own ``sigmas[i]``) is used as is, so that x̂₀ is
    computed exactly as the scheduler computes its own (``sample - sigma_t * model_output``).
    """
    a, s = level.alpha, level.sigma
    dtype = torch.float64 if x_t.dtype == torch.float64 else torch.float32
    if param is Parameterization.FLOW and level.inverted:
        # the scheduler's own σ_s = 1 − σ runs upward; the model predicts u = x₀ − ε
        own = sigma_tensor if sigma_tensor is not None else 1.0 - s
        x0 = x_t + (1 - own) * pred
        eps = x_t - own * pred
        return x0.to(dtype), eps.to(dtype)
    if param is Parameterization.FLOW:
        sig = sigma_tensor if sigma_tensor is not None else s
        x0 = x_t - sig * pred
        eps = x_t + (1 - sig) * pred
        return x0.to(dtype), eps.to(dtype)
    x = x_t.to(dtype)
    p = pred.to(dtype)
    if level.k_diffusion:  # x = x₀ + σ·ε: the variance-preserving formulas on x/√(σ²+1)
        k = math.sqrt(s * s + 1.0)
        if param is Parameterization.EPSILON:
            return x - s * p, p
        if param is Parameterization.V:
            return x / (k * k) - (s / k) * p, (s / (k * k)) * x + p / k
        if param is Parameterization.SAMPLE:
            return p, (x - p) / s if s > 0 else torch.full_like(x, float("nan"))
    if param is Parameterization.EPSILON:
        if a <= 0:
            x0 = torch.full_like(x, float("nan"))
        else:
            x0 = (x - s * p) / a
        return x0, p
    if param is Parameterization.V:
        return a * x - s * p, s * x + a * p
    if param is Parameterization.SAMPLE:
        eps = (x - a * p) / s if s > 0 else torch.full_like(x, float("nan"))
        return p, eps
    raise UnknownParameterizationError(f"unknown parameterization {param!r}")  # pragma: no cover
