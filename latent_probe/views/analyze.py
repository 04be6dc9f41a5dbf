"""``latent-probe analyze``: load a model once, record one generation per sweep point, write the views.

Backends:
* ``wan``: the Wan2.2 repository's ``wan`` package (``--wan_repo PATH`` puts it on ``sys.path``):
  ``wan.WanT2V / WanI2V / WanTI2V(config=wan.configs.WAN_CONFIGS[task], checkpoint_dir=model_path)``.
  ``wan_config="tiny"`` uses ``wan.configs.tiny_*_config()`` instead (tests, with tests/wan_standin).
* ``diffusers``: a local diffusers-format folder, ``WanPipeline.from_pretrained(model_path)``
  (``WanImageToVideoPipeline`` for i2v). A folder without a text encoder (the tiny test pipelines of
  ``latent_probe.testing``) gets ``tiny_prompt_embeds(prompt)``: for tests and offline runs only.

Each generation runs under ``LatentProbe`` into ``<dir>/run.h5``; the statistics, the ``.npz`` and the
dashboard are written next to it, and a sweep gets one comparison dashboard.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

__all__ = ["AnalyzeOptions", "Variant", "SweepPoint", "AnalysisResult", "run_analysis", "load_backend",
           "parse_size", "TASKS", "BASELINE"]

TASKS = ("t2v-A14B", "i2v-A14B", "ti2v-5B")
DEFAULT_SIZE = {"t2v-A14B": "1280*720", "i2v-A14B": "1280*720", "ti2v-5B": "1280*704"}
DEFAULT_STEPS = {"t2v-A14B": 40, "i2v-A14B": 40, "ti2v-5B": 50}
DEFAULT_FRAMES = {"t2v-A14B": 81, "i2v-A14B": 81, "ti2v-5B": 121}


@dataclass(frozen=True)
class Variant:
    """One way to run each sweep point: ``intervene`` builds the probe's intervention (None: unchanged).

    HOOK for frame truncation (``--enable_half_frame [--keep K]``): return [BASELINE, Variant("half_frame",
    lambda point: FrameTruncation(...))] from the CLI's ``variants_from_args``; every variant of a point is
    recorded into its own subfolder and all appear in the comparison dashboard.
    """

    name: str
    intervene: Callable[["SweepPoint"], Any] | None = None


BASELINE = Variant("baseline")


@dataclass(frozen=True)
class SweepPoint:
    num_frames: int
    num_inference_steps: int


@dataclass
class AnalyzeOptions:
    """Everything ``analyze`` needs; ``None`` means the task's default."""

    prompt: str
    output_dir: str
    task: str = "t2v-A14B"
    backend: str = "wan"
    model_path: str | None = None
    num_frames: Sequence[int] | None = None
    num_inference_steps: Sequence[int] | None = None
    size: str | None = None
    seed: int = 0
    use_epsilon: bool = False
    negative_prompt: str = ""
    image: str | None = None
    wan_repo: str | None = None
    wan_config: str = "full"
    sample_solver: str = "unipc"
    sample_shift: float | None = None
    guide_scale: Sequence[float] | None = None
    offload_model: bool | None = None
    t5_cpu: bool = False
    convert_model_dtype: bool = False
    device: str | None = None
    dtype: str | None = None
    store_dtype: str = "float16"
    cfg_branches: bool = False
    phases: str = "thirds"
    static_images: bool = True
    variants: Sequence[Variant] = field(default_factory=lambda: [BASELINE])
    # --enable_half_frame: {"keep": K, "until": "boundary" | step index, "fill": "linear"}; each sweep point
    # then runs baseline and truncated with the same seed (interventions.compare_truncation)
    truncation: dict[str, Any] | None = None

    @property
    def space(self) -> str:
        return "eps" if self.use_epsilon else "x0"


@dataclass
class AnalysisResult:
    runs: list[str]
    labels: list[str]
    dashboard: str
    notes: list[str]


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


