"""Model loading per backend, for ``analyze``: load a model once, then generate one sweep point at a time.

* ``wan``: the Wan2.2 repository's ``wan`` package (``--wan_repo PATH`` puts it on ``sys.path``):
  ``wan.WanT2V / WanI2V / WanTI2V(config=wan.configs.WAN_CONFIGS[task], checkpoint_dir=model_path)``.
  ``wan_config="tiny"`` uses ``wan.configs.tiny_*_config()`` instead (tests, with tests/wan_standin).
* ``diffusers``: a local diffusers-format folder, ``WanPipeline.from_pretrained(model_path)``
  (``WanImageToVideoPipeline`` for i2v). A folder without a text encoder (the tiny test pipelines of
  ``latent_probe.testing``) gets ``tiny_prompt_embeds(prompt)``: for tests and offline runs only.

A backend has ``target`` (what ``LatentProbe`` instruments), ``defaults() -> (num_frames, steps)`` and
``generate(point)``. The settings are read from ``latent_probe.app.analyze.AnalyzeOptions``.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from .analyze import AnalyzeOptions

__all__ = ["SweepPoint", "WanBackend", "DiffusersBackend", "OrganismBackend", "load_organism_model", "ORGANISM_STEPS",
           "load_backend", "import_wan", "parse_size", "TASKS",
           "DEFAULT_SIZE", "DEFAULT_STEPS", "DEFAULT_FRAMES"]

TASKS = ("t2v-A14B", "i2v-A14B", "ti2v-5B")
DEFAULT_SIZE = {"t2v-A14B": "1280*720", "i2v-A14B": "1280*720", "ti2v-5B": "1280*704"}
DEFAULT_STEPS = {"t2v-A14B": 40, "i2v-A14B": 40, "ti2v-5B": 50}
DEFAULT_FRAMES = {"t2v-A14B": 81, "i2v-A14B": 81, "ti2v-5B": 121}


@dataclass(frozen=True)
class SweepPoint:
    """One generation's sweep coordinates."""

    num_frames: int
    num_inference_steps: int


def parse_size(text: str) -> tuple[int, int]:
    """'1280*720' or '1280x720' (width*height, as Wan2.2's --size) → (width, height)."""
    for sep in ("*", "x", "X"):
        if sep in text:
            w, h = text.split(sep, 1)
            try:
                width, height = int(w), int(h)
            except ValueError:
                break
            if width > 0 and height > 0:
                return width, height
    raise ValueError(f"--size {text!r}: expected WIDTH*HEIGHT, e.g. 1280*720")


def _load_image(path: str | None) -> Any:
    if path is None:
        raise ValueError("task i2v-A14B needs --image PATH (the first frame)")
    from PIL import Image

    return Image.open(path).convert("RGB")


# ----------------------------------------------------------------------------- wan repository
def import_wan(wan_repo: str | None) -> Any:
    """Import the Wan2.2 repository's ``wan`` package, from ``wan_repo`` when given."""
    if wan_repo:
        repo = os.path.abspath(wan_repo)
        if not os.path.isdir(os.path.join(repo, "wan")):
            raise FileNotFoundError(f"--wan_repo {wan_repo}: no 'wan' package folder in it")
        if repo not in sys.path:
            sys.path.insert(0, repo)
    try:
        import wan
    except ImportError as exc:
        raise ImportError(f"cannot import the Wan2.2 'wan' package ({exc}); pass --wan_repo PATH to a clone of "
                          "github.com/Wan-Video/Wan2.2") from exc
    return wan


def wan_config(wan: Any, o: Any) -> Any:
    """The Wan2.2 config for ``o.task``: the stand-in's tiny one (``--wan_config tiny``) or the repository's,
    with ``--model_path`` checked; one line (ValueError / FileNotFoundError) when it cannot be had."""
    if o.wan_config == "tiny":
        makers = {"t2v-A14B": "tiny_t2v_config", "i2v-A14B": "tiny_i2v_config", "ti2v-5B": "tiny_ti2v_config"}
        maker = getattr(wan.configs, makers[o.task], None)
        if maker is None:
            raise ValueError("--wan_config tiny needs a wan package with tiny configs (tests/wan_standin)")
        config = maker()
    else:
        if not o.model_path:
            raise ValueError("the wan backend needs --model_path (the checkpoint folder)")
        config = wan.configs.WAN_CONFIGS[o.task]
    if o.model_path and not os.path.isdir(o.model_path):
        raise FileNotFoundError(f"--model_path {o.model_path}: no such folder")
    return config


