"""``latent-probe study PROMPTS --out DIR --seeds 0-3 --set steps=20,30 --set truncation=none,keep3``.

Expands prompts × seeds × settings into jobs, loads the model once (backend ``demo``, ``organism``, ``diffusers``
or ``wan``, as ``analyze`` does) and records every job not yet complete into ``DIR/runs/<job id>.h5``
(``latent_probe.study.run_study``). Under ``torchrun --nproc_per_node N`` the jobs are split across the ranks,
one model per GPU; with the wan backend's ``--dit_fsdp`` / ``--t5_fsdp`` / ``--ulysses_size N`` all ranks run
each job together instead. With ``--set method=mag_cache:T`` and ``--mag_calibrate SEEDS`` (organism backend) the
MagCache configs are calibrated first, into ``DIR/calibration/`` (``study.mag_calibration``), or reused from there.
Registered by ``latent_probe.app.cli`` with ``register(subparsers)``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
from typing import Any, Callable

from ..study import Job, Ranks, StudyError, Suite, parse_seeds, parse_setting, read_manifest, read_prompts, run_study
from .backends import DEFAULT_SIZE, ORGANISM_STEPS, TASKS, SweepPoint, WanBackend, import_wan, wan_config
from .options import add_model_arguments, add_storage_arguments, storage_kwargs


__all__ = ["register", "study_command", "check_parallel", "BACKEND_SETTINGS"]

BACKEND_SETTINGS = {  # the --set names each backend can apply to a generation
    "demo": ("frames", "steps"),
    "organism": ("steps", "guidance", "truncation", "method"),
    "diffusers": ("frames", "steps", "guidance", "truncation"),
    "wan": ("frames", "steps", "guidance", "shift", "truncation"),
}
DEMO_DEFAULTS = {"frames": 13, "steps": 20}


def _usage(text: str) -> Exception:
    from .cli import UsageError  # here, not at import: cli imports this module

    return UsageError(text)


# ----------------------------------------------------------------------------- parallel layout
def check_parallel(world_size: int, backend: str, dit_fsdp: bool, t5_fsdp: bool, ulysses_size: int,
                   truncation: bool) -> str:
    """``"data"`` (jobs split across ranks) or ``"group"`` (every rank runs each job); refuses what cannot work."""
    group = dit_fsdp or t5_fsdp or ulysses_size > 1
    if ulysses_size < 1:
        raise _usage("--ulysses_size must be at least 1")
    if not group:
        return "data"
    if backend != "wan":
        raise _usage("--dit_fsdp, --t5_fsdp and --ulysses_size are for the wan backend")
    if world_size < 2:
        raise _usage("--dit_fsdp, --t5_fsdp and --ulysses_size need several processes: torchrun --nproc_per_node N")
    if ulysses_size > 1 and ulysses_size != world_size:
        raise _usage(f"--ulysses_size {ulysses_size} with {world_size} processes: Wan2.2's sequence parallelism "
                     "spans every rank of a launch; for data-parallel groups of Ulysses ranks run one launch per "
                     "group with --shard I/N (docs/studies.md)")
    if truncation and ulysses_size > 1:
        raise _usage("--set truncation cannot be combined with --ulysses_size (frame truncation does not slice "
                     "sequence-parallel DiT calls)")
    return "group"


# ----------------------------------------------------------------------------- backends
class DemoModel:
    """The demo's analytic denoiser and flow UniPC scheduler (simulated data, CPU, no weights)."""

    def __init__(self) -> None:
        from diffusers import UniPCMultistepScheduler

        from ..demo import AnalyticDenoiser, moving_pattern_video

        self._video = moving_pattern_video
        self.model = AnalyticDenoiser(moving_pattern_video(frames=2))
        self.scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                 flow_shift=5.0, num_train_timesteps=1000)
        self.target = (self.model, self.scheduler)

    def generate(self, job: Job, frames: int, steps: int) -> None:
        import zlib

        import torch

        video_seed = (zlib.crc32(job.prompt.text.encode()) + job.seed) % 2**31  # the prompt picks the video
        clean = self._video(frames=frames, seed=video_seed)
        self.model.clean = clean
        self.model.frame_error = torch.randn(clean.shape, generator=torch.Generator().manual_seed(job.seed + 1))
        self.scheduler.set_timesteps(steps)
        x = torch.randn(clean.shape, generator=torch.Generator().manual_seed(job.seed + 2))
        with torch.no_grad():
            for t in self.scheduler.timesteps:
                x = self.scheduler.step(self.model(x, t.expand(1)), t, x, return_dict=False)[0]