# ----------------------------------------------------------------------------- backends
class WanBackend:
    """The Wan2.2 repository's pipelines (``wan`` package)."""

    def __init__(self, o: AnalyzeOptions) -> None:
        wan = import_wan(o.wan_repo)
        self.o = o
        if o.wan_config == "tiny":
            makers = {"t2v-A14B": "tiny_t2v_config", "i2v-A14B": "tiny_i2v_config", "ti2v-5B": "tiny_ti2v_config"}
            maker = getattr(wan.configs, makers[o.task], None)
            if maker is None:
                raise ValueError("--wan_config tiny needs a wan package with tiny configs (tests/wan_standin)")
            self.config = maker()
        else:
            if not o.model_path:
                raise ValueError("the wan backend needs --model_path (the checkpoint folder)")
            self.config = wan.configs.WAN_CONFIGS[o.task]
        if o.model_path and not os.path.isdir(o.model_path):
            raise FileNotFoundError(f"--model_path {o.model_path}: no such folder")
        cls = {"t2v-A14B": wan.WanT2V, "i2v-A14B": wan.WanI2V, "ti2v-5B": wan.WanTI2V}[o.task]
        self.model = cls(config=self.config, checkpoint_dir=o.model_path, device_id=0, rank=0, t5_cpu=o.t5_cpu,
                         convert_model_dtype=o.convert_model_dtype)
        self.target = self.model
        self.img = _load_image(o.image) if o.task == "i2v-A14B" else None

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


def _absent_components(folder: str) -> dict[str, None]:
    """Optional components a saved pipeline lacks (``model_index.json`` says null): passed as None."""
    try:
        with open(os.path.join(folder, "model_index.json"), encoding="utf-8") as fh:
            index = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{folder} is not a diffusers-format folder (model_index.json: {exc})") from None
    optional = ("tokenizer", "text_encoder", "image_encoder", "image_processor")
    return {k: None for k in optional if k in index and not any(index[k] or [])}


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

    def _prompt_args(self) -> dict[str, Any]:
        o = self.o
        if getattr(self.pipe, "text_encoder", None) is not None:
            return {"prompt": o.prompt, "negative_prompt": o.negative_prompt}
        from ..testing import TEXT_DIM, tiny_prompt_embeds

        text_dim = getattr(self.pipe.transformer.config, "text_dim", None)
        if text_dim != TEXT_DIM:
            raise ValueError(f"{o.model_path} has no text encoder; only the tiny test pipelines of "
                             "latent_probe.testing (text_dim 32) can run without one")
        dt = self.pipe.transformer.dtype
        return {"prompt_embeds": tiny_prompt_embeds(o.prompt).to(self.device, dt),
                "negative_prompt_embeds": tiny_prompt_embeds(o.negative_prompt).to(self.device, dt)}

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


def load_backend(o: AnalyzeOptions) -> WanBackend | DiffusersBackend:
    if o.task not in TASKS:
        raise ValueError(f"unknown task {o.task!r}; choose from {', '.join(TASKS)}")
    if o.backend == "wan":
        return WanBackend(o)
    if o.backend == "diffusers":
        return DiffusersBackend(o)
    raise ValueError(f"unknown backend {o.backend!r}; choose wan or diffusers")


# ----------------------------------------------------------------------------- orchestration
def _points(o: AnalyzeOptions, defaults: tuple[int, int]) -> list[SweepPoint]:
    frames = list(o.num_frames or [defaults[0]])
    steps = list(o.num_inference_steps or [defaults[1]])
    return [SweepPoint(f, s) for f, s in itertools.product(frames, steps)]


def _name(point: SweepPoint, variant: Variant, o: AnalyzeOptions, n_variants: int) -> tuple[str, str]:
    """(subfolder, label) of one generation; empty subfolder for a single run."""
    parts, labels = [], []
    if o.num_frames and len(o.num_frames) > 1:
        parts.append(f"frames{point.num_frames}")
        labels.append(f"frames={point.num_frames}")
    if o.num_inference_steps and len(o.num_inference_steps) > 1:
        parts.append(f"steps{point.num_inference_steps}")
        labels.append(f"steps={point.num_inference_steps}")
    if n_variants > 1:
        parts.append(variant.name)
        labels.append(variant.name)
    return "_".join(parts), " · ".join(labels) or f"{point.num_frames} frames, {point.num_inference_steps} steps"


