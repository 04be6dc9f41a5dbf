"""The organism's configuration, prompt embeddings, transformers and weights file (needs ``diffusers``).

The DiT is diffusers' own ``WanTransformer3DModel`` with a small configuration, so every hook, adapter and
intervention runs its real code. Two experts split at ``boundary_ratio`` like Wan2.2 A14B: ``high_noise``
runs while t ≥ boundary_ratio · 1000 (t = σ · 1000, σ in [0, 1]), ``low_noise`` below.

Weights file (safetensors): ``high_noise.<param>``, ``low_noise.<param>`` (stored float16, loaded to the
requested dtype), ``embeddings.prompts`` [n_prompts, text_len, text_dim], ``embeddings.null``
[text_len, text_dim]; its metadata ``config`` holds ``OrganismConfig`` as JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from ..errors import LatentProbeError
from . import videos

__all__ = ["OrganismConfig", "OrganismWeightsError", "EXPERTS", "build_transformer", "prompt_embeddings",
           "null_embedding", "shift_sigma", "unshift_sigma", "save_weights", "load_weights", "parameter_count"]

EXPERTS = ("high_noise", "low_noise")


class OrganismWeightsError(LatentProbeError, FileNotFoundError):
    """The organism's weights file is missing or does not match the configuration."""


@dataclass(frozen=True)
class OrganismConfig:
    """Sizes of the latent video and of the DiT, the σ split and the sampling shift.

    Latent [16, latent_frames, latent_size, latent_size]; patch (1, 2, 2) → latent_frames · (latent_size/2)²
    tokens. Pixel-space sizes for the pipeline follow Wan's VAE strides (4 in time, 8 in space).
    """

    latent_size: int = videos.SIZE
    latent_frames: int = videos.FRAMES
    channels: int = videos.CHANNELS
    num_layers: int = 6
    num_attention_heads: int = 4
    attention_head_dim: int = 32
    ffn_dim: int = 512
    freq_dim: int = 256
    text_dim: int = 64
    text_len: int = 8
    boundary_ratio: float = 0.875
    flow_shift: float = 5.0
    num_train_timesteps: int = 1000
    embedding_seed: int = 2_022

    @property
    def tokens(self) -> int:
        """Tokens of one DiT call on a full clip."""
        return self.latent_frames * (self.latent_size // 2) ** 2

    @property
    def height(self) -> int:
        """Pixel height (= width) the pipeline is called with: 8 × latent_size."""
        return 8 * self.latent_size

    @property
    def num_frames(self) -> int:
        """Pixel frames the pipeline is called with: 4 · (latent_frames − 1) + 1."""
        return 4 * (self.latent_frames - 1) + 1

    @property
    def boundary_sigma(self) -> float:
        """σ at the expert boundary (t = σ · num_train_timesteps)."""
        return self.boundary_ratio

    def transformer_kwargs(self) -> dict[str, Any]:
        return dict(patch_size=(1, 2, 2), num_attention_heads=self.num_attention_heads,
                    attention_head_dim=self.attention_head_dim, in_channels=self.channels,
                    out_channels=self.channels, text_dim=self.text_dim, freq_dim=self.freq_dim,
                    ffn_dim=self.ffn_dim, num_layers=self.num_layers, cross_attn_norm=True,
                    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=64)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "OrganismConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})


def shift_sigma(u: torch.Tensor, shift: float) -> torch.Tensor:
    """Wan's shifted schedule σ' = shift·u / (1 + (shift − 1)·u), u and σ' in [0, 1]."""
    return shift * u / (1 + (shift - 1) * u)


def unshift_sigma(sigma: float, shift: float) -> float:
    """Inverse of ``shift_sigma``: the u whose shifted σ is ``sigma``."""
    return sigma / (shift - (shift - 1) * sigma)


def build_transformer(config: OrganismConfig, seed: int | None = None) -> Any:
    """A ``WanTransformer3DModel`` of ``config`` (random weights; seeded when ``seed`` is given), in eval mode."""
    from diffusers import WanTransformer3DModel

    if seed is not None:
        torch.manual_seed(seed)
    return WanTransformer3DModel(**config.transformer_kwargs()).eval()


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def prompt_embeddings(config: OrganismConfig) -> torch.Tensor:
    """[n_prompts, text_len, text_dim] fixed seeded embeddings standing in for a text encoder (unit RMS)."""
    g = torch.Generator().manual_seed(config.embedding_seed)
    return torch.randn(len(videos.PROMPTS), config.text_len, config.text_dim, generator=g)


def null_embedding(config: OrganismConfig) -> torch.Tensor:
    """[text_len, text_dim] zeros: the unconditional branch (trained by condition dropout)."""
    return torch.zeros(config.text_len, config.text_dim)


def save_weights(path: str | Path, experts: dict[str, torch.nn.Module], config: OrganismConfig,
                 metadata: dict[str, Any] | None = None) -> int:
    """Write both experts (float16) and the embeddings to ``path``; returns the file size in bytes."""
    from safetensors.torch import save_file

    if set(experts) != set(EXPERTS):
        raise OrganismWeightsError(f"expected experts {EXPERTS}, got {sorted(experts)}")
    tensors: dict[str, torch.Tensor] = {}
    for name, module in experts.items():
        for key, value in module.state_dict().items():
            if not torch.isfinite(value).all() or value.abs().max() > 6e4:
                raise OrganismWeightsError(f"{name}.{key} is not representable in float16")
            tensors[f"{name}.{key}"] = value.detach().to("cpu", torch.float16).contiguous()
    tensors["embeddings.prompts"] = prompt_embeddings(config).contiguous()
    tensors["embeddings.null"] = null_embedding(config).contiguous()
    meta = {"config": config.to_json(), "prompts": json.dumps(list(videos.PROMPTS))}
    meta.update({k: json.dumps(v) for k, v in (metadata or {}).items()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    return path.stat().st_size


def read_safetensors(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a safetensors file; a damaged file is one ``OrganismWeightsError`` line."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 — safetensors raises its own types for a damaged file
        raise OrganismWeightsError(f"{path} is not a readable safetensors file: "
                                   f"{' '.join(str(exc).split())[:200]}") from None
    return meta, tensors


def load_weights(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
                 ) -> tuple[OrganismConfig, dict[str, Any], torch.Tensor, torch.Tensor]:
    """Read ``path`` → (config, {expert name: transformer}, prompt embeddings, null embedding).

    Raises ``OrganismWeightsError`` (one line) when the file is missing or its tensors don't fit the config.
    """
    path = Path(path)
    if not path.is_file():
        raise OrganismWeightsError(f"organism weights not found: {path} (train them with "
                                   "training/train_organism.py)")
    meta, tensors = read_safetensors(path)
    if "config" not in meta:
        raise OrganismWeightsError(f"{path} has no organism config in its metadata")
    config = OrganismConfig.from_json(meta["config"])
    if json.loads(meta.get("prompts", "[]")) != list(videos.PROMPTS):
        raise OrganismWeightsError(f"{path} was trained on other prompts than videos.PROMPTS")
    experts = {}
    for name in EXPERTS:
        state = {k[len(name) + 1:]: v.float() for k, v in tensors.items() if k.startswith(name + ".")}
        model = build_transformer(config)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise OrganismWeightsError(f"{path}: {name} does not fit the config: {first}") from None
        if dtype != torch.float32:   # diffusers warns on any dtype cast
            model = model.to(dtype=dtype)
        experts[name] = model.to(device).eval().requires_grad_(False)
    prompts = tensors["embeddings.prompts"].to(device, dtype)
    null = tensors["embeddings.null"].to(device, dtype)
    return config, experts, prompts, null