class StudyWanBackend(WanBackend):
    """``WanBackend`` built for a rank: ``device_id=LOCAL_RANK``; in group mode the repository's FSDP / Ulysses."""

    def __init__(self, o: Any, ranks: Ranks, group: bool, dit_fsdp: bool, t5_fsdp: bool, ulysses_size: int) -> None:
        wan = import_wan(o.wan_repo)
        self.o = o
        self.config = wan_config(wan, o)
        if ulysses_size > 1:
            init = getattr(getattr(getattr(wan, "distributed", None), "util", None), "init_distributed_group", None)
            if init is not None:
                init()
        cls = {"t2v-A14B": wan.WanT2V, "i2v-A14B": wan.WanI2V, "ti2v-5B": wan.WanTI2V}[o.task]
        kw: dict[str, Any] = {}
        if group:  # one generation across the ranks, as Wan2.2's generate.py builds it
            kw = dict(t5_fsdp=t5_fsdp, dit_fsdp=dit_fsdp, use_sp=ulysses_size > 1)
        self.model = cls(config=self.config, checkpoint_dir=o.model_path, device_id=ranks.local_rank,
                         rank=ranks.rank if group else 0, t5_cpu=o.t5_cpu, convert_model_dtype=o.convert_model_dtype,
                         **kw)
        self.target = self.model
        self.img = None


def _image(path: str | None) -> Any:
    from PIL import Image

    return Image.open(path).convert("RGB")


