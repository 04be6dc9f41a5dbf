"""Tiny random-weight diffusers Wan pipelines for tests, benchmarks and the demo (needs ``diffusers``).

Nothing is downloaded: the transformer and VAE are built from small configs, and prompts are passed as
embeddings (``tiny_prompt_embeds``), so no tokenizer or text encoder is needed.
"""

from __future__ import annotations

from typing import Any

import zlib

import torch

__all__ = ["tiny_wan_pipeline", "tiny_prompt_embeds", "TEXT_DIM"]

TEXT_DIM = 32


def _transformer(seed: int) -> Any:
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16,
        text_dim=TEXT_DIM, freq_dim=256, ffn_dim=64, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    ).eval()


def tiny_wan_pipeline(two_experts: bool = True, boundary_ratio: float | None = 0.875, flow_shift: float = 3.0,
                      seed: int = 0) -> Any:
    """A ``WanPipeline`` with random tiny DiT expert(s), a tiny ``AutoencoderKLWan`` and a flow UniPC scheduler.

    two_experts=False gives a TI2V-5B-style pipeline with one ``transformer`` (boundary_ratio ignored).
    """
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True]).eval()
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=flow_shift)
    return WanPipeline(
        tokenizer=None, text_encoder=None, vae=vae, scheduler=scheduler,
        transformer=_transformer(seed + 1),
        transformer_2=_transformer(seed + 2) if two_experts else None,
        boundary_ratio=boundary_ratio if two_experts else None,
    )


def tiny_prompt_embeds(prompt: str, length: int = 8, batch: int = 1) -> torch.Tensor:
    """A deterministic [batch, length, TEXT_DIM] embedding standing in for a text encoder."""
    g = torch.Generator().manual_seed(zlib.crc32(prompt.encode()))
    return torch.randn(batch, length, TEXT_DIM, generator=g)
