"""Adapter for diffusers video pipelines: one declared spec per pipeline class, or a refusal.

Each spec states the facts the probe needs and that ``step`` alone does not show (read from diffusers 0.42.1,
checked by tests/test_video_families_facts.py and tests/test_families.py): the expert attributes, high-noise
first; the layout of the latents ``step`` receives; the CFG call pattern; for frame truncation, the DiT calling
convention (``dit_calls``) and where its rotary time positions come from (``rope``). The σ convention and the
parameterisation are the scheduler's (``parameterization.py``: flow, inverted flow, k-diffusion); ``step``'s
arguments are bound by name against its own signature. A pipeline class without a spec is refused unless the
caller states the layout (``LatentProbe(pipe, layout=...)``); a spec may itself be a refusal.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from .base import TargetParts, UnsupportedTargetError
from ._util import capture_call_args, jsonable

__all__ = ["PipelineSpec", "SPECS", "matches", "parts"]

EXPERT_ATTRS = ("transformer", "transformer_2")


@dataclass(frozen=True)
class PipelineSpec:
    family: str
    step_layout: str = "b c f h w"
    unpacked_layout: str = "b c f h w"
    cfg: str = "batched"
    boundary: bool = False  # a second expert (transformer_2) below config.boundary_ratio · num_train_timesteps
    pack_call: str | None = None  # the pipeline method that packs [B, C, F, H, W] latents into tokens; its tokens
    # are unpacked with the sizes of the generation being recorded (prepare_latents' height, width, num_frames)
    guidance_attr: str | None = "_guidance_scale"
    dit_calls: str | None = None  # the DiT convention of adapters/dit_calls.py, where frame slicing is verified
    dit_calls_refused: str | None = None  # why frame slicing is refused although the family has a convention
    rope: str | None = None  # where the DiT takes its rotary time positions from (adapters/rope.py)
    refuse: str | None = None  # why this pipeline cannot be recorded exactly


_WAN = PipelineSpec("wan", cfg="sequential", boundary=True, dit_calls="diffusers", rope="diffusers_wan")
_SEQ = dict(cfg="sequential")
SPECS: dict[str, PipelineSpec] = {
    "WanPipeline": _WAN,
    "WanImageToVideoPipeline": _WAN,
    "WanVACEPipeline": replace(_WAN, dit_calls=None, dit_calls_refused=(
        "VACE's control_hidden_states (the control video, plus a leading latent frame per reference image) "
        "carry the frame axis too and are not sliced with hidden_states")),
    "SkyReelsV2Pipeline": PipelineSpec("skyreels_v2", **_SEQ),
    "SkyReelsV2ImageToVideoPipeline": PipelineSpec("skyreels_v2", **_SEQ),
    "HunyuanVideoPipeline": PipelineSpec("hunyuan_video", guidance_attr=None, **_SEQ),  # its guidance_scale is
    "HunyuanVideo15Pipeline": PipelineSpec("hunyuan_video15", guidance_attr=None, **_SEQ),  # not CFG / a guider
    "CogVideoXPipeline": PipelineSpec("cogvideox", step_layout="b f c h w"),
    "LTXPipeline": PipelineSpec("ltx", step_layout="b (f h w) (c pt ph pw)",
                                unpacked_layout="b c (f pt) (h ph) (w pw)", pack_call="_pack_latents"),
    "MochiPipeline": PipelineSpec("mochi"),
    "AllegroPipeline": PipelineSpec("allegro"),
    "EasyAnimatePipeline": PipelineSpec("easyanimate"),
    "SanaVideoPipeline": PipelineSpec("sana_video"),
    # refused: recording them exactly needs more than an instance-level step interception
    "SkyReelsV2DiffusionForcingPipeline": PipelineSpec(
        "skyreels_v2_df", refuse="diffusion forcing steps a deep copy of the scheduler per latent frame, on "
                                 "4-D frame slices; pipe.scheduler.step is never called"),
    "SkyReelsV2DiffusionForcingImageToVideoPipeline": PipelineSpec("skyreels_v2_df", refuse="diffusion forcing "
                                                                   "(see SkyReelsV2DiffusionForcingPipeline)"),
    "SkyReelsV2DiffusionForcingVideoToVideoPipeline": PipelineSpec("skyreels_v2_df", refuse="diffusion forcing "
                                                                   "(see SkyReelsV2DiffusionForcingPipeline)"),
    "LTX2Pipeline": PipelineSpec(
        "ltx2", refuse="joint audio-video generation: a deep copy of the scheduler steps the audio latents, and "
                       "the velocity step receives is rebuilt from three DiT calls (CFG, STG, modality isolation)"),
}


def matches(target: Any) -> bool:
    return callable(getattr(getattr(target, "scheduler", None), "step", None)) and any(
        isinstance(getattr(target, n, None), torch.nn.Module) for n in EXPERT_ATTRS
    )


def _seed_of(generator: Any) -> int | None:
    if isinstance(generator, (list, tuple)):
        generator = generator[0] if generator else None
    if isinstance(generator, torch.Generator):
        return int(generator.initial_seed())
    return None


def spec_for(target: Any, layout: str | None) -> PipelineSpec:
    """The spec of the target's class (or of a base class); a caller's ``layout`` for an unknown class."""
    cls = type(target)
    for klass in cls.__mro__:
        spec = SPECS.get(klass.__name__)
        if spec is not None:
            break
    else:
        if layout is None:
            raise UnsupportedTargetError(
                f"latent_probe does not know the latent layout and CFG pattern of {cls.__name__}; pass "
                "LatentProbe(pipe, layout='b c f h w') (the einops layout of what its scheduler.step receives) if "
                f"you know it. Known pipelines: {', '.join(sorted(k for k, v in SPECS.items() if not v.refuse))}")
        return PipelineSpec("diffusers", step_layout=layout, cfg="batched")
    if spec.refuse:
        raise UnsupportedTargetError(f"latent_probe cannot record {cls.__name__} exactly: {spec.refuse}")
    if layout is not None and layout != spec.step_layout:
        raise UnsupportedTargetError(f"{cls.__name__}'s scheduler.step receives '{spec.step_layout}', not the "
                                     f"layout='{layout}' given; leave layout= out for this pipeline")
    return spec


def parts(target: Any, layout: str | None = None) -> TargetParts:
    spec = spec_for(target, layout)
    experts = {n: getattr(target, n) for n in EXPERT_ATTRS if isinstance(getattr(target, n, None), torch.nn.Module)}
    call: dict[str, Any] = {}
    sizes: dict[str, int] = {}

    def remember_inputs(args: dict) -> None:
        call.clear()
        call.update({k: v for k, v in args.items() if isinstance(v, (str, int, float, list, type(None)))})

    def remember_latents(args: dict) -> None:
        seed = _seed_of(args.get("generator"))
        if seed is not None:
            call["seed"] = seed
        for k in ("num_frames", "frames"):
            if isinstance(args.get(k), int):
                call["num_frames"] = args[k]

    def remember_sizes(args: dict) -> None:
        """LTX packs [B, C, F, H, W] into [B, F/pt · H/p · W/p, C · pt · p · p]. The sizes that unpack this
        generation's tokens are computed, as the pipeline computes them (pipeline_ltx.py: latent_num_frames,
        latent_height, latent_width), from this call's height, width and num_frames — also when ``latents=`` is
        passed packed, and never kept from an earlier generation: unknown sizes leave none (recording stops)."""
        sizes.clear()
        try:
            height, width, frames = (int(args[k]) for k in ("height", "width", "num_frames"))
        except (KeyError, TypeError, ValueError):
            return
        rs, rt = int(target.vae_spatial_compression_ratio), int(target.vae_temporal_compression_ratio)
        p, pt = int(target.transformer_spatial_patch_size), int(target.transformer_temporal_patch_size)
        f, h, w = (frames - 1) // rt + 1, height // rs, width // rs
        if min(f // pt, h // p, w // p) >= 1:
            sizes.update(f=f // pt, h=h // p, w=w // p, pt=pt, ph=p, pw=p)

    def forget_sizes(args: dict) -> None:
        sizes.clear()

    def guidance(expert: str | None) -> float | None:
        if spec.guidance_attr is None:
            return None
        name = spec.guidance_attr + ("_2" if expert == "transformer_2" else "")
        value = getattr(target, name, None)
        return None if value is None else float(value)

    attrs: dict[str, Any] = {"family": "diffusers", "pipeline_family": spec.family,
                             "target_class": f"{type(target).__module__}.{type(target).__name__}"}
    boundary = getattr(getattr(target, "config", None), "boundary_ratio", None) if spec.boundary else None
    if boundary is not None:
        attrs["boundary"] = float(boundary)
        attrs["boundary_timestep"] = float(boundary) * float(target.scheduler.config.num_train_timesteps)
    attrs["model_config"] = {n: jsonable(getattr(m, "config", {})) for n, m in experts.items()}
    attrs["scheduler_config"] = jsonable(getattr(target.scheduler, "config", {}))
    patches = []
    if callable(getattr(target, "check_inputs", None)):
        patches.append((target, "check_inputs", capture_call_args(
            ("prompt", "negative_prompt", "height", "width"), remember_inputs)))
    if callable(getattr(target, "prepare_latents", None)):
        patches.append((target, "prepare_latents", capture_call_args(("num_frames", "frames", "generator"),
                                                                     remember_latents)))
    if spec.pack_call is not None:
        needs = ("prepare_latents", "check_inputs", spec.pack_call, "vae_spatial_compression_ratio",
                 "vae_temporal_compression_ratio", "transformer_spatial_patch_size", "transformer_temporal_patch_size")
        missing = [n for n in needs if getattr(target, n, None) is None]
        if missing:
            raise UnsupportedTargetError(f"{type(target).__name__} has no {', '.join(missing)}: the sizes that unpack "
                                         "its tokens cannot be known")
        patches.append((target, "check_inputs", capture_call_args((), forget_sizes)))
        patches.append((target, "prepare_latents", capture_call_args(("height", "width", "num_frames"),
                                                                     remember_sizes)))
    return TargetParts(
        family="diffusers",
        experts=experts,
        scheduler=target.scheduler,
        step_layout=spec.step_layout,
        unpacked_layout=spec.unpacked_layout,
        layout_sizes=sizes,
        cfg=spec.cfg,
        guidance_scale=guidance,
        call_patches=patches,
        call_args=call,
        attrs=attrs,
        high_noise_expert="transformer" if boundary is not None and "transformer_2" in experts else None,
        dit_calls=spec.dit_calls,
        dit_calls_refused=spec.dit_calls_refused,
        rope=spec.rope,
        blocks="diffusers_wan" if spec.rope == "diffusers_wan" else None,
        blocks_refused=None if spec.rope == "diffusers_wan" else f"block probes are implemented for Wan's DiT only, not {spec.family}",
        rope_refused=None if spec.rope else f"true time positions are implemented for Wan's DiT only, not {spec.family}",
    )