class _Generator:
    """Applies a job's prompt, seed and settings to a loaded backend and runs one generation."""

    def __init__(self, args: argparse.Namespace, ranks: Ranks, mode: str) -> None:
        from .analyze import AnalyzeOptions

        self.backend_name = args.backend
        if args.backend == "demo":
            self.demo = DemoModel()
            self.target = self.demo.target
            return
        if args.backend == "organism":
            from .backends import OrganismBackend

            self.organism = OrganismBackend(args.model_path, args.device or (ranks.device if ranks.world_size > 1
                                                                             else None), args.dtype,
                                            size=args.organism, sha256=args.sha256)
            self.target = self.organism.target
            self.out = args.out
            self.record_residuals = args.record_residuals
            self.mag = _mag_configs(args.mag_config)
            self.mag_by_setting: dict[str, dict[str, dict[str, Any]]] | None = None   # --mag_calibrate's configs
            return
        self.options = AnalyzeOptions(
            prompt="", output_dir=args.out, task=args.task, backend=args.backend, model_path=args.model_path,
            size=args.size, seed=0, negative_prompt=args.negative_prompt, wan_repo=args.wan_repo,
            wan_config=args.wan_config, sample_solver=args.sample_solver, sample_shift=args.sample_shift,
            guide_scale=args.guide_scale,
            offload_model=(mode == "data") if args.offload_model is None else args.offload_model == "true",
            t5_cpu=args.t5_cpu, convert_model_dtype=args.convert_model_dtype,
            device=args.device or (ranks.device if ranks.world_size > 1 else None), dtype=args.dtype)
        if args.backend == "wan":
            self.backend = StudyWanBackend(self.options, ranks, mode == "group", args.dit_fsdp, args.t5_fsdp,
                                           args.ulysses_size)
        else:
            from .backends import DiffusersBackend

            self.backend = DiffusersBackend(self.options)
            if ranks.world_size > 1:
                self.backend.pipe.set_progress_bar_config(disable=True)
        self.defaults = dict(zip(("frames", "steps"), self.backend.defaults()))
        self.target = self.backend.target

    def calibrating(self, out: str) -> "_Generator":
        """This generator (the same loaded organism) recording the calibration clips: baseline jobs with their
        residuals, into ``out``, as a ``--record_residuals`` study there would."""
        other = copy.copy(self)
        other.out, other.record_residuals, other.mag, other.mag_by_setting = out, True, {}, None
        return other

    def intervene(self, job: Job) -> Any:
        """The job's intervention (``intervention_of``), kept so the organism's job outputs can say what it did."""
        self.intervention = intervention_of(job)
        return self.intervention

    def __call__(self, job: Job) -> None:
        s = job.settings
        if self.backend_name == "organism":
            self._organism(job)
            return
        if self.backend_name == "demo":
            self.demo.generate(job, int(s.get("frames", DEMO_DEFAULTS["frames"])),
                               int(s.get("steps", DEMO_DEFAULTS["steps"])))
            return
        o = self.options
        change: dict[str, Any] = {"prompt": job.prompt.text, "seed": job.seed}
        if "guidance" in s:
            change["guide_scale"] = [float(s["guidance"])]
        if "shift" in s:
            change["sample_shift"] = float(s["shift"])
        self.backend.o = dataclasses.replace(o, **change)
        self.backend.img = _image(job.prompt.image_file) if o.task == "i2v-A14B" else None
        self.backend.generate(SweepPoint(int(s.get("frames", self.defaults["frames"])),
                                         int(s.get("steps", self.defaults["steps"]))))


    def _organism(self, job: Job) -> None:
        """One organism clip under the job's method, timed (``study.timing.GenerationClock``: wall, thread CPU,
        DiT time, token-steps). Writes ``methods/<job id>.json`` (what the method skipped, the costs), with
        --record_residuals ``residuals/<job id>.json`` (baseline and fewer-steps jobs), and last — still inside
        the probe, before the run file is published — ``outputs/<job id>.safetensors`` (the final latent and the
        costs; ``study.outputs``): the job is complete only with it. On a CPU the generation runs with one torch
        thread (the DiT time is the calling thread's CPU time; restored after the job)."""
        import contextlib

        import torch

        from ..interventions.caches import experts_of
        from ..interventions.residuals import ResidualRecorder
        from ..study.outputs import write_job_outputs
        from ..study.timing import GenerationClock

        s = job.settings
        method = method_of(job)
        steps = method.num_steps(int(s.get("steps", ORGANISM_STEPS[self.organism.size])))
        guidance = float(s["guidance"]) if "guidance" in s else None
        plain = method.kind in ("baseline", "steps") and s.get("truncation", "none") == "none"
        experts = experts_of(self.organism.pipe)
        mag = self.mag
        if self.mag_by_setting is not None and method.kind == "mag_cache":
            from ..study.mag_calibration import group_label

            mag = self.mag_by_setting[group_label({"steps": steps, "guidance": s.get("guidance")})]
        recorder = ResidualRecorder(experts, self.organism.pipe) if self.record_residuals and plain else None
        cpu = not str(self.organism.device).startswith("cuda")
        threads = torch.get_num_threads()
        intervention = getattr(self, "intervention", None)
        try:
            if cpu:
                torch.set_num_threads(1)
            with method.applied(self.organism.pipe, mag_ratios=mag, steps=steps) as counter, \
                    (recorder.attached() if recorder else contextlib.nullcontext()), \
                    GenerationClock(experts) as clock:
                final = self.organism.generate(job.prompt.text, job.seed, steps, guidance)
        finally:
            if cpu:
                torch.set_num_threads(threads)
        cost = clock.result().as_dict()
        who = {"job_id": job.id, "prompt_id": job.prompt.id, "seed": job.seed, "settings": dict(job.settings)}
        done = {}
        if intervention is not None and hasattr(intervention, "summary"):
            summ = intervention.summary()
            done = {"keys_used": summ.get("keys_used"),
                    "token_steps_skipped_fraction": summ.get("token_steps_skipped_fraction")}
        doc = {**who, **method.describe(), "organism": self.organism.size, "num_inference_steps": steps,
               "wall_s": cost["wall_s"], "cost": cost, "intervention": done,
               "residuals_recorded": recorder is not None,   # its norms and syncs add to wall_s and dit_s
               "device": str(self.organism.device), "skips": counter.summary(), "calls": counter.per_call()}
        _write_json(os.path.join(self.out, "methods", f"{job.id}.json"), doc)
        if recorder is not None:
            recorder.save(os.path.join(self.out, "residuals", f"{job.id}.json"), **who)
        record = {**{k: v for k, v in doc.items() if k != "calls"}, "steps_run": steps}
        write_job_outputs(self.out, job.id, final, record)


