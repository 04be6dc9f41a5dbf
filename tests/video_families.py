"""Tiny random-weight instances of every video-DiT pipeline in diffusers 0.42.1 (issue 9), plus the facts an
adapter needs about each, read from the diffusers source and checked by ``tests/test_video_families_facts.py``.

Nothing is downloaded: every transformer / VAE is built from a small config, and prompts are passed as
embeddings (with their attention masks / pooled vectors where the pipeline wants them), so no tokenizer or text
encoder is built. ``output_type="latent"`` skips the VAE decode everywhere; a VAE is only *run* where the
pipeline must encode a conditioning input (Wan I2V's first frame, Wan VACE's control video).

Each ``build_<family>()`` returns a :class:`TinyFamily`: ``.pipe`` and ``.call(pipe, **overrides)`` (a few
steps, 2-5 latent frames, tiny H x W, guidance on, fixed generator seed) returning the output latents.
``FACTS[family]`` is the machine-readable record; ``BUILDERS[family]`` the builder; ``Recorder(fam)`` a
context manager that records every ``step`` call (of the scheduler's class, so copies are seen) and DiT call.
LTX-2's ``call`` returns the video latents (the audio latents are ``pipe(...).audio``).

FACTS keys, by the six questions of issue 9: (1) ``experts``, ``expert_rule``; (2) ``step.model_output``,
``step.sample`` (layout + tiny shape), ``dit``; (3) ``step`` (positional / keyword names, which scheduler object);
(4) ``scheduler``, ``config``, ``sigmas``, ``model_predicts``, ``x0`` (how to get the scheduler's own x0);
(5) ``cfg``; (6) ``tricky``, ``set_begin_index``. ``evidence`` holds file:line pointers.

Line numbers in the evidence pointers are for the installed diffusers 0.42.1 (``site-packages/diffusers/``).
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from typing import Any, Callable

import torch

__all__ = ["TinyFamily", "BUILDERS", "FACTS", "Recorder", "StepCall", "DitCall", "embeds"]


@dataclasses.dataclass
class TinyFamily:
    name: str
    pipe: Any
    call: Callable[..., torch.Tensor]  # call(pipe, **overrides) -> output latents
    experts: tuple[str, ...] = ("transformer",)
    kwargs: dict = dataclasses.field(default_factory=dict)  # the default call arguments (prompt embeddings etc.)

    def run(self, **overrides: Any) -> torch.Tensor:
        return self.call(self.pipe, **overrides)


def embeds(tag: str, length: int, dim: int, batch: int = 1) -> torch.Tensor:
    """A deterministic [batch, length, dim] stand-in for a text encoder's output."""
    g = torch.Generator().manual_seed(zlib.crc32(tag.encode()))
    return torch.randn(batch, length, dim, generator=g)


def vec(tag: str, dim: int, batch: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(tag.encode()))
    return torch.randn(batch, dim, generator=g)


def _mask(length: int, valid: int | None = None, batch: int = 1) -> torch.Tensor:
    m = torch.zeros(batch, length, dtype=torch.long)
    m[:, : (length if valid is None else valid)] = 1
    return m


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _run(pipe: Any, kwargs: dict, overrides: dict, out: str = "frames") -> torch.Tensor:
    args = dict(kwargs)
    seed = overrides.pop("seed", 0)
    args["generator"] = _gen(seed)
    args.update(overrides)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        res = pipe(**args)
    return getattr(res, out)


# --------------------------------------------------------------------------------------------------------------
# Wan family (Wan 2.1 / 2.2 T2V, I2V, VACE) and SkyReels-V2 (a Wan-architecture DiT)
# --------------------------------------------------------------------------------------------------------------
WAN_TEXT_DIM = 32


def _wan_vae(seed: int = 0):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True]).eval()


def _wan_unipc(flow_shift: float):
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                   num_train_timesteps=1000, flow_shift=flow_shift)


def _wan_dit(seed: int, cls_name: str = "WanTransformer3DModel", **kw):
    import diffusers

    cfg = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16,
               text_dim=WAN_TEXT_DIM, freq_dim=256, ffn_dim=64, num_layers=2, cross_attn_norm=True,
               qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    cfg.update(kw)
    torch.manual_seed(seed)
    return getattr(diffusers, cls_name)(**cfg).eval()


def _wan_text_kwargs() -> dict:
    return dict(prompt_embeds=embeds("a red ball rolls", 8, WAN_TEXT_DIM),
                negative_prompt_embeds=embeds("", 8, WAN_TEXT_DIM))


def build_wan_t2v() -> TinyFamily:
    """Wan2.2 T2V-A14B layout: two experts, boundary_ratio 0.875; 6 UniPC steps (flow_shift 3) so both experts run."""
    from diffusers import WanPipeline

    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=_wan_vae(), scheduler=_wan_unipc(3.0),
                       transformer=_wan_dit(1), transformer_2=_wan_dit(2), boundary_ratio=0.875)
    kw = dict(**_wan_text_kwargs(), height=32, width=32, num_frames=9, num_inference_steps=6, guidance_scale=4.0,
              guidance_scale_2=3.0, output_type="latent")
    return TinyFamily("wan_t2v", pipe, lambda p, **o: _run(p, kw, o), ("transformer", "transformer_2"), kwargs=kw)


def _image(h: int, w: int, seed: int = 0):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def build_wan_i2v() -> TinyFamily:
    """Wan2.2 I2V-A14B layout: two experts (boundary 0.9), no CLIP image encoder (image_dim=None), DiT input =
    latents(16) ++ mask(4) ++ first-frame condition latents(16) = 36 channels."""
    from diffusers import WanImageToVideoPipeline

    pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=_wan_vae(), scheduler=_wan_unipc(5.0),
                                   transformer=_wan_dit(1, in_channels=36), transformer_2=_wan_dit(2, in_channels=36),
                                   boundary_ratio=0.9)
    kw = dict(image=_image(32, 32), **_wan_text_kwargs(), height=32, width=32, num_frames=9, num_inference_steps=6,
              guidance_scale=4.0, output_type="latent")
    return TinyFamily("wan_i2v", pipe, lambda p, **o: _run(p, kw, o), ("transformer", "transformer_2"), kwargs=kw)


def build_wan_ti2v() -> TinyFamily:
    """Wan2.2 TI2V-5B layout (``expand_timesteps=True``, one expert) driven through WanImageToVideoPipeline: the
    timestep becomes per-token [B, F*H/2*W/2] with 0 on the first latent frame, whose DiT input is replaced by the
    encoded image. (A tiny Wan2.1 VAE stands in for the 48-channel Wan2.2 VAE; only the latent size differs.)"""
    from diffusers import WanImageToVideoPipeline

    pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=_wan_vae(), scheduler=_wan_unipc(5.0),
                                   transformer=_wan_dit(1), expand_timesteps=True)
    kw = dict(image=_image(32, 32), **_wan_text_kwargs(), height=32, width=32, num_frames=9, num_inference_steps=5,
              guidance_scale=4.0, output_type="latent")
    return TinyFamily("wan_ti2v", pipe, lambda p, **o: _run(p, kw, o), kwargs=kw)


def build_wan_vace() -> TinyFamily:
    """Wan2.1-VACE layout (one expert; the pipeline also accepts transformer_2 + boundary_ratio like T2V).
    A control video + mask and one reference image (which becomes an extra leading latent frame)."""
    from PIL import Image

    from diffusers import WanVACEPipeline

    dit = _wan_dit(1, "WanVACETransformer3DModel", num_layers=3, vace_layers=[0, 2], vace_in_channels=96)
    pipe = WanVACEPipeline(tokenizer=None, text_encoder=None, vae=_wan_vae(), scheduler=_wan_unipc(3.0),
                           transformer=dit)
    video = [_image(32, 32, s) for s in range(9)]
    mask = [Image.new("L", (32, 32), 255 if s >= 4 else 0) for s in range(9)]
    kw = dict(video=video, mask=mask, reference_images=[_image(32, 32, 99)], **_wan_text_kwargs(), height=32,
              width=32, num_frames=9, num_inference_steps=5, guidance_scale=4.0, output_type="latent")
    return TinyFamily("wan_vace", pipe, lambda p, **o: _run(p, kw, o), kwargs=kw)


def build_skyreels_v2() -> TinyFamily:
    from diffusers import SkyReelsV2Pipeline

    pipe = SkyReelsV2Pipeline(tokenizer=None, text_encoder=None, vae=_wan_vae(), scheduler=_wan_unipc(8.0),
                              transformer=_wan_dit(1, "SkyReelsV2Transformer3DModel"))
    kw = dict(**_wan_text_kwargs(), height=32, width=32, num_frames=9, num_inference_steps=5, guidance_scale=4.0,
              output_type="latent")
    return TinyFamily("skyreels_v2", pipe, lambda p, **o: _run(p, kw, o), kwargs=kw)