class WanBackend:
    """The Wan2.2 repository's pipelines (``wan`` package)."""

    def __init__(self, o: AnalyzeOptions) -> None:
        wan = import_wan(o.wan_repo)
        self.o = o
        self.config = wan_config(wan, o)
        cls = {"t2v-A14B": wan.WanT2V, "i2v-A14B": wan.WanI2V, "ti2v-5B": wan.WanTI2V}[o.task]
        self.model = cls(config=self.config, checkpoint_dir=o.model_path, device_id=0, rank=0, t5_cpu=o.t5_cpu,
                         convert_model_dtype=o.convert_model_dtype)
        self.target = self.model
        self.img = _load_image(o.image) if o.task == "i2v-A14B" else None

    def check(self, points: Sequence[SweepPoint]) -> None:
        """Nothing to check before running beyond what ``WanT2V.generate`` checks itself."""

    def defaults(self) -> tuple[int, int]:
        return int(self.config.get("frame_num", DEFAULT_FRAMES[self.o.task])), int(self.config.sample_steps)

    def generate(self, point: SweepPoint) -> None:
        o, cfg = self.o, self.config
        w, h = parse_size(o.size or DEFAULT_SIZE[o.task])
        guide = cfg.sample_guide_scale
        if o.guide_scale:
            guide = float(o.guide_scale[0]) if len(o.guide_scale) == 1 else tuple(float(g) for g in o.guide_scale)
        kw = dict(frame_num=point.num_frames, shift=o.sample_shift if o.sample_shift is not None else cfg.sample_shift,
                  sample_solver=o.sample_solver, sampling_steps=point.num_inference_steps, guide_scale=guide,
                  n_prompt=o.negative_prompt, seed=o.seed,
                  offload_model=True if o.offload_model is None else o.offload_model)
        if o.task == "i2v-A14B":
            self.model.generate(o.prompt, self.img, max_area=w * h, **kw)
        elif o.task == "ti2v-5B":
            self.model.generate(o.prompt, img=None, size=(w, h), max_area=w * h, **kw)
        else:
            self.model.generate(o.prompt, size=(w, h), **kw)


# ----------------------------------------------------------------------------- diffusers folder
def _absent_components(folder: str) -> dict[str, None]:
    """Optional components a saved pipeline lacks (``model_index.json`` says null): passed as None."""
    try:
        with open(os.path.join(folder, "model_index.json"), encoding="utf-8") as fh:
            index = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{folder} is not a diffusers-format folder (model_index.json: {exc})") from None
    optional = ("tokenizer", "text_encoder", "image_encoder", "image_processor")
    return {k: None for k in optional if k in index and not any(index[k] or [])}


def _tiny_prompt_args(pipe: Any, o: AnalyzeOptions, device: str) -> dict[str, Any]:
    """The tiny test pipelines (no text encoder): deterministic stand-in embeddings of the prompts."""
    from ..testing import TEXT_DIM, tiny_prompt_embeds

    text_dim = getattr(pipe.transformer.config, "text_dim", None)
    if text_dim != TEXT_DIM:
        raise ValueError(f"{o.model_path} has no text encoder; only the tiny test pipelines of "
                         "latent_probe.testing (text_dim 32) can run without one")
    dt = pipe.transformer.dtype
    return {"prompt_embeds": tiny_prompt_embeds(o.prompt).to(device, dt),
            "negative_prompt_embeds": tiny_prompt_embeds(o.negative_prompt).to(device, dt)}