def method_of(job: Job) -> Any:
    """The job's ``Method`` (``--set method``; baseline when not set)."""
    from ..interventions.caches import Method

    return Method.parse(str(job.settings["method"])) if "method" in job.settings else Method("baseline")


def intervention_of(job: Job) -> Any:
    """The job's intervention: a ``truncation`` setting's FrameTruncation, or a ``method=truncation:…``'s."""
    from ..study import truncation_of

    return truncation_of(job) or method_of(job).intervention()


def _mag_configs(pairs: list[str] | None) -> dict[str, dict[str, Any]]:
    """--mag_config EXPERT=FILE (what ``latent-probe calibrate`` writes) → {expert: MagCacheConfig kwargs}, each
    checked here, before the manifest is written or any job runs."""
    import json

    from ..interventions.caches import check_mag_config

    out: dict[str, dict[str, Any]] = {}
    for text in pairs or []:
        expert, sep, path = text.partition("=")
        if not sep or expert not in ("transformer", "transformer_2"):
            raise _usage(f"--mag_config {text!r}: expected transformer=FILE or transformer_2=FILE")
        try:
            with open(path, encoding="utf-8") as fh:
                out[expert] = check_mag_config(json.load(fh), path)
        except (OSError, ValueError) as exc:
            raise _usage(f"--mag_config {text}: {exc}") from None
    return out


def _write_json(path: str, doc: dict[str, Any]) -> None:
    import json

    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- the command
def _grid(args: argparse.Namespace) -> tuple[dict[str, list], list[int]]:
    """The --set grid and the --seeds (a bad one is a usage error)."""
    grid: dict[str, list] = {}
    try:
        for text in args.set or []:
            name, values = parse_setting(text)
            if name in grid:
                raise StudyError(f"--set {name} is given twice; list its values once: {name}=A,B")
            if name not in BACKEND_SETTINGS[args.backend]:
                raise StudyError(f"--set {name}: the {args.backend} backend takes "
                                 f"{', '.join(BACKEND_SETTINGS[args.backend])}")
            grid[name] = values
        if "truncation" in grid and any(str(v).startswith("truncation") for v in grid.get("method", [])):
            raise StudyError("--set truncation and --set method=truncation:… together would truncate twice; give "
                             "truncation through one of them")
        mag = any(str(v).startswith("mag_cache") for v in grid.get("method", []))
        if args.mag_calibrate is not None and args.mag_config:
            raise StudyError("--mag_calibrate and --mag_config both give MagCache ratios: give one of them")
        if mag and args.mag_calibrate is None:
            missing = {"transformer", "transformer_2"} - {p.partition("=")[0] for p in args.mag_config or []}
            if missing:
                raise StudyError(f"--set method=mag_cache:… needs calibrated ratios: --mag_calibrate SEEDS "
                                 f"(calibrate here first, on other seeds) or --mag_config {sorted(missing)[0]}=FILE "
                                 "(from latent-probe calibrate) for each expert")
        if args.backend != "organism":
            used = [n for n, v in (("--set method", "method" in grid), ("--record_residuals", args.record_residuals),
                                   ("--mag_config", bool(args.mag_config)),
                                   ("--mag_calibrate", args.mag_calibrate is not None),
                                   ("--organism", args.organism != "v1"),
                                   ("--sha256", args.sha256 is not None)) if v]
            if used:
                raise StudyError(f"{used[0]} is for the organism backend")
        if args.backend == "organism" and args.organism == "v1" and args.sha256 is not None:
            raise StudyError("--sha256 checks an organism v2 weights file: give --organism small or large")
        for name, low in (("frames", 2 if args.backend == "demo" else 5), ("steps", 2)):
            if any(v < low for v in grid.get(name, [])):
                raise StudyError(f"--set {name}: values must be at least {low}")
        seeds = parse_seeds(args.seeds)
        if args.mag_calibrate is not None:
            if not mag:
                raise StudyError("--mag_calibrate calibrates MagCache for --set method=mag_cache:…, and none is set")
            both = sorted(set(_calibration_seeds(args.mag_calibrate)) & set(seeds))
            if both:
                raise StudyError(f"--mag_calibrate {args.mag_calibrate} and --seeds {args.seeds} share seed "
                                 f"{both[0]}: the clips scored must not be the clips the ratios were calibrated on")
        return grid, seeds
    except StudyError as exc:
        raise _usage(str(exc)) from None