def build_skyreels_v2_df() -> TinyFamily:
    """Diffusion forcing, asynchronous (ar_step=2, causal_block_size=1): 4 latent frames, 4 steps."""
    from diffusers import SkyReelsV2DiffusionForcingPipeline

    pipe = SkyReelsV2DiffusionForcingPipeline(tokenizer=None, text_encoder=None, vae=_wan_vae(),
                                              scheduler=_wan_unipc(8.0),
                                              transformer=_wan_dit(1, "SkyReelsV2Transformer3DModel"))
    kw = dict(prompt=None, **_wan_text_kwargs(), height=32, width=32, num_frames=13, num_inference_steps=4,
              guidance_scale=4.0,
              ar_step=2, output_type="latent")
    return TinyFamily("skyreels_v2_df", pipe, lambda p, **o: _run(p, kw, o), kwargs=kw)


# --------------------------------------------------------------------------------------------------------------
# HunyuanVideo and HunyuanVideo 1.5
# --------------------------------------------------------------------------------------------------------------
def build_hunyuan_video() -> TinyFamily:
    """Guidance-distilled (guidance embedded, ``guidance_scale``) plus true CFG (``true_cfg_scale`` > 1 with
    negative embeddings), so two transformer calls per step."""
    from diffusers import (AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline,
                           HunyuanVideoTransformer3DModel)

    torch.manual_seed(1)
    dit = HunyuanVideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10,
                                         num_layers=1, num_single_layers=1, num_refiner_layers=1, patch_size=1,
                                         patch_size_t=1, guidance_embeds=True, text_embed_dim=16,
                                         pooled_projection_dim=8, rope_axes_dim=(2, 4, 4)).eval()
    torch.manual_seed(0)
    vae = AutoencoderKLHunyuanVideo(latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
                                    norm_num_groups=4, spatial_compression_ratio=8, temporal_compression_ratio=4).eval()
    pipe = HunyuanVideoPipeline(text_encoder=None, tokenizer=None, transformer=dit, vae=vae,
                                scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=None,
                                tokenizer_2=None)
    kw = dict(prompt_embeds=embeds("p", 8, 16), prompt_attention_mask=_mask(8, 6), pooled_prompt_embeds=vec("pp", 8),
              negative_prompt_embeds=embeds("n", 8, 16), negative_prompt_attention_mask=_mask(8, 3),
              negative_pooled_prompt_embeds=vec("np", 8), height=32, width=32, num_frames=9, num_inference_steps=5,
              guidance_scale=6.0, true_cfg_scale=4.0, output_type="latent")
    return TinyFamily("hunyuan_video", pipe, lambda p, **o: _run(p, kw, o), kwargs=kw)


def build_hunyuan_video15() -> TinyFamily:
    """HunyuanVideo 1.5 T2V: CFG through the ``guider`` component (ClassifierFreeGuidance, scale 6)."""
    from diffusers import (AutoencoderKLHunyuanVideo15, FlowMatchEulerDiscreteScheduler, HunyuanVideo15Pipeline,
                           HunyuanVideo15Transformer3DModel)
    from diffusers.guiders import ClassifierFreeGuidance

    torch.manual_seed(1)
    dit = HunyuanVideo15Transformer3DModel(in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=8,
                                           num_layers=1, num_refiner_layers=1, mlp_ratio=2.0, patch_size=1,
                                           patch_size_t=1, text_embed_dim=16, text_embed_2_dim=32, image_embed_dim=12,
                                           rope_axes_dim=(2, 2, 4), target_size=16, task_type="t2v").eval()
    torch.manual_seed(0)
    vae = AutoencoderKLHunyuanVideo15(latent_channels=4, block_out_channels=(16, 16), layers_per_block=1,
                                      spatial_compression_ratio=4, temporal_compression_ratio=2,
                                      downsample_match_channel=False, upsample_match_channel=False).eval()
    pipe = HunyuanVideo15Pipeline(text_encoder=None, tokenizer=None, transformer=dit, vae=vae,
                                  scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=None,
                                  tokenizer_2=None, guider=ClassifierFreeGuidance(guidance_scale=6.0))
    kw = dict(prompt_embeds=embeds("p", 8, 16), prompt_embeds_mask=_mask(8, 6),
              negative_prompt_embeds=embeds("n", 8, 16), negative_prompt_embeds_mask=_mask(8, 3),
              prompt_embeds_2=embeds("p2", 6, 32), prompt_embeds_mask_2=_mask(6, 4),
              negative_prompt_embeds_2=embeds("n2", 6, 32), negative_prompt_embeds_mask_2=_mask(6, 2),
              height=16, width=16, num_frames=5, num_inference_steps=5, output_type="latent")
    return TinyFamily("hunyuan_video15", pipe, lambda p, **o: _run(p, kw, o), kwargs=kw)


# --------------------------------------------------------------------------------------------------------------
# CogVideoX (DDIM and DPM schedulers)
# --------------------------------------------------------------------------------------------------------------
def _cog_sched_kwargs() -> dict:
    # THUDM/CogVideoX-2b scheduler_config.json (the 5b ships the same with snr_shift_scale=1.0)
    return dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                num_train_timesteps=1000, prediction_type="v_prediction", rescale_betas_zero_snr=True,
                set_alpha_to_one=True, snr_shift_scale=3.0, steps_offset=0, timestep_spacing="trailing")


def _build_cogvideox(name: str, scheduler: Any, rotary: bool) -> TinyFamily:
    from diffusers import AutoencoderKLCogVideoX, CogVideoXPipeline, CogVideoXTransformer3DModel

    torch.manual_seed(1)
    dit = CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
                                      time_embed_dim=2, text_embed_dim=32, num_layers=1, sample_width=4,
                                      sample_height=4, sample_frames=9, patch_size=2, temporal_compression_ratio=4,
                                      max_text_seq_length=16, use_rotary_positional_embeddings=rotary,
                                      use_learned_positional_embeddings=False).eval()
    torch.manual_seed(0)
    vae = AutoencoderKLCogVideoX(down_block_types=("CogVideoXDownBlock3D",) * 4,
                                 up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8),
                                 latent_channels=4, layers_per_block=1, norm_num_groups=2,
                                 temporal_compression_ratio=4).eval()
    pipe = CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=dit, scheduler=scheduler)
    kw = dict(prompt_embeds=embeds("p", 16, 32), negative_prompt_embeds=embeds("n", 16, 32), height=32, width=32,
              num_frames=9, num_inference_steps=5, guidance_scale=5.0, output_type="latent")
    return TinyFamily(name, pipe, lambda p, **o: _run(p, kw, o), kwargs=kw)


def build_cogvideox_ddim() -> TinyFamily:
    from diffusers import CogVideoXDDIMScheduler

    return _build_cogvideox("cogvideox_ddim", CogVideoXDDIMScheduler(**_cog_sched_kwargs()), rotary=False)


def build_cogvideox_dpm() -> TinyFamily:
    """CogVideoX-5b style (rotary positional embeddings) with CogVideoXDPMScheduler (stochastic: eta-free, but
    draws noise from the pipeline's generator every step)."""
    from diffusers import CogVideoXDPMScheduler

    return _build_cogvideox("cogvideox_dpm", CogVideoXDPMScheduler(**_cog_sched_kwargs()), rotary=True)


# --------------------------------------------------------------------------------------------------------------
# LTX-Video and LTX-2
# --------------------------------------------------------------------------------------------------------------
def _ltx_sched():
    from diffusers import FlowMatchEulerDiscreteScheduler

    # Lightricks/LTX-Video scheduler_config.json (LTX-2 ships the same values)
    return FlowMatchEulerDiscreteScheduler(base_image_seq_len=1024, base_shift=0.95, max_image_seq_len=4096,
                                           max_shift=2.05, shift=1.0, shift_terminal=0.1, use_dynamic_shifting=True)


def build_ltx() -> TinyFamily:
    from diffusers import AutoencoderKLLTXVideo, LTXPipeline, LTXVideoTransformer3DModel

    torch.manual_seed(1)
    dit = LTXVideoTransformer3DModel(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1,
                                     num_attention_heads=4, attention_head_dim=8, cross_attention_dim=32,
                                     num_layers=1, caption_channels=32).eval()
    torch.manual_seed(0)
    vae = AutoencoderKLLTXVideo(latent_channels=8, block_out_channels=(8, 8, 8, 8),
                                decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
                                decoder_layers_per_block=(1, 1, 1, 1, 1),
                                spatio_temporal_scaling=(True, True, False, False),
                                decoder_spatio_temporal_scaling=(True, True, False, False),
                                decoder_inject_noise=(False, False, False, False, False),
                                upsample_residual=(False, False, False, False), upsample_factor=(1, 1, 1, 1),
                                timestep_conditioning=False, patch_size=1, patch_size_t=1, encoder_causal=True,
                                decoder_causal=False).eval()
    pipe = LTXPipeline(scheduler=_ltx_sched(), vae=vae, text_encoder=None, tokenizer=None, transformer=dit)
    kw = dict(prompt_embeds=embeds("p", 8, 32), prompt_attention_mask=_mask(8, 6),
              negative_prompt_embeds=embeds("n", 8, 32), negative_prompt_attention_mask=_mask(8, 2),
              height=32, width=32, num_frames=9, num_inference_steps=5, guidance_scale=3.0, output_type="latent")
    return TinyFamily("ltx", pipe, lambda p, **o: _run(p, kw, o), kwargs=kw)