class DiffusersBackend:
    """A local diffusers-format Wan folder (``WanPipeline.from_pretrained``)."""

    def __init__(self, o: AnalyzeOptions) -> None:
        import torch

        self.o = o
        if not o.model_path:
            raise ValueError("the diffusers backend needs --model_path (a local diffusers-format folder)")
        if not os.path.isdir(o.model_path):
            raise FileNotFoundError(f"--model_path {o.model_path}: no such folder")
        if o.task == "i2v-A14B":
            from diffusers import WanImageToVideoPipeline as cls
        else:
            from diffusers import WanPipeline as cls
        self.device = o.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = getattr(torch, o.dtype) if o.dtype else (torch.bfloat16 if self.device.startswith("cuda")
                                                          else torch.float32)
        with warnings.catch_warnings():  # newer diffusers renamed torch_dtype to dtype (FutureWarning)
            warnings.simplefilter("ignore", FutureWarning)
            self.pipe = cls.from_pretrained(o.model_path, torch_dtype=dtype, **_absent_components(o.model_path))
        self.pipe.to(self.device)
        self.target = self.pipe
        self.img = _load_image(o.image) if o.task == "i2v-A14B" else None

    def defaults(self) -> tuple[int, int]:
        return DEFAULT_FRAMES[self.o.task], DEFAULT_STEPS[self.o.task]

    def check(self, points: Sequence[SweepPoint]) -> None:
        """Refuse (ValueError, one line) a ``--size`` / frame count this model cannot run, before anything runs:
        width and height must be multiples of the VAE stride × patch size, and the patches along each axis
        must fit the transformer's rotary table (``rope_max_seq_len`` positions)."""
        o = self.o
        w, h = parse_size(o.size or DEFAULT_SIZE[o.task])
        cfg = self.pipe.transformer.config
        pt, ph, pw = (tuple(cfg.patch_size) + (1, 1, 1))[:3]
        sf = int(getattr(self.pipe, "vae_scale_factor_spatial", 8))
        tf = int(getattr(self.pipe, "vae_scale_factor_temporal", 4))
        uh, uw = sf * ph, sf * pw
        if h % uh or w % uw:
            raise ValueError(f"--size {w}*{h}: this model needs a width that is a multiple of {uw} and a height that "
                             f"is a multiple of {uh} (VAE stride {sf} × patch {pw}×{ph})")
        limit = getattr(cfg, "rope_max_seq_len", None)
        if not limit:
            return
        for p in points:
            axes = {"latent frames": ((p.num_frames - 1) // tf + 1) // pt, "patch rows": h // uh,
                    "patch columns": w // uw}
            over = [(k, n) for k, n in axes.items() if n > limit]
            if over:
                k, n = over[0]
                raise ValueError(f"--size {w}*{h} with {p.num_frames} frames is too large for this model: {n} {k} "
                                 f"exceed its rotary table of {limit} positions (rope_max_seq_len; at most "
                                 f"{limit * uw}*{limit * uh})")

    def _prompt_args(self) -> dict[str, Any]:
        o = self.o
        if getattr(self.pipe, "text_encoder", None) is not None:
            return {"prompt": o.prompt, "negative_prompt": o.negative_prompt}
        return _tiny_prompt_args(self.pipe, o, self.device)

    def generate(self, point: SweepPoint) -> None:
        import torch

        o = self.o
        w, h = parse_size(o.size or DEFAULT_SIZE[o.task])
        kw: dict[str, Any] = dict(height=h, width=w, num_frames=point.num_frames,
                                  num_inference_steps=point.num_inference_steps, output_type="latent",
                                  generator=torch.Generator(self.device).manual_seed(o.seed), **self._prompt_args())
        if o.guide_scale:
            kw["guidance_scale"] = float(o.guide_scale[-1])  # diffusers: guidance_scale is the high-noise one
            if len(o.guide_scale) > 1:
                kw["guidance_scale_2"] = float(o.guide_scale[0])
        if self.img is not None:
            kw["image"] = self.img
        self.pipe(**kw)


# ----------------------------------------------------------------------------- the packaged organism
ORGANISM_STEPS = {"v1": 20, "small": 40, "large": 40}  # default sampling steps per organism (v2: Wan's 40)


def load_organism_model(size: str = "v1", path: str | None = None, sha256: str | None = None,
                        device: str = "cpu", dtype: Any = None) -> Any:
    """``organism.load_organism`` of ``size`` (``v1``, or an organism v2 size: ``small`` / ``large``, its file
    checked against ``sha256`` or the recorded digest). The one place the app loads an organism (a study's
    generations and the frontier's decoding read the same weights); tests replace it with a random organism."""
    import torch

    from ..organism import load_organism

    return load_organism(device, dtype or torch.float32, path=path, size=size, sha256=sha256)


class OrganismBackend:
    """The packaged model organism (``latent_probe.organism``): a diffusers ``WanPipeline`` with two small trained
    experts; ``weights`` a safetensors file (default: the packaged one). ``size``: ``v1`` (default) or an organism
    v2 size (``small`` / ``large``; ``sha256`` checks a weights file kept outside the package). Prompts must be
    its training prompts."""

    def __init__(self, weights: str | None = None, device: str | None = None, dtype: str | None = None,
                 size: str = "v1", sha256: str | None = None) -> None:
        import torch

        if weights is not None and not os.path.isfile(weights):
            raise FileNotFoundError(f"--model_path {weights}: no such organism weights file")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.size = size
        self.organism = load_organism_model(size, weights, sha256, self.device,
                                            getattr(torch, dtype) if dtype else torch.float32)
        self.pipe = self.organism.pipe
        self.target = self.pipe

    def defaults(self) -> tuple[int, int]:
        return self.organism.config.num_frames, ORGANISM_STEPS[self.size]

    def generate(self, prompt: str, seed: int, steps: int, guidance: float | None = None) -> Any:
        """One clip: the final latent [1, 16, F, h, w]."""
        from ..organism import DEFAULT_GUIDANCE

        return self.organism.generate(prompt, seed=seed, num_inference_steps=steps,
                                      guidance_scale=DEFAULT_GUIDANCE if guidance is None else guidance)


def load_backend(o: AnalyzeOptions) -> WanBackend | DiffusersBackend:
    """Load the model of ``o.backend`` for ``o.task`` (once; each sweep point then calls ``generate``)."""
    if o.task not in TASKS:
        raise ValueError(f"unknown task {o.task!r}; choose from {', '.join(TASKS)}")
    if o.backend == "wan":
        return WanBackend(o)
    if o.backend == "diffusers":
        return DiffusersBackend(o)
    raise ValueError(f"unknown backend {o.backend!r}; choose wan or diffusers")