def _suite(args: argparse.Namespace) -> Suite:
    grid, seeds = _grid(args)
    prompts = read_prompts(args.prompts)  # a bad file: StudyError, one line, exit status 1
    if args.backend != "demo" and args.task == "i2v-A14B":
        for p in prompts:
            if not p.image_file or not os.path.isfile(p.image_file):
                raise StudyError(f"prompt {p.id}: task i2v-A14B needs an image (column 'image'); "
                                 + ("none given" if not p.image else f"{p.image}: no such file"))
    if args.backend == "organism":
        from ..organism import videos, videos_v2

        PROMPTS = videos.PROMPTS if args.organism == "v1" else videos_v2.PROMPTS
        for p in prompts:
            if " ".join(p.text.lower().split()) not in PROMPTS:
                raise StudyError(f"prompt {p.id}: {p.text!r} is not one of the organism's training prompts: "
                                 + "; ".join(PROMPTS))
    name = args.name or os.path.basename(os.path.normpath(os.path.abspath(args.out)))
    return Suite(name, prompts, seeds, grid, fixed=_fixed(args))


def _fixed(args: argparse.Namespace) -> dict[str, Any]:
    """What every job shares and a rerun must not change (the manifest keeps it)."""
    out: dict[str, Any] = {"backend": args.backend, **_storage(args)}
    if args.backend == "organism":
        out.update(model_path=os.path.abspath(args.model_path) if args.model_path else None, dtype=args.dtype,
                   record_residuals=bool(args.record_residuals), mag_config=sorted(args.mag_config or []))
        if args.mag_calibrate is not None:   # only when given: a folder recorded before it stays resumable
            out.update(mag_calibrate=_calibration_seeds(args.mag_calibrate))
        if args.organism != "v1":   # a v1 study's fixed options are as before, so its folder stays resumable
            out.update(organism=args.organism, sha256=args.sha256)
        return out
    if args.backend != "demo":
        out.update(task=args.task, model_path=os.path.abspath(args.model_path) if args.model_path else None,
                   size=args.size or DEFAULT_SIZE[args.task], negative_prompt=args.negative_prompt,
                   guide_scale=args.guide_scale)
    if args.backend == "wan":
        out.update(wan_config=args.wan_config, sample_solver=args.sample_solver, sample_shift=args.sample_shift)
    if args.backend == "diffusers":
        out.update(dtype=args.dtype)
    return out


def _storage(args: argparse.Namespace) -> dict[str, Any]:
    """The probe's storage options (LatentProbe keyword arguments), checked before the manifest is written or any
    job runs (each job would fail the same way)."""
    try:
        return storage_kwargs(args)
    except ValueError as exc:
        raise _usage(str(exc)) from None


# ----------------------------------------------------------------------------- MagCache calibration
CALIBRATION_STORAGE = {"capture": "none", "metrics": "x0", "latent_steps": None, "cfg_branches": False}


def _calibration_seeds(text: str) -> list[int]:
    try:
        return parse_seeds(text)
    except StudyError:
        raise StudyError(f"--mag_calibrate {text!r}: expected seeds as --seeds takes them, e.g. 100-101") from None


@dataclasses.dataclass
class Calibration:
    """``--mag_calibrate``: the calibration study (``suite`` in ``folder``, recorded with ``args``' storage),
    the inputs its record must match, its settings groups and their job ids, and the configs of a complete one."""

    folder: str
    args: argparse.Namespace
    suite: Suite
    inputs: dict[str, Any]
    groups: list[dict[str, Any]]
    jobs: dict[str, list[str]]
    configs: dict[str, dict[str, dict[str, Any]]] | None