def build_ltx2() -> TinyFamily:
    """LTX-2 (joint audio+video DiT). Default-style guidance: CFG 4 (batched) + STG (block 0) + modality
    isolation, i.e. three transformer calls per step; an audio scheduler (deep copy) steps the audio latents."""
    from diffusers import AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video, LTX2Pipeline, LTX2VideoTransformer3DModel
    from diffusers.pipelines.ltx2 import LTX2TextConnectors

    hidden, layers = 32, 2  # a stand-in Gemma: hidden size 32 (= connector width 4x8), 2 layers + embeddings -> 96-wide
    torch.manual_seed(1)
    dit = LTX2VideoTransformer3DModel(in_channels=4, out_channels=4, patch_size=1, patch_size_t=1,
                                      num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
                                      audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2,
                                      audio_attention_head_dim=4, audio_cross_attention_dim=8, num_layers=2,
                                      qk_norm="rms_norm_across_heads", caption_channels=hidden,
                                      rope_double_precision=False, rope_type="split").eval()
    torch.manual_seed(2)
    connectors = LTX2TextConnectors(caption_channels=hidden, text_proj_in_factor=layers + 1,
                                    video_connector_num_attention_heads=4, video_connector_attention_head_dim=8,
                                    video_connector_num_layers=1, video_connector_num_learnable_registers=None,
                                    audio_connector_num_attention_heads=4, audio_connector_attention_head_dim=8,
                                    audio_connector_num_layers=1, audio_connector_num_learnable_registers=None,
                                    connector_rope_base_seq_len=32, rope_theta=10000.0, rope_double_precision=False,
                                    causal_temporal_positioning=False, rope_type="split").eval()
    torch.manual_seed(0)
    vae = AutoencoderKLLTX2Video(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,),
                                 decoder_block_out_channels=(8,), layers_per_block=(1,),
                                 decoder_layers_per_block=(1, 1),
                                 spatio_temporal_scaling=(True,), decoder_spatio_temporal_scaling=(True,),
                                 decoder_inject_noise=(False, False), downsample_type=("spatial",),
                                 upsample_residual=(False,), upsample_factor=(1,), timestep_conditioning=False,
                                 patch_size=4, patch_size_t=1, encoder_causal=True, decoder_causal=False).eval()
    torch.manual_seed(0)
    audio_vae = AutoencoderKLLTX2Audio(base_channels=4, output_channels=2, ch_mult=(1,), num_res_blocks=1,
                                       attn_resolutions=None, in_channels=2, resolution=32, latent_channels=2,
                                       norm_type="pixel", causality_axis="height", dropout=0.0,
                                       mid_block_add_attention=False, sample_rate=16000, mel_hop_length=160,
                                       is_causal=True, mel_bins=8).eval()
    pipe = LTX2Pipeline(scheduler=_ltx_sched(), vae=vae, audio_vae=audio_vae, text_encoder=None, tokenizer=None,
                        connectors=connectors, transformer=dit, vocoder=None)
    dim = hidden * (layers + 1)
    kw = dict(prompt_embeds=embeds("p", 8, dim), prompt_attention_mask=_mask(8, 6),
              negative_prompt_embeds=embeds("n", 8, dim), negative_prompt_attention_mask=_mask(8, 2),
              height=32, width=32, num_frames=5, frame_rate=25.0, num_inference_steps=4, guidance_scale=4.0,
              spatio_temporal_guidance_blocks=[0], output_type="latent")
    return TinyFamily("ltx2", pipe, lambda p, **o: _run(p, kw, o), kwargs=kw)


# --------------------------------------------------------------------------------------------------------------
# Mochi, Allegro, EasyAnimate, Sana-Video
# --------------------------------------------------------------------------------------------------------------
def _build_mochi(name: str, invert_sigmas: bool) -> TinyFamily:
    from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiPipeline, MochiTransformer3DModel

    torch.manual_seed(1)
    dit = MochiTransformer3DModel(patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=2,
                                  pooled_projection_dim=16, in_channels=12, out_channels=None, qk_norm="rms_norm",
                                  text_embed_dim=32, time_embed_dim=4, activation_fn="swiglu",
                                  max_sequence_length=8).eval()
    torch.manual_seed(0)
    vae = AutoencoderKLMochi(latent_channels=12, out_channels=3, encoder_block_out_channels=(32, 32, 32, 32),
                             decoder_block_out_channels=(32, 32, 32, 32), layers_per_block=(1, 1, 1, 1, 1)).eval()
    # genmo/mochi-1-preview scheduler_config.json: invert_sigmas=True, shift=1.0
    sched = FlowMatchEulerDiscreteScheduler(invert_sigmas=invert_sigmas, shift=1.0)
    pipe = MochiPipeline(scheduler=sched, vae=vae, text_encoder=None, tokenizer=None, transformer=dit)
    kw = dict(prompt_embeds=embeds("p", 8, 32), prompt_attention_mask=_mask(8, 6),
              negative_prompt_embeds=embeds("n", 8, 32), negative_prompt_attention_mask=_mask(8, 2),
              height=32, width=32, num_frames=13, num_inference_steps=6, guidance_scale=4.5, output_type="latent")
    return TinyFamily(name, pipe, lambda p, **o: _run(p, kw, o), kwargs=kw)


def build_mochi() -> TinyFamily:
    return _build_mochi("mochi", invert_sigmas=True)


def build_mochi_noinvert() -> TinyFamily:
    """The same Mochi pipeline with ``invert_sigmas=False``: not a shipped checkpoint config, but it shows that the
    sign convention lives in the scheduler config (the pipeline code is identical): sigmas 1->0, model output read
    as eps - x0."""
    return _build_mochi("mochi_noinvert", invert_sigmas=False)


def build_allegro() -> TinyFamily:
    from diffusers import (AllegroPipeline, AllegroTransformer3DModel, AutoencoderKLAllegro,
                           EulerAncestralDiscreteScheduler)

    torch.manual_seed(1)
    dit = AllegroTransformer3DModel(num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
                                    num_layers=1, cross_attention_dim=24, sample_width=8, sample_height=8,
                                    sample_frames=8, caption_channels=24).eval()
    torch.manual_seed(0)
    vae = AutoencoderKLAllegro(down_block_types=("AllegroDownBlock3D",) * 4, up_block_types=("AllegroUpBlock3D",) * 4,
                               block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1,
                               norm_num_groups=2, temporal_compression_ratio=4).eval()
    vae.enable_tiling()
    # rhymes-ai/Allegro scheduler_config.json
    sched = EulerAncestralDiscreteScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                                            num_train_timesteps=1000, prediction_type="epsilon", steps_offset=0,
                                            timestep_spacing="linspace")
    pipe = AllegroPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=dit, scheduler=sched)
    kw = dict(negative_prompt=None, prompt_embeds=embeds("p", 8, 24), prompt_attention_mask=_mask(8, 6),
              negative_prompt_embeds=embeds("n", 8, 24), negative_prompt_attention_mask=_mask(8, 2),
              height=32, width=32, num_frames=9, num_inference_steps=5, guidance_scale=7.5, output_type="latent")
    return TinyFamily("allegro", pipe, lambda p, **o: _run(p, kw, o), kwargs=kw)


def build_easyanimate() -> TinyFamily:
    from diffusers import (AutoencoderKLMagvit, EasyAnimatePipeline, EasyAnimateTransformer3DModel,
                           FlowMatchEulerDiscreteScheduler)

    torch.manual_seed(1)
    dit = EasyAnimateTransformer3DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
                                        time_embed_dim=2, text_embed_dim=16, num_layers=1, sample_width=16,
                                        sample_height=16, patch_size=2).eval()
    torch.manual_seed(0)
    vae = AutoencoderKLMagvit(down_block_types=("SpatialDownBlock3D",) + ("SpatialTemporalDownBlock3D",) * 3,
                              up_block_types=("SpatialUpBlock3D",) + ("SpatialTemporalUpBlock3D",) * 3,
                              block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1,
                              norm_num_groups=2, spatial_group_norm=False).eval()
    # alibaba-pai/EasyAnimateV5.1-12b-zh scheduler_config.json
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096)
    pipe = EasyAnimatePipeline(vae=vae, text_encoder=None, tokenizer=None, transformer=dit, scheduler=sched)
    kw = dict(prompt_embeds=embeds("p", 8, 16), prompt_attention_mask=_mask(8, 6),
              negative_prompt_embeds=embeds("n", 8, 16), negative_prompt_attention_mask=_mask(8, 2),
              height=32, width=32, num_frames=9, num_inference_steps=5, guidance_scale=5.0, output_type="latent")
    return TinyFamily("easyanimate", pipe, lambda p, **o: _run(p, kw, o), kwargs=kw)


