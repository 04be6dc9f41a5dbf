"""A model organism: a small two-expert video DiT trained here on procedural videos (needs ``diffusers``).

``load_organism(size="v1")`` (the default) is the packaged v1 organism described below; ``size="small"`` or
``"large"`` loads organism v2 (a learned causal video VAE as ``pipe.vae``, 64×64 pixels, 81 frames, shift 12;
see ``pipeline_v2`` and docs/organism.md), its weights file checked against a recorded SHA-256.

``load_organism()`` builds a real diffusers ``WanPipeline`` around two small ``WanTransformer3DModel``
experts (high-noise above the σ boundary, low-noise below, like Wan2.2 A14B) read from
``weights/organism.safetensors``, so probes and interventions run their real code on a model whose
generations have learned temporal structure. Nothing is downloaded. See docs/organism.md.

    org = load_organism()
    latent = org.generate("a red square moving right", seed=0)     # [1, 16, 21, 16, 16]
    frames = org.decode(latent)                                    # uint8 [21, 128, 128, 3]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F_

from ..errors import LatentProbeError
from . import videos
from .model import (EXPERTS, OrganismConfig, OrganismWeightsError, build_transformer, load_weights,
                    null_embedding, prompt_embeddings)

__all__ = ["Organism", "OrganismInputError", "OrganismWeightsError", "OrganismConfig", "PROMPTS", "WEIGHTS",
           "load_organism", "random_organism", "build_pipeline", "SIZES", "OrganismV2", "random_organism_v2"]

PROMPTS = videos.PROMPTS
WEIGHTS = Path(__file__).parent / "weights" / "organism.safetensors"
DEFAULT_GUIDANCE = 4.0


class OrganismInputError(LatentProbeError, ValueError):
    """A prompt the organism was not trained on, or a latent ``decode`` cannot take."""


def build_pipeline(config: OrganismConfig, experts: dict[str, Any]) -> Any:
    """A diffusers ``WanPipeline``: the two experts, a flow UniPC scheduler (Wan's shift) and a tiny random
    ``AutoencoderKLWan`` that only supplies the VAE strides (4 in time, 8 in space); no text encoder."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=config.channels, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True]).eval()
    return wan_pipeline(config, experts, vae)


def wan_pipeline(config: Any, experts: dict[str, Any], vae: Any) -> Any:
    """``WanPipeline(vae, scheduler=UniPC flow with config.flow_shift, transformer=high_noise,
    transformer_2=low_noise, boundary_ratio=config.boundary_ratio)``, no text encoder, progress bar off."""
    from diffusers import UniPCMultistepScheduler, WanPipeline

    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=config.num_train_timesteps,
                                        flow_shift=config.flow_shift)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=scheduler,
                       transformer=experts["high_noise"], transformer_2=experts["low_noise"],
                       boundary_ratio=config.boundary_ratio)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@dataclass