def _calibration(args: argparse.Namespace, suite: Suite, shard: tuple[int, int] | None) -> Calibration:
    """What ``--mag_calibrate`` will do, checked before the model loads: a complete calibration in
    ``OUT/calibration`` made from these inputs is reused; one from other inputs, with a changed file, or a folder
    holding another calibration study is refused in one line. The calibration study: baseline generations of
    every prompt at the --mag_calibrate seeds, at every step count (and guidance) the mag_cache jobs run at —
    the study ``latent-probe study PROMPTS --out OUT/calibration --seeds SEEDS --set steps=N --record_residuals
    --capture none --metrics x0`` with the same model options would record."""
    from ..study import read_manifest
    from ..study.manifest import check_same_suite
    from ..study.mag_calibration import CALIBRATION_DIR, group_label, read_calibration

    size = args.organism
    mag_jobs = [j for j in suite.jobs() if method_of(j).kind == "mag_cache"]
    steps = sorted({method_of(j).num_steps(int(j.settings.get("steps", ORGANISM_STEPS[size]))) for j in mag_jobs})
    grid: dict[str, list] = {"steps": steps}
    if "guidance" in suite.grid:
        grid["guidance"] = sorted({j.settings["guidance"] for j in mag_jobs})
    folder = os.path.join(args.out, CALIBRATION_DIR)
    cal_args = argparse.Namespace(**{**vars(args), **CALIBRATION_STORAGE, "record_residuals": True,
                                     "mag_config": None, "mag_calibrate": None, "out": folder})
    cal_suite = Suite(f"{suite.name}-calibration", suite.prompts, _calibration_seeds(args.mag_calibrate), grid,
                      fixed=_fixed(cal_args))
    jobs: dict[str, list[str]] = {}
    for j in cal_suite.jobs():
        jobs.setdefault(group_label(j.settings), []).append(j.id)
    groups = [dict(zip(grid, combo)) for combo in
              sorted({tuple(j.settings[k] for k in grid) for j in cal_suite.jobs()})]
    inputs = {"prompts": [[p.id, p.text] for p in suite.prompts], "seeds": list(cal_suite.seeds), "settings": groups,
              "organism": size, "model_path": cal_suite.fixed.get("model_path"), "sha256": args.sha256,
              "dtype": args.dtype}
    configs = read_calibration(folder, inputs)
    if configs is None:
        check_same_suite(read_manifest(folder), cal_suite, folder)
        if shard is not None:
            raise StudyError(f"--mag_calibrate with --shard: {folder} holds no complete calibration yet; run it once "
                             "without --shard (or give --mag_config files), then the shards reuse it")
    return Calibration(folder, cal_args, cal_suite, inputs, groups, jobs, configs)


def _calibrate(cal: Calibration, gen: _Generator, ranks: Ranks, say: Callable[[str], None],
               on_error: str) -> dict[str, dict[str, dict[str, Any]]]:
    """The configs of ``cal``: reused, or recorded now (the calibration jobs split across the ranks like any
    study's; then rank 0 alone computes and writes the configs while the others wait at a barrier, and every rank
    reads the files back, checked against the record)."""
    from ..study.distributed import coordinator
    from ..study.mag_calibration import read_calibration, write_calibration

    if cal.configs is not None:
        say(f"MagCache calibration: reusing {cal.folder} ({', '.join(cal.configs)})")
        return cal.configs
    n = len(cal.suite.jobs())
    say(f"MagCache calibration: {n} baseline generation{'s' if n > 1 else ''} into {cal.folder} first")
    cgen = gen.calibrating(cal.folder)
    result = run_study(cal.suite, cgen, cgen.target, cal.folder, mode="data",
                       attrs={"backend": "organism", "model_path": cal.args.model_path or "", "calibration": True},
                       intervene=cgen.intervene, job_outputs=True, probe_kwargs=_storage(cal.args),
                       on_error=on_error, log=say)
    coord = coordinator(ranks)
    try:
        if result.failed:
            job, error = result.failed[0]
            raise StudyError(f"MagCache calibration: {len(result.failed)} job(s) failed (first: {job}: {error}); run "
                             "the same command again to redo them")
        if ranks.rank == 0:
            write_calibration(cal.folder, cal.inputs, cal.groups, cal.jobs)
        coord.barrier()
    except BaseException as exc:
        coord.failed((str(exc).splitlines() or [type(exc).__name__])[0])
        raise
    finally:
        coord.close()
    configs = read_calibration(cal.folder, cal.inputs)
    if configs is None:
        raise StudyError(f"{cal.folder}: rank 0 wrote no calibration record (is the folder shared by every rank?)")
    say(f"MagCache calibration: wrote {cal.folder} ({', '.join(configs)})")
    return configs