def build_sana_video() -> TinyFamily:
    from diffusers import DPMSolverMultistepScheduler, SanaVideoPipeline, SanaVideoTransformer3DModel

    torch.manual_seed(1)
    dit = SanaVideoTransformer3DModel(in_channels=16, out_channels=16, num_attention_heads=2, attention_head_dim=12,
                                      num_layers=2, num_cross_attention_heads=2, cross_attention_head_dim=12,
                                      cross_attention_dim=24, caption_channels=8, mlp_ratio=2.5, dropout=0.0,
                                      attention_bias=False, sample_size=8, patch_size=(1, 2, 2),
                                      norm_elementwise_affine=False, norm_eps=1e-6, qk_norm="rms_norm_across_heads",
                                      rope_max_seq_len=32).eval()
    # Sana's shipped DPM-Solver++ flow config (flow_shift as SANA-Video's 480p default, 8.0)
    sched = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", prediction_type="flow_prediction",
                                        use_flow_sigmas=True, flow_shift=8.0, solver_order=2, solver_type="midpoint",
                                        lower_order_final=True, final_sigmas_type="zero", num_train_timesteps=1000)
    pipe = SanaVideoPipeline(tokenizer=None, text_encoder=None, vae=_wan_vae(), transformer=dit, scheduler=sched)
    kw = dict(negative_prompt=None, prompt_embeds=embeds("p", 8, 8), prompt_attention_mask=_mask(8, 6),
              negative_prompt_embeds=embeds("n", 8, 8), negative_prompt_attention_mask=_mask(8, 2),
              height=32, width=32, frames=9, num_inference_steps=5, guidance_scale=4.5, use_resolution_binning=False,
              output_type="latent")
    return TinyFamily("sana_video", pipe, lambda p, **o: _run(p, kw, o), kwargs=kw)


BUILDERS: dict[str, Callable[[], TinyFamily]] = {
    "wan_t2v": build_wan_t2v,
    "wan_i2v": build_wan_i2v,
    "wan_ti2v": build_wan_ti2v,
    "wan_vace": build_wan_vace,
    "skyreels_v2": build_skyreels_v2,
    "skyreels_v2_df": build_skyreels_v2_df,
    "hunyuan_video": build_hunyuan_video,
    "hunyuan_video15": build_hunyuan_video15,
    "cogvideox_ddim": build_cogvideox_ddim,
    "cogvideox_dpm": build_cogvideox_dpm,
    "ltx": build_ltx,
    "ltx2": build_ltx2,
    "mochi": build_mochi,
    "mochi_noinvert": build_mochi_noinvert,
    "allegro": build_allegro,
    "easyanimate": build_easyanimate,
    "sana_video": build_sana_video,
}


# --------------------------------------------------------------------------------------------------------------
# Instrumentation used by the facts test (temporary hooks; everything is removed on exit)
# --------------------------------------------------------------------------------------------------------------
def _shape(x: Any) -> Any:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else None


@dataclasses.dataclass
class StepCall:
    scheduler: str            # "pipe" (pipe.scheduler itself) or "copy<k>" (another instance of the same class)
    positional: tuple         # names of the arguments passed positionally, in order
    keyword: tuple            # names passed by keyword, in order
    model_output: torch.Tensor
    sample: torch.Tensor
    timestep: Any
    out: Any                  # what step returned
    x0_own: torch.Tensor | None  # the scheduler's own x0 for this step (see FACTS[...]["x0_own"])
    sigma: float | None       # the scheduler's sigma for this step (sigmas[step_index] before the step)
    sigma_next: float | None
    sample_is_view: bool      # sample does not own its storage (a slice of a larger tensor)


@dataclasses.dataclass
class DitCall:
    expert: str
    hidden_positional: bool
    hidden_states: tuple
    hidden_dtype: torch.dtype
    timestep: Any
    encoder_hidden_states: torch.Tensor | None
    output: tuple
    extra: dict               # shapes of the other tensor keyword arguments (control states, masks, audio, ...)


class Recorder:
    """Wrap ``step`` on the *class* of ``pipe.scheduler`` (so scheduler copies made inside ``__call__`` are seen
    too) and put a forward hook on every expert. Events are kept in call order; everything is removed on exit."""

    def __init__(self, fam: TinyFamily):
        self.fam = fam
        self.events: list[Any] = []
        self._handles: list[Any] = []
        self._cls = None
        self._orig = None
        self._ids: dict[int, str] = {}

    def steps(self, who: str | None = "pipe") -> list[StepCall]:
        return [e for e in self.events if isinstance(e, StepCall) and (who is None or e.scheduler == who)]

    def dit_calls(self) -> list[DitCall]:
        return [e for e in self.events if isinstance(e, DitCall)]

    def __enter__(self) -> "Recorder":
        import inspect

        pipe = self.fam.pipe
        cls = type(pipe.scheduler)
        self._own = "step" in cls.__dict__  # restore exactly what was there (an inherited step is not copied down)
        orig = getattr(cls, "step")
        sig = inspect.signature(orig)
        names = list(sig.parameters)[1:]
        rec = self

        # functools.wraps matters: CogVideoX / Allegro / EasyAnimate / Sana-Video decide whether to pass `eta` and
        # `generator` from inspect.signature(self.scheduler.step), which follows __wrapped__.
        @functools.wraps(orig)
        def step(sched, *args, **kwargs):
            if sched is pipe.scheduler:
                who = "pipe"
            else:
                who = rec._ids.setdefault(id(sched), f"copy{len(rec._ids)}")
            bound = sig.bind(sched, *args, **kwargs).arguments
            mo = bound.get("model_output")
            sample = bound.get("sample")
            sched_sigmas = getattr(sched, "sigmas", None)
            out = orig(sched, *args, **kwargs)
            sigma = sigma_next = None
            si = getattr(sched, "_step_index", None)
            if si is not None and sched_sigmas is not None and sched_sigmas.ndim == 1 and si - 1 >= 0:
                sigma = float(sched.sigmas[si - 1])
                sigma_next = float(sched.sigmas[si]) if si < len(sched.sigmas) else None
            x0 = None
            if hasattr(sched, "model_outputs"):  # UniPC / DPM-Solver++: convert_model_output's x0, kept for the solver
                x0 = sched.model_outputs[-1].detach().clone()
            elif isinstance(out, tuple) and len(out) > 1:  # CogVideoX DDIM/DPM, EulerAncestral: (prev, x0)
                x0 = out[1].detach().clone()
            rec.events.append(StepCall(
                scheduler=who, positional=tuple(names[: len(args)]), keyword=tuple(kwargs),
                model_output=mo.detach().clone(), sample=sample.detach().clone(), timestep=bound.get("timestep"),
                out=tuple(o.detach().clone() if isinstance(o, torch.Tensor) else o for o in out)
                if isinstance(out, tuple) else out,
                x0_own=x0, sigma=sigma, sigma_next=sigma_next,
                sample_is_view=sample._base is not None))
            return out

        self._cls, self._orig = cls, orig
        cls.step = step
        for name in self.fam.experts:
            module = getattr(pipe, name)
            self._handles.append(module.register_forward_hook(self._fwd_hook(name), with_kwargs=True))
        return self

    def _fwd_hook(self, name: str):
        def hook(module, args, kwargs, output):
            hs = kwargs.get("hidden_states", args[0] if args else None)
            ts = kwargs.get("timestep", args[1] if len(args) > 1 else None)
            out = output[0] if isinstance(output, (tuple, list)) else getattr(output, "sample", output)
            outs = tuple(_shape(o) for o in output) if isinstance(output, tuple) else (_shape(out),)
            ehs = kwargs.get("encoder_hidden_states")
            self.events.append(DitCall(
                expert=name, hidden_positional="hidden_states" not in kwargs, hidden_states=_shape(hs),
                hidden_dtype=hs.dtype, timestep=ts.detach().clone() if isinstance(ts, torch.Tensor) else ts,
                encoder_hidden_states=ehs.detach().clone() if isinstance(ehs, torch.Tensor) else None, output=outs,
                extra={k: _shape(v) for k, v in kwargs.items() if isinstance(v, torch.Tensor)
                       and k not in ("hidden_states", "timestep", "encoder_hidden_states")}))
        return hook

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._cls is not None:
            if self._own:
                self._cls.step = self._orig
            else:
                del self._cls.step
            self._cls = None