def _compare_point(o: AnalyzeOptions, backend: Any, point: SweepPoint, attrs: dict[str, Any],
                   views: Callable[[str, str, str], None], log: Callable[[str], None]) -> None:
    """Baseline and frame-truncated generation of one sweep point (same seed), their report and views."""
    from ..interventions import compare_truncation, format_comparison
    from .safe_text import terminal, terminal_lines

    sub, label = _name(point, BASELINE, o, 1)
    base = os.path.join(o.output_dir, sub) if sub else o.output_dir
    folders = {v: os.path.join(base, v) for v in ("baseline", "half_frame")}
    for folder in folders.values():
        os.makedirs(folder, exist_ok=True)
    t = o.truncation or {}
    log(terminal(f"comparing baseline and frame truncation (keep {t.get('keep', 3)}) at {point.num_frames} "
                 f"frames, {point.num_inference_steps} steps"))
    result = compare_truncation(
        backend.target, lambda: backend.generate(point), keep=t.get("keep", 3), until=t.get("until", "boundary"),
        fill=t.get("fill", "linear"), baseline_path=os.path.join(folders["baseline"], "run.h5"),
        truncated_path=os.path.join(folders["half_frame"], "run.h5"),
        probe_kwargs={"capture": ("x_t", "pred", "x0", "eps"), "store_dtype": o.store_dtype,
                      "cfg_branches": o.cfg_branches, "attrs": dict(attrs, label=label), "overwrite": True},
        output_range=2.0 if o.backend == "wan" else None)
    report = format_comparison(result)
    log(terminal_lines(report))
    with open(os.path.join(base, "truncation_comparison.txt"), "w", encoding="utf-8") as fh:
        fh.write(report + "\n")
    for run in (result.baseline_run, result.truncated_run):
        if run is not None:
            run.close()
    for variant, folder in folders.items():
        views(os.path.join(folder, "run.h5"), f"{label} · {variant}", folder)


def run_analysis(o: AnalyzeOptions, log: Callable[[str], None] = print) -> AnalysisResult:
    """Record every (sweep point × variant) generation into ``o.output_dir`` and write the views.

    ``log`` receives progress text with control characters escaped (safe to print to a terminal).
    """
    from ..probe import LatentProbe
    from ..store.reader import open_run
    from .dashboard import write_dashboard
    from .figures import continuity_figure
    from .progress import progress
    from .report import terminal_summary, write_npz, write_statistics
    from .safe_text import terminal
    from .series import collect
    from .static import StaticExportError, write_continuity_image

    backend = load_backend(o)
    points = _points(o, backend.defaults())
    jobs = [(p, v) for p in points for v in o.variants]
    os.makedirs(o.output_dir, exist_ok=True)
    paths, labels, notes, series = [], [], [], []
    attrs = {"prompt": o.prompt, "task": o.task, "backend": o.backend, "model_path": o.model_path or "",
             "seed": o.seed, "metrics_space": o.space}
    def views(path: str, label: str, folder: str) -> None:
        with open_run(path, "r+") as run:  # writable: the metrics are cached in the file under /metrics
            s = collect(run, label=label, space=o.space, phases=o.phases)
        write_statistics(s, folder)
        write_npz(s, os.path.join(folder, "temporal_continuity.npz"))
        log(terminal_summary(s.summary))
        paths.append(path)
        labels.append(label)
        series.append(s)

    if o.truncation is not None:
        for point in progress(points, desc="comparisons", total=len(points)):
            _compare_point(o, backend, point, attrs, views, log)
    for point, variant in progress(jobs if o.truncation is None else [], desc="generations", total=len(jobs)):
        sub, label = _name(point, variant, o, len(o.variants))
        folder = os.path.join(o.output_dir, sub) if sub else o.output_dir
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, "run.h5")
        intervene = variant.intervene(point) if variant.intervene else None
        log(terminal(f"recording {label}: {point.num_frames} frames, {point.num_inference_steps} steps → {path}"))
        with LatentProbe(backend.target, path, overwrite=True, store_dtype=o.store_dtype,
                         cfg_branches=o.cfg_branches, attrs=dict(attrs, label=label), intervene=intervene):
            backend.generate(point)
        views(path, label, folder)
    name = "dashboard.html" if len(paths) == 1 else "comparison.html"
    title = f"latent_probe analyze: {o.task} ({o.backend})" + (" — comparison" if len(paths) > 1 else "")
    dashboard = write_dashboard(series, os.path.join(o.output_dir, name), title=title)
    if o.static_images:
        try:
            write_continuity_image(series, os.path.join(o.output_dir, "temporal_continuity.png"),
                                   continuity_figure(series))
        except StaticExportError as exc:
            notes.append(str(exc))
    return AnalysisResult(paths, labels, dashboard, notes)
