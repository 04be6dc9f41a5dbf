"""Organism v2's configuration, sizes, prompt embeddings and weights files (with checksums); needs ``diffusers``.

Two DiT sizes on the learned VAE's latent [16, 21, 16, 16] (1,344 tokens a call with patch (1, 2, 2)):
``small`` (v1's DiT: 6 layers, dim 128, 1.78 M a expert) and ``large`` (8 layers, dim 256, FFN 1024: 9.08 M,
5.1×; sized so a 15-minute GPU budget still trains it for thousands of steps). Both are
two experts split at Wan's boundary (0.875) and sampled with Wan2.2 T2V-A14B's shift (12).

A weights file (safetensors, float16) holds ``vae.<param>``, ``high_noise.<param>``, ``low_noise.<param>``,
``embeddings.prompts`` [10, text_len, text_dim], ``embeddings.null``; metadata ``config`` (the DiT config),
``vae_config`` (the ``AutoencoderKLWan`` config, latents_mean / latents_std included) and ``prompts``.
``weights/checksums_v2.json`` maps a file name to its SHA-256; a file is read only if its digest matches.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import videos_v2
from .model import EXPERTS, OrganismConfig, OrganismWeightsError, read_safetensors

__all__ = ["SIZES", "OrganismV2Config", "config_for", "prompt_embeddings_v2", "null_embedding_v2", "sha256",
           "CHECKSUMS", "WEIGHTS_DIR", "weights_path", "expected_sha256", "save_vae", "read_vae", "save_organism_v2",
           "read_organism_v2", "record_checksum"]

WEIGHTS_DIR = Path(__file__).parent / "weights"
CHECKSUMS = WEIGHTS_DIR / "checksums_v2.json"

SIZES: dict[str, dict[str, int]] = {
    "small": dict(num_layers=6, num_attention_heads=4, attention_head_dim=32, ffn_dim=512),
    "large": dict(num_layers=8, num_attention_heads=4, attention_head_dim=64, ffn_dim=1024),
}


@dataclass(frozen=True)
class OrganismV2Config(OrganismConfig):
    """v1's fields (latent 16×16×21, 16 channels, boundary 0.875) with Wan T2V-A14B's shift 12, a size name, and
    the VAE's 4× spatial stride: the pipeline is called at 64×64 pixels, 81 frames."""

    flow_shift: float = 12.0
    size: str = "small"
    spatial_factor: int = 4
    embedding_seed: int = 2_023

    @property
    def height(self) -> int:
        """Pixel height (= width) the pipeline is called with: spatial_factor × latent_size."""
        return self.spatial_factor * self.latent_size


def config_for(size: str) -> OrganismV2Config:
    """The config of a v2 size (``"small"`` or ``"large"``)."""
    if size not in SIZES:
        raise OrganismWeightsError(f"unknown organism v2 size {size!r}; choose one of {sorted(SIZES)}")
    return OrganismV2Config(size=size, **SIZES[size])


def prompt_embeddings_v2(config: OrganismV2Config) -> torch.Tensor:
    """[10, text_len, text_dim] fixed seeded unit-Gaussian embeddings, one per ``videos_v2.PROMPTS``."""
    g = torch.Generator().manual_seed(config.embedding_seed)
    return torch.randn(len(videos_v2.PROMPTS), config.text_len, config.text_dim, generator=g)


def null_embedding_v2(config: OrganismV2Config) -> torch.Tensor:
    """[text_len, text_dim] zeros: the unconditional branch."""
    return torch.zeros(config.text_len, config.text_dim)


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_path(size: str) -> Path:
    """Default file of a size: ``weights/organism_v2_<size>.safetensors``."""
    config_for(size)
    return WEIGHTS_DIR / f"organism_v2_{size}.safetensors"


def expected_sha256(path: Path, registry: Path = CHECKSUMS) -> str | None:
    """The digest ``registry`` records for ``path``'s file name, or None."""
    if not registry.is_file():
        return None
    return json.loads(registry.read_text()).get(path.name)


def record_checksum(path: str | Path, registry: Path = CHECKSUMS) -> str:
    """Write ``path``'s SHA-256 into ``registry`` under its file name (other entries kept); returns it."""
    path, registry = Path(path), Path(registry)
    table = json.loads(registry.read_text()) if registry.is_file() else {}
    table[path.name] = sha256(path)
    registry.parent.mkdir(parents=True, exist_ok=True)
    registry.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    return table[path.name]