# --------------------------------------------------------------------------------------------------------------
# FACTS: what an adapter needs, per family. Paths in "evidence" are relative to site-packages/diffusers/ (0.42.1).
#
# Keys used by tests/test_video_families_facts.py (the rest is documentation):
#   experts            expert attributes on the pipeline, high-noise first
#   step.scheduler     "pipe" = pipe.scheduler.step is called; "copies" = only deep copies of it are stepped
#   step.positional / step.keyword   argument names as the pipeline passes them, in order
#   step.model_output / step.sample  layout string, and shape in the tiny run ("tiny")
#   step.calls         number of step calls in the tiny run (on the scheduler(s) named by step.scheduler)
#   x0.kind            how the test obtains the scheduler's own x0: "model_outputs" (UniPC / DPM-Solver++:
#                      scheduler.model_outputs[-1] after step), "out1" (step returned (prev, x0)), "flow" (no x0
#                      is stored: x0 = sample - s * v with s = sigmas[step_index - 1] after the step), "flow_inverted"
#                      (x0 = sample + (1 - s) * v)
#   cfg.calls_per_step / cfg.batch  DiT calls between two pipe steps and their batch sizes (batch size 1 prompt)
#   cfg.order          which prompt each call / batch half carries, in order
#   dit.hidden_states / dit.timestep / dit.timestep_dtype / dit.hidden_positional  first DiT call, tiny run
# --------------------------------------------------------------------------------------------------------------
_W = "pipelines/wan/pipeline_wan.py"
_WI = "pipelines/wan/pipeline_wan_i2v.py"
_WV = "pipelines/wan/pipeline_wan_vace.py"
_SK = "pipelines/skyreels_v2/pipeline_skyreels_v2.py"
_SKD = "pipelines/skyreels_v2/pipeline_skyreels_v2_diffusion_forcing.py"
_HV = "pipelines/hunyuan_video/pipeline_hunyuan_video.py"
_HV15 = "pipelines/hunyuan_video1_5/pipeline_hunyuan_video1_5.py"
_COG = "pipelines/cogvideo/pipeline_cogvideox.py"
_LTX = "pipelines/ltx/pipeline_ltx.py"
_LTX2 = "pipelines/ltx2/pipeline_ltx2.py"
_MO = "pipelines/mochi/pipeline_mochi.py"
_AL = "pipelines/allegro/pipeline_allegro.py"
_EA = "pipelines/easyanimate/pipeline_easyanimate.py"
_SV = "pipelines/sana_video/pipeline_sana_video.py"
_UNI = "schedulers/scheduling_unipc_multistep.py"
_DPM = "schedulers/scheduling_dpmsolver_multistep.py"
_FM = "schedulers/scheduling_flow_match_euler_discrete.py"
_CDDIM = "schedulers/scheduling_ddim_cogvideox.py"
_CDPM = "schedulers/scheduling_dpm_cogvideox.py"
_EA_S = "schedulers/scheduling_euler_ancestral_discrete.py"

_STEP3 = dict(positional=["model_output", "timestep", "sample"], keyword=["return_dict"], return_dict=False)
_STEP3_EXTRA = dict(positional=["model_output", "timestep", "sample"], keyword=["generator", "return_dict"],
                    return_dict=False)  # `generator`/`eta` added by prepare_extra_step_kwargs via inspect.signature

_UNIPC_FLOW = dict(
    scheduler="UniPCMultistepScheduler",
    config=dict(prediction_type="flow_prediction", use_flow_sigmas=True, solver_order=2, predict_x0=True),
    sigmas="1 -> 0: flow sigmas shifted by flow_shift, 0 appended; kept on the CPU",
    model_predicts="flow velocity v = eps - x0 (x_t = (1 - s) x0 + s eps)",
    x0=dict(kind="model_outputs",
            recipe="scheduler.model_outputs[-1] right after step (clone: overwritten next step) == sample - s * v, "
                   "s = scheduler.sigmas[step_index - 1] after the step; computed from the sample passed in, before "
                   "UniPC's corrector rewrites `sample` inside step",
            evidence=f"{_UNI}:807 (x0_pred = sample - sigma_t * model_output), {_UNI}:1192-1205 (corrector, "
                     f"model_outputs[-1] = x0), {_UNI}:1227 (_step_index += 1)"),
)
_FLOW_EULER = dict(
    scheduler="FlowMatchEulerDiscreteScheduler",
    model_predicts="flow velocity v = eps - x0 (x_t = (1 - s) x0 + s eps)",
    sigmas="1 -> 0, 0 appended (invert_sigmas=False)",
    x0=dict(kind="flow",
            recipe="not stored: x0 = sample - s * v with s = scheduler.sigmas[step_index] before the step "
                   "(= sigmas[step_index - 1] after it); step is plain Euler prev = sample + (s_next - s) * v",
            evidence=f"{_FM}:508 (sigma = self.sigmas[sigma_idx]), {_FM}:520 (prev = sample + dt * model_output), "
                     f"{_FM}:493/526 (sample upcast to fp32, prev cast to model_output.dtype)"),
)


def _wan_like(**over) -> dict:
    d = dict(step=dict(scheduler="pipe", **_STEP3, calls=None, model_output=dict(layout="b c f h w"),
                       sample=dict(layout="b c f h w")),
             **_UNIPC_FLOW,
             cfg=dict(calls_per_step=2, batch=[1, 1], mode="sequential", order=["cond", "uncond"],
                      combine="uncond + g * (cond - uncond) on the velocity, before step; g = guidance_scale "
                              "(guidance_scale_2 while transformer_2 runs)"))
    d.update(over)
    return d