def _shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise _usage(f"--shard {text!r}: expected I/N, e.g. 0/2") from None
    if n < 1 or not 0 <= i < n:
        raise _usage(f"--shard {text}: expected I/N with 0 <= I < N")
    return i, n


def _printer() -> Callable[[str], None]:
    from ..views.safe_text import terminal

    def say(text: str) -> None:
        print(terminal(text), flush=True)

    return say


def study_command(args: argparse.Namespace) -> int:
    """``latent-probe study``: the ``func`` of its parser."""
    import torch

    ranks = Ranks.from_env()
    shard = _shard(args.shard)
    suite = _suite(args)
    truncating = any(v != "none" for v in suite.grid.get("truncation", []))
    mode = check_parallel(ranks.world_size, args.backend, args.dit_fsdp, args.t5_fsdp, args.ulysses_size, truncating)
    say = _printer()
    cal = None
    if args.mag_calibrate is not None:
        from ..study.manifest import check_same_suite

        check_same_suite(read_manifest(args.out), suite, args.out)   # before a calibration runs
        cal = _calibration(args, suite, shard)
    if args.dry_run:
        if cal is not None and ranks.rank == 0:
            say(f"MagCache calibration: complete in {cal.folder}, reused" if cal.configs is not None else
                f"MagCache calibration: {len(cal.suite.jobs())} baseline generations into {cal.folder} first")
        return _dry_run(suite, args.out, shard, ranks, say, job_outputs=args.backend == "organism")
    if torch.cuda.is_available() and ranks.world_size > 1:
        torch.cuda.set_device(ranks.local_rank)
    if mode == "group":
        import torch.distributed as dist

        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo", init_method="env://")
    try:
        gen = _Generator(args, ranks, mode)
        if cal is not None:
            gen.mag_by_setting = _calibrate(cal, gen, ranks, say, "raise" if args.stop_on_error else "continue")
        extra = {"backend": args.backend, **({"simulated": True} if args.backend == "demo" else
                                             {"model_path": args.model_path or ""} if args.backend == "organism" else
                                             {"task": args.task, "model_path": args.model_path or ""})}
        result = run_study(suite, gen, gen.target, args.out, mode=mode, shard=shard, attrs=extra,
                           intervene=gen.intervene, job_outputs=args.backend == "organism",
                           probe_kwargs=_storage(args),
                           on_error="raise" if args.stop_on_error else "continue", log=say)
    finally:
        if mode == "group":
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    if result.failed:
        job, error = result.failed[0]
        raise StudyError(f"{len(result.failed)} job{'s' if len(result.failed) > 1 else ''} failed"
                         + (f" on rank {ranks.rank}" if ranks.world_size > 1 else "")
                         + f" (first: {job}: {error}); run the same command again to redo them")
    return 0 if result.ok else 1