def _state16(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in module.state_dict().items():
        if not torch.isfinite(value).all() or value.abs().max() > 6e4:
            raise OrganismWeightsError(f"{prefix}.{key} is not representable in float16")
        out[f"{prefix}.{key}"] = value.detach().to("cpu", torch.float16).contiguous()
    return out


def _vae_config(vae: Any) -> str:
    keys = ("base_dim", "z_dim", "dim_mult", "num_res_blocks", "attn_scales", "temperal_downsample", "dropout",
            "scale_factor_temporal", "scale_factor_spatial", "latents_mean", "latents_std")
    return json.dumps({k: vae.config[k] for k in keys})


def save_vae(path: str | Path, vae: Any) -> int:
    """The VAE alone (float16, metadata ``vae_config``) → ``path``; returns the file size in bytes."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(_state16("vae", vae), str(path), metadata={"vae_config": _vae_config(vae)})
    return path.stat().st_size


def save_organism_v2(path: str | Path, experts: dict[str, torch.nn.Module], vae: Any, config: OrganismV2Config,
                     metadata: dict[str, Any] | None = None) -> int:
    """Both experts, the VAE and the embeddings (float16) → ``path``; returns the file size in bytes."""
    from safetensors.torch import save_file

    if set(experts) != set(EXPERTS):
        raise OrganismWeightsError(f"expected experts {EXPERTS}, got {sorted(experts)}")
    tensors = _state16("vae", vae)
    for name, module in experts.items():
        tensors.update(_state16(name, module))
    tensors["embeddings.prompts"] = prompt_embeddings_v2(config).contiguous()
    tensors["embeddings.null"] = null_embedding_v2(config).contiguous()
    meta = {"config": config.to_json(), "vae_config": _vae_config(vae),
            "prompts": json.dumps(list(videos_v2.PROMPTS))}
    meta.update({k: json.dumps(v) for k, v in (metadata or {}).items()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    return path.stat().st_size


def _read(path: Path, sha: str | None) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Check the digest, then read metadata and tensors; ``OrganismWeightsError`` (one line) on any problem."""
    if not path.is_file():
        raise OrganismWeightsError(f"organism v2 weights not found: {path} (train them with "
                                   "training/train_organism_v2.sh)")
    if sha is None:
        raise OrganismWeightsError(f"no checksum known for {path.name} (not in {CHECKSUMS.name}); pass sha256=")
    got = sha256(path)
    if got != sha:
        raise OrganismWeightsError(f"{path} has SHA-256 {got[:16]}…, expected {sha[:16]}…: damaged or not the "
                                   "file that was trained")
    meta, tensors = read_safetensors(path)
    return meta, tensors


def _load_module(module: torch.nn.Module, prefix: str, tensors: dict[str, torch.Tensor], path: Path) -> None:
    state = {k[len(prefix) + 1:]: v.float() for k, v in tensors.items() if k.startswith(prefix + ".")}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise OrganismWeightsError(f"{path}: {prefix} does not fit its config: {first}") from None


def read_vae(path: str | Path, sha: str | None) -> Any:
    """The VAE of a weights file (its own or a whole organism's), float32, eval mode."""
    from .vae_v2 import build_vae

    path = Path(path)
    meta, tensors = _read(path, sha)
    if "vae_config" not in meta:
        raise OrganismWeightsError(f"{path} has no vae_config in its metadata")
    vae = build_vae(json.loads(meta["vae_config"]))
    _load_module(vae, "vae", tensors, path)
    return vae.eval().requires_grad_(False)


def read_organism_v2(path: str | Path, sha: str | None
                     ) -> tuple[OrganismV2Config, dict[str, Any], Any, torch.Tensor, torch.Tensor]:
    """Read a v2 file → (config, {expert: transformer}, vae, prompt embeddings, null embedding); float32, CPU."""
    from .model import build_transformer
    from .vae_v2 import build_vae

    path = Path(path)
    meta, tensors = _read(path, sha)
    for key in ("config", "vae_config"):
        if key not in meta:
            raise OrganismWeightsError(f"{path} has no {key} in its metadata (not an organism v2 file)")
    config = OrganismV2Config.from_json(meta["config"])
    experts = {}
    for name in EXPERTS:
        experts[name] = build_transformer(config)
        _load_module(experts[name], name, tensors, path)
        experts[name].eval().requires_grad_(False)
    vae = build_vae(json.loads(meta["vae_config"]))
    _load_module(vae, "vae", tensors, path)
    for key in ("embeddings.prompts", "embeddings.null"):
        if key not in tensors:
            raise OrganismWeightsError(f"{path} lacks {key}")
    return config, experts, vae.eval().requires_grad_(False), tensors["embeddings.prompts"].float(), \
        tensors["embeddings.null"].float()