class Organism:
    """The pipeline, its config, and the prompt embeddings: prompts[i] ↔ prompt_embeds[i] [text_len, text_dim]."""

    pipe: Any
    config: OrganismConfig
    prompt_embeds: torch.Tensor
    null_embeds: torch.Tensor
    prompts: tuple[str, ...] = PROMPTS
    trained: bool = True

    def index(self, prompt: str | int) -> int:
        """The class index of ``prompt`` (a training prompt, case and surrounding spaces ignored, or an index)."""
        if isinstance(prompt, int) and not isinstance(prompt, bool) and 0 <= prompt < len(self.prompts):
            return prompt
        if isinstance(prompt, str):
            wanted = " ".join(prompt.lower().split())
            for i, p in enumerate(self.prompts):
                if p == wanted:
                    return i
        raise OrganismInputError(f"unknown organism prompt {prompt!r}; choose one of: " + "; ".join(self.prompts))

    def embeds(self, prompt: str | int) -> torch.Tensor:
        """[1, text_len, text_dim] embedding of ``prompt``."""
        return self.prompt_embeds[self.index(prompt)][None]

    def call_kwargs(self, prompt: str | int, seed: int = 0, num_inference_steps: int = 20,
                    guidance_scale: float = DEFAULT_GUIDANCE, **pipeline_kwargs: Any) -> dict[str, Any]:
        """The keyword arguments ``generate`` passes to the pipeline (latent output, CPU generator)."""
        args = dict(prompt_embeds=self.embeds(prompt), negative_prompt_embeds=self.null_embeds[None],
                    height=self.config.height, width=self.config.height, num_frames=self.config.num_frames,
                    num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                    generator=torch.Generator("cpu").manual_seed(seed), output_type="latent")
        args.update(pipeline_kwargs)
        return args

    @torch.no_grad()
    def generate(self, prompt: str | int, seed: int = 0, num_inference_steps: int = 20,
                 guidance_scale: float = DEFAULT_GUIDANCE, **pipeline_kwargs: Any) -> torch.Tensor:
        """Sample a clip: the final latent [1, 16, F, h, w] (float32 on the pipeline's device)."""
        args = self.call_kwargs(prompt, seed, num_inference_steps, guidance_scale, **pipeline_kwargs)
        return self.pipe(**args).frames

    def decode(self, latent: torch.Tensor, scale: int = 8) -> torch.Tensor:
        """Latent [1, 16, F, h, w] or [16, F, h, w] → uint8 RGB frames [F, scale·h, scale·w, 3] (CPU)."""
        if latent.dim() == 5:
            if latent.shape[0] != 1:
                raise OrganismInputError(f"decode takes one clip, got a batch of {latent.shape[0]}")
            latent = latent[0]
        if latent.dim() != 4 or latent.shape[0] != self.config.channels:
            raise OrganismInputError(f"decode expects [16, F, h, w], got {list(latent.shape)}")
        rgb = videos.to_rgb(latent.detach().float().cpu()).permute(1, 0, 2, 3)      # [F, 3, h, w]
        rgb = F_.interpolate(rgb, scale_factor=scale, mode="nearest")
        return (rgb * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def _organism(config: OrganismConfig, experts: dict[str, Any], prompts: torch.Tensor, null: torch.Tensor,
              device: str | torch.device, dtype: torch.dtype, trained: bool) -> Organism:
    if dtype != torch.float32:   # the experts are built in float32; diffusers warns on any dtype cast
        experts = {k: m.to(dtype=dtype) for k, m in experts.items()}
    experts = {k: m.to(device).eval().requires_grad_(False) for k, m in experts.items()}
    pipe = build_pipeline(config, experts)
    pipe.vae.to(device)
    return Organism(pipe=pipe, config=config, prompt_embeds=prompts.to(device, dtype),
                    null_embeds=null.to(device, dtype), trained=trained)


def load_organism(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                  path: str | Path | None = None, size: str = "v1", sha256: str | None = None) -> Organism:
    """The trained organism from ``path`` (default: the packaged ``weights/organism.safetensors``).

    ``size``: ``"v1"`` (default, unchanged) or an organism v2 size, ``"small"`` / ``"large"``
    (``pipeline_v2.load_organism_v2``: default file ``weights/organism_v2_<size>.safetensors``, read only when
    its SHA-256 is ``sha256`` or the one ``weights/checksums_v2.json`` records).
    Raises ``OrganismWeightsError`` (a ``LatentProbeError``, one line) when the weights file is missing.
    """
    if size != "v1":
        if size not in SIZES:
            raise OrganismWeightsError(f"unknown organism size {size!r}; choose one of "
                                       f"{['v1', *sorted(SIZES)]}")
        return load_organism_v2(size, device=device, dtype=dtype, path=path, sha256=sha256)
    if sha256 is not None:
        raise OrganismWeightsError("sha256= checks organism v2 files only (size='small' or 'large')")
    config, experts, prompts, null = load_weights(WEIGHTS if path is None else path, "cpu", torch.float32)
    return _organism(config, experts, prompts, null, device, dtype, trained=True)


def random_organism(seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                    config: OrganismConfig | None = None) -> Organism:
    """The same architecture, pipeline and embeddings with random (untrained) weights: a control."""
    config = config or OrganismConfig()
    experts = {name: build_transformer(config, seed=seed + i) for i, name in enumerate(EXPERTS)}
    return _organism(config, experts, prompt_embeddings(config), null_embedding(config), device, dtype,
                     trained=False)


from .model_v2 import SIZES  # noqa: E402  (organism v2; its pipeline module needs Organism defined above)
from .pipeline_v2 import OrganismV2, load_organism_v2, random_organism_v2  # noqa: E402