FACTS: dict[str, dict] = {
    "wan_t2v": _wan_like(
        pipeline="WanPipeline",
        experts=["transformer", "transformer_2"],
        expert_rule="transformer (high noise) while t >= boundary_ratio * scheduler.config.num_train_timesteps "
                    "(t is the int64 scheduler timestep), else transformer_2; transformer_2 uses guidance_scale_2",
        step=dict(scheduler="pipe", **_STEP3, calls=6, model_output=dict(layout="b c f h w", tiny=(1, 16, 3, 4, 4)),
                  sample=dict(layout="b c f h w", tiny=(1, 16, 3, 4, 4)),
                  note="latents kept float32; DiT input is latents.to(transformer_dtype); F=(num_frames-1)//4+1, "
                       "H=height//8, W=width//8 (prepare_latents)"),
        dit=dict(hidden_states=(1, 16, 3, 4, 4), hidden_positional=False, timestep=(1,), timestep_dtype="int64"),
        tricky=["two experts switched inside the loop by timestep; set_begin_index(0) is called",
                "UniPC rewrites `sample` (corrector) inside step; x0 uses the sample passed in",
                "model_outputs[-1] is overwritten every step: clone it",
                "scheduler.sigmas live on the CPU; step_index has advanced when step returns"],
        evidence=dict(experts=f"{_W}:585-604", step=f"{_W}:641", cfg=f"{_W}:620-638", latents=f"{_W}:559-570,606",
                      timestep=f"{_W}:607-613"),
    ),
    "wan_i2v": _wan_like(
        pipeline="WanImageToVideoPipeline",
        experts=["transformer", "transformer_2"],
        expert_rule="as WanPipeline (Wan2.2 I2V-A14B: boundary_ratio 0.9); Wan2.1 I2V has one expert plus a CLIP "
                    "image encoder (image_dim set -> encoder_hidden_states_image); image_embeds + boundary_ratio "
                    "raises",
        step=dict(scheduler="pipe", **_STEP3, calls=6, model_output=dict(layout="b c f h w", tiny=(1, 16, 3, 4, 4)),
                  sample=dict(layout="b c f h w", tiny=(1, 16, 3, 4, 4))),
        dit=dict(hidden_states=(1, 36, 3, 4, 4), hidden_positional=False, timestep=(1,), timestep_dtype="int64"),
        tricky=["DiT input is cat([latents(16), mask(4), first-frame condition latents(16)], dim=1) = 36 channels; "
                "step sees only the 16 noisy channels",
                "no set_begin_index: UniPC finds its index from the timestep",
                "the VAE encoder runs once (conditioning video = image + zero frames)"],
        evidence=dict(experts=f"{_WI}:742-761", concat=f"{_WI}:772 and {_WI}:484", step=f"{_WI}:798",
                      cfg=f"{_WI}:775-795", image_embeds=f"{_WI}:697-704,393"),
    ),
    "wan_ti2v": _wan_like(
        pipeline="WanImageToVideoPipeline(expand_timesteps=True)  [Wan2.2 TI2V-5B]",
        experts=["transformer"],
        expert_rule="one expert",
        step=dict(scheduler="pipe", **_STEP3, calls=5, model_output=dict(layout="b c f h w", tiny=(1, 16, 3, 4, 4)),
                  sample=dict(layout="b c f h w", tiny=(1, 16, 3, 4, 4))),
        dit=dict(hidden_states=(1, 16, 3, 4, 4), hidden_positional=False, timestep=(1, 12), timestep_dtype="float32"),
        tricky=["DiT timestep is per token [B, F*(H/2)*(W/2)] float32, 0 on the first latent frame, t elsewhere; "
                "step still gets the scalar int64 t",
                "DiT input = (1 - mask) * condition + mask * latents: latent frame 0 is replaced by the encoded image; "
                "the scheduler keeps stepping frame 0 of `latents` (its x_t / x0 there are meaningless) and the "
                "output is blended with the condition after the loop",
                "WanPipeline(expand_timesteps=True) (TI2V text-only) has the same per-token timestep, without the "
                "blend"],
        evidence=dict(timestep=f"{_WI}:763-770", blend=f"{_WI}:764, {_WI}:819-820", step=f"{_WI}:798",
                      t2v=f"{_W}:607-611"),
    ),
    "wan_vace": _wan_like(
        pipeline="WanVACEPipeline",
        experts=["transformer"],
        expert_rule="one expert here; accepts transformer_2 + boundary_ratio with the WanPipeline rule",
        step=dict(scheduler="pipe", **_STEP3, calls=5, model_output=dict(layout="b c f h w", tiny=(1, 16, 4, 4, 4)),
                  sample=dict(layout="b c f h w", tiny=(1, 16, 4, 4, 4))),
        dit=dict(hidden_states=(1, 16, 4, 4, 4), hidden_positional=False, timestep=(1,), timestep_dtype="int64",
                 extra={"control_hidden_states": (1, 96, 4, 4, 4), "control_hidden_states_scale": (2,)}),
        tricky=["reference images are extra LEADING latent frames: latents have F = (num_frames-1)//4+1 + "
                "num_reference_images, and output_type='latent' returns them (they are cut only before decoding)",
                "control video + mask go in control_hidden_states (96 ch), not concatenated to hidden_states",
                "the VAE encoder runs on the control video and the reference image"],
        evidence=dict(experts=f"{_WV}:954-973", refs=f"{_WV}:921,938,1025", control=f"{_WV}:925,983",
                      step=f"{_WV}:1003", cfg=f"{_WV}:978-1000"),
    ),
    "skyreels_v2": _wan_like(
        pipeline="SkyReelsV2Pipeline",
        experts=["transformer"],
        expert_rule="one expert (SkyReelsV2Transformer3DModel)",
        step=dict(scheduler="pipe", **_STEP3, calls=5, model_output=dict(layout="b c f h w", tiny=(1, 16, 3, 4, 4)),
                  sample=dict(layout="b c f h w", tiny=(1, 16, 3, 4, 4))),
        dit=dict(hidden_states=(1, 16, 3, 4, 4), hidden_positional=False, timestep=(1,), timestep_dtype="int64"),
        tricky=["same loop as Wan T2V with one expert (shipped with UniPC flow_shift 8 for T2V)"],
        evidence=dict(step=f"{_SK}:574", cfg=f"{_SK}:553-571", timestep=f"{_SK}:551"),
    ),
    "skyreels_v2_df": _wan_like(
        pipeline="SkyReelsV2DiffusionForcingPipeline",
        experts=["transformer"],
        expert_rule="one expert",
        step=dict(scheduler="copies", **_STEP3, calls=16,
                  model_output=dict(layout="b c h w (one latent frame: noise_pred[:, :, idx - start])",
                                    tiny=(1, 16, 4, 4)),
                  sample=dict(layout="b c h w (a view latents[:, :, idx])", tiny=(1, 16, 4, 4)),
                  note="pipe.scheduler.step is never called: one deepcopy(pipe.scheduler) per latent frame, each "
                       "stepped only on the iterations where that frame's update mask is set"),
        dit=dict(hidden_states=(1, 16, 4, 4, 4), hidden_positional=False, timestep=(1, 4), timestep_dtype="int64"),
        cfg=dict(calls_per_step=2, batch=[1, 1], mode="sequential", order=["cond", "uncond"],
                 combine="uncond + g * (cond - uncond) over the whole window, then per-frame steps",
                 note="'per step' = per step_matrix iteration (10 iterations for 4 steps x 4 frames, ar_step=2)"),
        tricky=["per-frame schedulers are deep copies made inside __call__: an interception installed on the "
                "pipe.scheduler *instance* is copied with it (it fires for every frame's step, and cannot tell frames "
                "apart); pipe.scheduler itself never advances",
                "step gets a 4-D frame slice; the result is written back IN PLACE: latents[:, :, idx] = ...",
                "DiT timestep is [B, F_window] (per latent frame): finished frames ride along at t=0, not-yet-started "
                "frames at t=999; the window is latents[:, :, valid_interval]",
                "len(step_matrix) iterations > num_inference_steps when ar_step > 0; several frame steps per DiT call",
                "long videos (overlap_history) re-create latents per chunk; addnoise_condition noises prefix frames in "
                "the DiT input only"],
        evidence=dict(copies=f"{_SKD}:845-848", step=f"{_SKD}:912-920", window=f"{_SKD}:868-874",
                      matrix=f"{_SKD}:851-858", cfg=f"{_SKD}:887-910"),
    ),
    "hunyuan_video": dict(
        pipeline="HunyuanVideoPipeline",
        experts=["transformer"],
        expert_rule="one expert",
        step=dict(scheduler="pipe", **_STEP3, calls=5, model_output=dict(layout="b c f h w", tiny=(1, 4, 3, 4, 4)),
                  sample=dict(layout="b c f h w", tiny=(1, 4, 3, 4, 4))),
        **_FLOW_EULER,
        config=dict(shift=7.0, invert_sigmas=False, use_dynamic_shifting=False),
        dit=dict(hidden_states=(1, 4, 3, 4, 4), hidden_positional=False, timestep=(1,), timestep_dtype="float32",
                 extra={"encoder_attention_mask": (1, 8), "pooled_projections": (1, 8), "guidance": (1,)}),
        cfg=dict(calls_per_step=2, batch=[1, 1], mode="sequential", order=["cond", "uncond"],
                 combine="neg + true_cfg_scale * (cond - neg), only if true_cfg_scale > 1 and negative embeds are "
                         "given; otherwise ONE call per step with the distilled guidance only",
                 note="guidance_scale is not CFG: it is embedded (guidance = guidance_scale * 1000 -> the DiT's "
                      "guidance embedder) on every call"),
        tricky=["sigmas passed explicitly (linspace(1, 0, N+1)[:-1]) then shifted by shift=7",
                "timestep cast to latents.dtype (float32)"],
        evidence=dict(true_cfg=f"{_HV}:581-584,691-702", guidance=f"{_HV}:659", step=f"{_HV}:705",
                      sigmas=f"{_HV}:635-641", timestep=f"{_HV}:676"),
    ),
    "hunyuan_video15": dict(
        pipeline="HunyuanVideo15Pipeline",
        experts=["transformer"],
        expert_rule="one expert",
        step=dict(scheduler="pipe", **_STEP3, calls=5, model_output=dict(layout="b c f h w", tiny=(1, 4, 3, 4, 4)),
                  sample=dict(layout="b c f h w", tiny=(1, 4, 3, 4, 4))),
        **_FLOW_EULER,
        config=dict(shift=7.0, invert_sigmas=False),
        dit=dict(hidden_states=(1, 9, 3, 4, 4), hidden_positional=False, timestep=(1,), timestep_dtype="float32",
                 extra={"image_embeds": (1, 729, 12), "encoder_hidden_states_2": (1, 6, 32)}),
        cfg=dict(calls_per_step=2, batch=[1, 1], mode="sequential", order=["cond", "uncond"],
                 combine="in the `guider` component (ClassifierFreeGuidance): uncond + scale * (cond - uncond) "
                         "(cond + ... with use_original_formulation; optional guidance_rescale); the guider can switch "
                         "CFG off for some steps (start/stop), giving one call; no guidance_scale argument on "
                         "__call__"),
        tricky=["DiT input = cat([latents(C), cond_latents(C, zeros for T2V), mask(1)], dim=1) = 2C+1 channels",
                "image_embeds = zeros [B, 729, image_embed_dim] for T2V", "no set_begin_index"],
        evidence=dict(concat=f"{_HV15}:737", guider=f"{_HV15}:762-803 and guiders/classifier_free_guidance.py:97,"
                      "114-127", step=f"{_HV15}:807", image_embeds=f"{_HV15}:719"),
    ),
}

_COG_COMMON = dict(
    experts=["transformer"],
    expert_rule="one expert",
    model_predicts="v (v-prediction on a VP schedule: alphas_cumprod with snr_shift_scale and zero-terminal SNR)",
    sigmas="no sigma table is used by step: int64 timesteps 999 -> 0 ('trailing'), alpha_prod_t = "
           "alphas_cumprod[t]; prev t = t - 1000 // num_inference_steps",
    dit=dict(hidden_states=(2, 3, 4, 4, 4), hidden_positional=False, timestep=(2,), timestep_dtype="int64"),
    cfg=dict(calls_per_step=1, batch=[2], mode="batched", order=["uncond", "cond"],
             combine="noise_pred.chunk(2) -> (uncond, text): uncond + g * (text - uncond), in float32, before step; "
                     "use_dynamic_cfg=True makes g vary per step"),
)
_COG_TRICKY = ["latents are [B, F, C, H, W] (frames BEFORE channels) everywhere, DiT included; decode_latents permutes",
               "noise_pred is cast to float32; latents are cast back to prompt_embeds.dtype after each step",
               "step returns (prev_sample, pred_original_sample); the pipeline keeps [0] (DDIM)",
               "the pipeline passes eta / generator only if inspect.signature(scheduler.step) lists them: a step "
               "wrapper must keep the signature (functools.wraps), or CogVideoXDPMScheduler silently loses the "
               "generator and the run changes",
               "CogVideoX 1.5 (patch_size_t set) pads latent frames at the front; not stripped in output_type='latent'"]