def _dry_run(suite: Suite, out: str, shard: tuple[int, int] | None, ranks: Ranks, say: Callable[[str], None],
             job_outputs: bool = False) -> int:
    from ..study import plan_study

    if ranks.rank != 0:
        return 0
    statuses = plan_study(suite, out, shard, job_outputs=job_outputs)
    for n, (job, status) in enumerate(statuses, 1):
        say(f"[{n}/{len(statuses)}] {job.id}  {status.state}" + (f" ({status.detail})" if status.detail else ""))
    todo = sum(not s.done for _, s in statuses)
    say(f"{len(statuses)} jobs, {todo} to run; wrote {os.path.join(out, 'manifest.json')} (dry run: nothing generated)")
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``study`` to a ``latent-probe`` subparsers object."""
    p = subparsers.add_parser(
        "study", help="record a suite of prompt × seed × setting jobs, resumable, data parallel under torchrun",
        description="Expand prompts × seeds × --set grids into jobs and record each into OUT/runs/<job id>.h5 "
                    "(OUT/manifest.json lists them). A rerun skips complete jobs and redoes missing, incomplete or "
                    "unreadable ones. Under torchrun --nproc_per_node N the jobs are split across the ranks. "
                    "See docs/studies.md.")
    p.add_argument("prompts", help="prompt file: text (one prompt a line; # comments), .csv (columns prompt, "
                                   "optional id and image) or .json (a list of {id, prompt, image} or strings)")
    p.add_argument("--out", required=True, help="output folder (manifest.json and runs/)")
    p.add_argument("--name", help="suite name, stored in every run file as 'study' (default: the --out folder's name)")
    p.add_argument("--seeds", default="0", help="seeds, e.g. 0,1,2 or 0-3 (default 0)")
    p.add_argument("--set", action="append", metavar="NAME=V1,V2",
                   help="a setting and its values; repeat for a grid (every combination): steps=20,30, frames=17,33, "
                        "guidance=3.5,5, shift=5,8 (wan), truncation=none,keep3,keep3@10 (keep K frames until the "
                        "expert boundary or step S), method=baseline,steps:12,first_block_cache:0.1,"
                        "truncation:3:steps=12 (organism; docs/studies.md)")
    p.add_argument("--backend", default="wan", choices=tuple(BACKEND_SETTINGS),
                   help="wan: the Wan2.2 repository (default); diffusers: a local diffusers-format folder; organism: "
                        "the packaged trained organism (prompts: its training prompts); demo: the simulated "
                        "denoiser (CPU, no weights)")
    p.add_argument("--record_residuals", action="store_true",
                   help="organism backend: also record MagCache's and FirstBlockCache's signals of baseline and "
                        "fewer-steps jobs into OUT/residuals/ (for latent-probe calibrate)")
    p.add_argument("--mag_config", action="append", metavar="EXPERT=FILE",
                   help="organism backend, --set method=mag_cache:T: the calibrated MagCacheConfig of an expert "
                        "(transformer=FILE, transformer_2=FILE; written by latent-probe calibrate)")
    p.add_argument("--mag_calibrate", metavar="SEEDS",
                   help="organism backend, --set method=mag_cache:T: calibrate the MagCache configs first, from "
                        "baseline generations of every prompt at these seeds (e.g. 100-101; none of --seeds), into "
                        "OUT/calibration/ (reused on a rerun; docs/studies.md)")
    p.add_argument("--model_path", help="checkpoint folder (wan), local diffusers-format folder (diffusers) or organism weights file "
                        "(organism; default: the packaged one)")
    p.add_argument("--organism", default="v1", choices=("v1", "small", "large"),
                   help="organism backend: v1 (default, the packaged organism, 20 steps) or an organism v2 size "
                        "(learned VAE, 81 frames, 40 steps by default; --model_path and --sha256 for a weights file "
                        "kept outside the package)")
    p.add_argument("--sha256", help="organism v2: the SHA-256 its --model_path file must have (default: the digest "
                                    "the package records for the file name)")
    p.add_argument("--task", default="t2v-A14B", choices=TASKS,
                   help="Wan2.2 task: t2v-A14B (default), i2v-A14B (every prompt needs an image) or ti2v-5B")
    p.add_argument("--size", help="WIDTH*HEIGHT as in Wan2.2 (default: the task's)")
    p.add_argument("--negative_prompt", default="",
                   help="negative prompt (default: Wan2.2's own for the wan backend, empty for diffusers)")
    add_model_arguments(p, study=True)
    add_storage_arguments(p)
    p.add_argument("--dit_fsdp", action="store_true",
                   help="wan backend under torchrun: shard the DiTs across all ranks (each job runs on all of them)")
    p.add_argument("--t5_fsdp", action="store_true", help="wan backend under torchrun: shard umT5 across all ranks")
    p.add_argument("--ulysses_size", type=int, default=1,
                   help="wan backend: sequence parallelism across this many ranks (= nproc_per_node; each job "
                        "runs on all of them, recorded on rank 0)")
    p.add_argument("--shard", metavar="I/N",
                   help="run only jobs whose index is I modulo N (separate launches on one folder, e.g. 2 launches "
                        "× 4 Ulysses ranks)")
    p.add_argument("--stop_on_error", action="store_true",
                   help="stop at the first failed job (default: note it, go on; a rerun redoes it)")
    p.add_argument("--dry_run", action="store_true",
                   help="write the manifest and list each job's state (complete, missing, incomplete, ...); load no "
                        "model, generate nothing")
    p.set_defaults(func=study_command)
    return p