FACTS.update({
    "cogvideox_ddim": dict(
        pipeline="CogVideoXPipeline + CogVideoXDDIMScheduler",
        step=dict(scheduler="pipe", positional=["model_output", "timestep", "sample"],
                  keyword=["eta", "generator", "return_dict"], return_dict=False, calls=5,
                  model_output=dict(layout="b f c h w", tiny=(1, 3, 4, 4, 4)),
                  sample=dict(layout="b f c h w", tiny=(1, 3, 4, 4, 4))),
        scheduler="CogVideoXDDIMScheduler",
        config=dict(prediction_type="v_prediction", timestep_spacing="trailing", rescale_betas_zero_snr=True,
                    snr_shift_scale=3.0, set_alpha_to_one=True),
        x0=dict(kind="out1",
                recipe="step(..., return_dict=False) returns (prev, pred_original_sample); x0 = out[1] = "
                       "sqrt(a) * sample - sqrt(1 - a) * v, a = scheduler.alphas_cumprod[t]",
                evidence=f"{_CDDIM}:391,406,419-423"),
        **_COG_COMMON,
        tricky=_COG_TRICKY + ["deterministic (eta is accepted and unused)"],
        evidence=dict(cfg=f"{_COG}:667,723-748", step=f"{_COG}:751-752", extra_kwargs=f"{_COG}:365-374",
                      layout=f"{_COG}:334-340", cast=f"{_COG}:739,763"),
    ),
    "cogvideox_dpm": dict(
        pipeline="CogVideoXPipeline + CogVideoXDPMScheduler (CogVideoX-5b-style, rotary embeddings)",
        step=dict(scheduler="pipe",
                  positional=["model_output", "old_pred_original_sample", "timestep", "timestep_back", "sample"],
                  keyword=["eta", "generator", "return_dict"], return_dict=False, calls=5,
                  model_output=dict(layout="b f c h w", tiny=(1, 3, 4, 4, 4)),
                  sample=dict(layout="b f c h w", tiny=(1, 3, 4, 4, 4)),
                  note="old_pred_original_sample = the x0 this scheduler returned on the previous step (None first); "
                       "timestep_back = timesteps[i - 1], the PREVIOUS (larger) timestep (None first)"),
        scheduler="CogVideoXDPMScheduler",
        config=dict(prediction_type="v_prediction", timestep_spacing="trailing", rescale_betas_zero_snr=True,
                    snr_shift_scale=3.0),
        x0=dict(kind="out1",
                recipe="out[1] (pred_original_sample) = sqrt(a) * sample - sqrt(1 - a) * v; the same tensor comes "
                       "back as old_pred_original_sample on the next call",
                evidence=f"{_CDPM}:486,501-503,516-517"),
        **_COG_COMMON,
        tricky=_COG_TRICKY + ["stochastic: draws noise from the pipeline generator in every step (twice after the "
                              "first step: the first draw is discarded by the 2nd-order branch)",
                              "the last step (prev t < 0) and the first take the 1st-order return path"],
        evidence=dict(step=f"{_COG}:753-762", sched=f"{_CDPM}:401-517", cfg=f"{_COG}:723-748"),
    ),
    "ltx": dict(
        pipeline="LTXPipeline",
        experts=["transformer"],
        expert_rule="one expert",
        step=dict(scheduler="pipe", **_STEP3, calls=5,
                  model_output=dict(layout="b (f h w) (c pt p p) packed tokens", tiny=(1, 192, 8)),
                  sample=dict(layout="b (f h w) (c pt p p) packed tokens", tiny=(1, 192, 8)),
                  note="f = (num_frames-1)//vae_temporal+1, h = height//vae_spatial, w = width//vae_spatial "
                       "(pipeline_ltx.py:722-724), divided by patch_size_t / patch_size; unpack with "
                       "LTXPipeline._unpack_latents(x, f, h, w, patch_size, patch_size_t) -> [B, C, F, H, W]"),
        **_FLOW_EULER,
        config=dict(use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, base_image_seq_len=1024,
                    max_image_seq_len=4096, shift_terminal=0.1),
        dit=dict(hidden_states=(2, 192, 8), hidden_positional=False, timestep=(2,), timestep_dtype="float32"),
        cfg=dict(calls_per_step=1, batch=[2], mode="batched", order=["uncond", "cond"],
                 combine="chunk(2) -> uncond + g * (text - uncond) (float32), optional rescale_noise_cfg "
                         "(guidance_rescale)"),
        tricky=["output_type='latent' returns the PACKED [B, S, C] tokens (still normalized), unlike LTX-2",
                "sigmas = linspace(1, 1/N, N) + resolution-dependent mu + shift_terminal: the last sigma is 0.1, "
                "then 0", "no set_begin_index", "DiT also takes num_frames/height/width/rope_interpolation_scale"],
        evidence=dict(pack=f"{_LTX}:420-455,502", cfg=f"{_LTX}:704,764-794", step=f"{_LTX}:796",
                      sigmas=f"{_LTX}:726-742", latent_out=f"{_LTX}:814-815"),
    ),
    "ltx2": dict(
        pipeline="LTX2Pipeline",
        experts=["transformer"],
        expert_rule="one expert; it returns (video, audio) predictions",
        step=dict(scheduler="pipe", **_STEP3, calls=4,
                  model_output=dict(layout="b (f h w) (c pt p p) packed video tokens", tiny=(1, 48, 4)),
                  sample=dict(layout="b (f h w) (c pt p p) packed video tokens", tiny=(1, 48, 4)),
                  audio=dict(layout="b l (c m) on a deepcopy `audio_scheduler`", tiny=(1, 5, 4)),
                  note="f/h/w: pipeline_ltx2.py:1272-1274; unpack with LTX2Pipeline._unpack_latents"),
        **_FLOW_EULER,
        config=dict(use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, shift_terminal=0.1),
        dit=dict(hidden_states=(2, 48, 4), hidden_positional=False, timestep=(2,), timestep_dtype="float32",
                 extra={"audio_hidden_states": (2, 5, 4)}),
        cfg=dict(calls_per_step=3, batch=[2, 1, 1], mode="batched+extra",
                 order=["uncond|cond (batched)", "cond with STG-perturbed blocks", "cond with modalities isolated"],
                 combine="in x0 space: x0_c + (g-1)(x0_c - x0_u) + stg*(x0_c - x0_stg) + (m-1)(x0_c - x0_iso), then "
                         "rescale_noise_cfg(guidance_rescale), then converted back to a velocity for step "
                         "((sample - x0)/sigma); audio the same with its own scales"),
        tricky=["audio_scheduler = copy.deepcopy(pipe.scheduler) inside __call__: the same scheduler class is stepped "
                "twice per iteration (video on pipe.scheduler, audio on the copy); an interception on the "
                "pipe.scheduler instance is copied too and fires for the audio step",
                "step's model_output is a velocity reconstructed from a guided x0 (v -> x0 -> guide -> v)",
                "3 DiT calls per step with batch 2, 1, 1 (STG on by default, block 28; modality_scale 3 by default)",
                "output_type='latent' returns UNPACKED, denormalized [B, C, F, H, W] video (and audio) latents",
                "height/width must be multiples of 32"],
        evidence=dict(copy=f"{_LTX2}:1354", cfg=f"{_LTX2}:1245,1404-1448,1486-1568", combine=f"{_LTX2}:1570-1589",
                      x0=f"{_LTX2}:851-866", step=f"{_LTX2}:1593-1596", latent_out=f"{_LTX2}:1614-1634"),
    ),
})

_MOCHI_COMMON = dict(
    experts=["transformer"],
    expert_rule="one expert",
    step=dict(scheduler="pipe", **_STEP3, calls=6, model_output=dict(layout="b c f h w", tiny=(1, 12, 3, 4, 4)),
              sample=dict(layout="b c f h w", tiny=(1, 12, 3, 4, 4)),
              note="step gets latents.to(float32) and a float32 noise_pred; the result is cast back to the latents "
                   "dtype (= prompt_embeds dtype); F = (num_frames-1)//6+1, H = height//8"),
    scheduler="FlowMatchEulerDiscreteScheduler",
    dit=dict(hidden_states=(2, 12, 3, 4, 4), hidden_positional=False, timestep=(2,), timestep_dtype="float32"),
    cfg=dict(calls_per_step=1, batch=[2], mode="batched", order=["uncond", "cond"],
             combine="chunk(2) -> uncond + g * (text - uncond) in float32"),
)

FACTS.update({
    "mochi": dict(
        pipeline="MochiPipeline (scheduler invert_sigmas=True, as shipped)",
        **_MOCHI_COMMON,
        config=dict(invert_sigmas=True, shift=1.0),
        sigmas="scheduler.sigmas run 0 -> 1 (s = 1 - noise level; 1 appended); timesteps = 1000 * s run UP from 0 "
               "and are fed to the DiT as is; the pipeline's schedule is 1 - linear_quadratic (tiny first steps)",
        model_predicts="x0 - eps (= -(flow velocity)); x_t = s x0 + (1 - s) eps",
        x0=dict(kind="flow_inverted",
                recipe="not stored: x0 = sample + (1 - s) * v, s = scheduler.sigmas[step_index] before the step "
                       "(sigmas[step_index - 1] after); eps = sample - s * v",
                evidence=f"{_FM}:381-384 (invert), {_FM}:508-520 (Euler), {_MO}:61-75,618 (schedule)"),
        tricky=["sigma direction is inverted: reading `sigmas[step_index]` as the noise level is wrong by 1 - s",
                "_current_timestep is 1000 - t (for caching helpers), not the t given to the DiT",
                "latents float32 for step, cast back to prompt_embeds.dtype after"],
        evidence=dict(cfg=f"{_MO}:612,647-665", step=f"{_MO}:668-670", schedule=f"{_MO}:616-630",
                      current=f"{_MO}:646"),
    ),
    "mochi_noinvert": dict(
        pipeline="MochiPipeline with FlowMatchEulerDiscreteScheduler(invert_sigmas=False) (not a shipped config)",
        **_MOCHI_COMMON,
        config=dict(invert_sigmas=False, shift=1.0),
        sigmas="1 -> 0 (0 appended), timesteps fall from 1000",
        model_predicts="eps - x0 (same pipeline code: the convention is the scheduler config's)",
        x0=dict(kind="flow", recipe="x0 = sample - s * v", evidence=f"{_FM}:386,508-520"),
        tricky=["an adapter must key the sign convention on scheduler.config.invert_sigmas, not on the pipeline class"],
        evidence=dict(step=f"{_MO}:669"),
    ),
    "allegro": dict(
        pipeline="AllegroPipeline",
        experts=["transformer"],
        expert_rule="one expert",
        step=dict(scheduler="pipe", **_STEP3_EXTRA, calls=5,
                  model_output=dict(layout="b c f h w", tiny=(1, 4, 3, 4, 4)),
                  sample=dict(layout="b c f h w", tiny=(1, 4, 3, 4, 4))),
        scheduler="EulerAncestralDiscreteScheduler",
        config=dict(prediction_type="epsilon", beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
                    timestep_spacing="linspace"),
        sigmas="k-diffusion sigmas sqrt((1 - a)/a) run ~157 -> 0 (0 appended); float timesteps 999 -> 0",
        model_predicts="eps, in the variance-EXPLODING parameterisation: sample x = x0 + sigma * eps (the VP latent "
                       "is x / sqrt(sigma^2 + 1), which is what the DiT sees after scale_model_input)",
        x0=dict(kind="out1",
                recipe="step(..., return_dict=False) returns (prev, pred_original_sample): x0 = out[1] = sample - "
                       "sigma * eps, sigma = scheduler.sigmas[step_index - 1] after the step",
                evidence=f"{_EA_S}:427-434,467-472"),
        dit=dict(hidden_states=(2, 4, 3, 4, 4), hidden_positional=False, timestep=(2,), timestep_dtype="float32"),
        cfg=dict(calls_per_step=1, batch=[2], mode="batched", order=["uncond", "cond"],
                 combine="chunk(2) -> uncond + g * (text - uncond), before step"),
        tricky=["the DiT input is scale_model_input(x) = x / sqrt(sigma^2 + 1), not the `sample` step receives",
                "initial noise is multiplied by init_noise_sigma (= sigma_max ~157 with 'linspace')",
                "ancestral sampling: step draws noise from the pipeline generator",
                "encoder_hidden_states are [B, 1, L, D]", "set_timesteps is called twice (retrieve_timesteps + again)",
                "latent frames: ceil(num_frames/4) if num_frames is even else ceil((num_frames-1)/4)+1"],
        evidence=dict(cfg=f"{_AL}:832-835,879-898", step=f"{_AL}:901", scale=f"{_AL}:880 and {_EA_S}:280-281",
                      init=f"{_AL}:605 and {_EA_S}:229-234", frames=f"{_AL}:585-590", timesteps=f"{_AL}:841-845"),
    ),
    "easyanimate": dict(
        pipeline="EasyAnimatePipeline",
        experts=["transformer"],
        expert_rule="one expert",
        step=dict(scheduler="pipe", **_STEP3_EXTRA, calls=5,
                  model_output=dict(layout="b c f h w", tiny=(1, 4, 3, 4, 4)),
                  sample=dict(layout="b c f h w", tiny=(1, 4, 3, 4, 4))),
        **_FLOW_EULER,
        config=dict(shift=3.0, use_dynamic_shifting=True, time_shift_type="exponential"),
        dit=dict(hidden_states=(2, 4, 3, 4, 4), hidden_positional=True, timestep=(2,), timestep_dtype="float32"),
        cfg=dict(calls_per_step=1, batch=[2], mode="batched", order=["uncond", "cond"],
                 combine="chunk(2) -> uncond + g * (text - uncond), optional rescale_noise_cfg (guidance_rescale)"),
        tricky=["the DiT is called with hidden_states and timestep POSITIONALLY: transformer(x, t, "
                "encoder_hidden_states=...): a forward hook must read args, not kwargs",
                "retrieve_timesteps(..., mu=1) with use_dynamic_shifting=True: sigmas = exp(1)/(exp(1) + 1/s - 1)",
                "a DiT output with 2x latent channels is chunked (learned sigma) before CFG",
                "timestep is built with torch.tensor([t] * B) (float)"],
        evidence=dict(call=f"{_EA}:717-727", cfg=f"{_EA}:697,712-739", step=f"{_EA}:742", mu=f"{_EA}:669-673"),
    ),
    "sana_video": dict(
        pipeline="SanaVideoPipeline",
        experts=["transformer"],
        expert_rule="one expert",
        step=dict(scheduler="pipe", **_STEP3_EXTRA, calls=5,
                  model_output=dict(layout="b c f h w", tiny=(1, 16, 3, 4, 4)),
                  sample=dict(layout="b c f h w", tiny=(1, 16, 3, 4, 4))),
        scheduler="DPMSolverMultistepScheduler",
        config=dict(algorithm_type="dpmsolver++", prediction_type="flow_prediction", use_flow_sigmas=True,
                    flow_shift=8.0, solver_order=2),
        sigmas="1 -> 0 flow sigmas (shifted by flow_shift), 0 appended",
        model_predicts="flow velocity v = eps - x0",
        x0=dict(kind="model_outputs",
                recipe="scheduler.model_outputs[-1] right after step (clone) == sample - s * v, s = "
                       "sigmas[step_index - 1] after the step",
                evidence=f"{_DPM}:802-804,1248-1251,1281"),
        dit=dict(hidden_states=(2, 16, 3, 4, 4), hidden_positional=True, timestep=(2,), timestep_dtype="int64"),
        cfg=dict(calls_per_step=1, batch=[2], mode="batched", order=["uncond", "cond"],
                 combine="chunk(2) -> uncond + g * (text - uncond) in float32; learned-sigma half dropped after CFG"),
        tricky=["hidden_states passed positionally", "the frame-count argument is `frames`, not `num_frames`",
                "use_resolution_binning (default True) resizes height/width to the aspect-ratio bins"],
        evidence=dict(cfg=f"{_SV}:909,944-967", step=f"{_SV}:970", call=f"{_SV}:950-957"),
    ),
})

# Whether the pipeline calls scheduler.set_begin_index(0) before its loop. If not, scheduler.step_index is None
# until the first step (the scheduler then finds its index from the timestep), so a hook that reads
# sigmas[step_index] *before* the first step must derive the index itself. (The CogVideoX schedulers have no
# step index at all: they index alphas_cumprod by the timestep.)
_BEGIN_INDEX = {"wan_t2v": f"{_W}:583", "hunyuan_video": f"{_HV}:664", "mochi": f"{_MO}:638",
                "mochi_noinvert": f"{_MO}:638", "ltx2": f"{_LTX2}:1375-1376"}
for _name, _f in FACTS.items():
    _f["set_begin_index"] = _name in _BEGIN_INDEX
    if _name in _BEGIN_INDEX:
        _f["evidence"]["set_begin_index"] = _BEGIN_INDEX[_name]
