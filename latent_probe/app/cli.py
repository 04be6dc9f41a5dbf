"""``latent-probe``: a thin command line over the library (``python -m latent_probe`` runs the same).

Subcommands: demo, info, metrics, dashboard, analyze, truncation (``latent-probe CMD --help``), one small
``_cmd_*`` function each. Exit status 0 ok, 1 failure, 2 usage. Errors are one line: ``latent-probe CMD:
error: ...`` (set ``LATENT_PROBE_DEBUG=1`` for the traceback). Text from run files, paths and error
messages is printed with control characters escaped (``views.safe_text.terminal``).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

from ..errors import LatentProbeError
from ..frames import FILLS
from ..views.safe_text import terminal, terminal_lines
from .options import add_model_arguments, add_storage_arguments, phase_scheme
from .truncation_cmd import add_truncation_parser

__all__ = ["main", "build_parser", "UsageError", "add_intervention_args", "truncation_from_args"]

DEMO_STEM = "temporal_continuity_demo"
SIMULATED = "SIMULATED data (analytic denoiser, real flow-matching scheduler; no model weights)"


class UsageError(LatentProbeError):
    """A bad combination of arguments found after parsing: exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{terminal(self.prog)}: error: {terminal(message)} (see {terminal(self.prog)} --help)\n")


def _note(command: str, text: str) -> None:
    print(f"latent-probe {command}: note: {terminal(text)}", file=sys.stderr)


# ----------------------------------------------------------------------------- demo
class _StepCounter:
    """The demo's progress: "baseline: 5 of 20 steps (2.9 s)". On a terminal one line rewritten every step; else
    (a log, a pipe) plain lines after the first step, every ``every``-th step and the last, flushed at once."""

    def __init__(self, stream: Any = None, every: int = 5) -> None:
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = max(1, every)

    def __call__(self, label: str, done: int, total: int, seconds: float) -> None:
        text = f"  {terminal(label)}: {done} of {total} steps ({seconds:.1f} s)"
        if self.tty:
            self.stream.write("\r" + text + ("\n" if done == total else ""))
        elif done == 1 or done == total or done % self.every == 0:
            self.stream.write(text + "\n")
        self.stream.flush()


def _cmd_demo(args: argparse.Namespace) -> int:
    import torch

    if args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    before = torch.get_num_threads()
    # one intra-op thread by default: on a shared 2-core machine two OpenMP threads spin against each other
    # and the organism's small matmuls ran 9x slower (docs/benchmarks.md, "latent-probe demo")
    torch.set_num_threads(args.threads)
    try:
        return _demo(args)
    finally:
        torch.set_num_threads(before)


def _demo(args: argparse.Namespace) -> int:
    from ..demo import (ORGANISM_DESCRIPTION, OrganismUnavailable, load_demo_organism, run_demo_generation,
                        run_organism_demo)
    from ..store.reader import open_run
    from ..views.dashboard import write_dashboard
    from ..views.figures import continuity_figure
    from ..views.report import terminal_summary, write_npz
    from ..views.series import collect
    from ..views.static import StaticExportError, write_continuity_image
    from ..views.video import write_strip_png

    if args.frames is not None and not args.simulated:
        raise UsageError("--frames sets the simulated run's latent frames (the organism always makes 21): "
                         "add --simulated")
    import time

    started = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, DEMO_STEM)
    organism = None
    if not args.simulated:
        try:
            organism = load_demo_organism(args.weights)
        except OrganismUnavailable as exc:
            _note("demo", f"the model organism could not be loaded ({exc}); running the simulated demo instead")
    if organism is None:  # the simulated run: analytic denoiser, real scheduler
        about, videos = SIMULATED, None
        print(f"latent-probe demo: {SIMULATED}")
        _, run = run_demo_generation(base + ".h5", steps=args.steps, frames=args.frames or 13, seed=args.seed)
        print(f"recorded {run.num_steps} steps of {run.quantities} to {terminal(base)}.h5")
        run.close()
        runs = {DEMO_STEM: base + ".h5"}
        title = "latent_probe demo (SIMULATED data): temporal continuity"
    else:  # the organism: baseline and frame-truncated generations of the same prompt and seed
        about = ORGANISM_DESCRIPTION
        print(f"latent-probe demo: {ORGANISM_DESCRIPTION}")
        prompt = int(args.prompt) if args.prompt.isdigit() else args.prompt
        text = organism.prompts[organism.index(prompt)]
        print(f"prompt {terminal(repr(text))}, seed {args.seed}, {args.steps} steps on the CPU: a baseline, then "
              f"FrameTruncation(keep={args.keep}, until='boundary') from the same noise, then seed {args.seed + 1} "
              "(the floor: what two valid samples differ by)")
        demo = run_organism_demo(organism, base + ".h5", base + "_truncated.h5", prompt=prompt, seed=args.seed,
                                 steps=args.steps, keep=args.keep, on_step=_StepCounter(),
                                 floor_path=base + "_seed" + str(args.seed + 1) + ".h5")
        for label, path in demo.paths.items():
            print(f"recorded {label} to {terminal(path)} ({demo.seconds[label]:.1f} s)")
        runs, videos = demo.paths, demo.frames
        title = f"latent_probe demo: {ORGANISM_DESCRIPTION}"
    print("computing the metrics and writing the views ...", flush=True)
    series = []
    for label, path in runs.items():
        with open_run(path, "r+") as run:  # writable: metrics are cached in the file
            series.append(collect(run, label=label))
    s = series[0]
    write_dashboard(series, base + ".html", title=title, videos=videos,
                    seconds=demo.seconds if organism is not None else None)
    shown = " (dashboard; open it in a browser)" if videos is None else \
        f" (dashboard with its verdict and the {len(videos)} videos; open it in a browser)"
    print(f"wrote {terminal(base)}.html{shown}")
    write_npz(s, base + ".npz")
    print(f"wrote {terminal(base)}.npz (step-wise arrays{', baseline' if videos else ''})")
    if videos:
        write_strip_png(videos, base + "_frames.png")
        print(f"wrote {terminal(base)}_frames.png (every few frames: {', '.join(map(terminal, videos))}, "
              "one row each)")
    if args.png:
        try:
            write_continuity_image([s], base + ".png", continuity_figure([s]))
            print(f"wrote {terminal(base)}.png")
        except StaticExportError as exc:
            _note("demo", str(exc))
    print(f"done in {time.perf_counter() - started:.0f} s")
    print()
    print(terminal_summary(s.summary))
    if organism is not None:
        from ..views.verdict import verdict

        v = verdict(series, demo.seconds)
        print("\nVerdict (the same at the top of the dashboard): " + terminal(v.headline))
        for sentence in v.sentences:
            print("  " + terminal(sentence))
    print(f"\n(The numbers above are from {about}.)" if videos else f"\n(The numbers above are {about}.)")
    return 0


# ----------------------------------------------------------------------------- info
def _cmd_info(args: argparse.Namespace) -> int:
    from ..store.reader import open_run

    t = terminal  # every value read from the file is printed escaped
    with open_run(args.run) as run:
        a = run.attrs
        print(f"{t(args.run)}: latent_probe schema {t(a.get('schema_version'))}, "
              f"written by {t(a.get('library_version'))}")
        if a.get("simulated"):
            print("  SIMULATED   analytic denoiser, not a model")
        print(f"  target      {t(a.get('target_class'))} ({t(a.get('family'))})")
        if a.get("prompt"):
            print(f"  prompt      {t(repr(a['prompt']))}")
        if run.complete:
            state = ""
        elif run.recording:
            state = "  (being recorded: latent-probe info --follow shows each step as it is committed)"
        else:
            state = "  (INCOMPLETE: " + t(run.error or "interrupted: the writer stopped without closing the file") + ")"
        print(f"  steps       {run.num_steps}{state}")
        stored = ", ".join(run.quantities) or "none"
        if run.quantities and len(run.latent_steps) != run.num_steps:
            stored += f" at {len(run.latent_steps)} of {run.num_steps} steps ({t(a.get('latent_steps', 'chosen'))})"
        print(f"  quantities  {t(stored)}  [{t(a.get('store_dtype'))}]")
        if run.derivable:
            print(f"  derived     {t(', '.join(run.derivable))} on read, from x_t and pred")
        if run.online_spaces:
            print(f"  online      metrics of {t(', '.join(run.online_spaces))} computed during the run, every step")
        if run.num_steps:
            if run.latent_shape is not None:
                print(f"  latent      [B, C, F, H, W] = {list(run.latent_shape)} a step")
            print(f"  sigma       {run.sigmas[0]:.4f} → {run.sigmas[-1]:.4f}  ({t(a.get('parameterization'))})")
            from ..metrics.phases import expert_phases

            print("  experts     " + ", ".join(f"{t(p.name)} ×{len(p)}" for p in expert_phases(list(run.experts))))
        from ..views.intervention import describe_intervention

        changed = describe_intervention(a, [str(e) for e in run.experts])
        if changed:
            print(f"  intervened  {changed}")
        nonfinite = sum(int(v.any()) for v in run.nonfinite.values())
        if nonfinite:
            print(f"  WARNING     NaN/Inf in {nonfinite} quantities (see /steps, field nonfinite)")
        overflow = [q for q, v in run.overflow.items() if v.any()]
        if overflow:
            print(f"  WARNING     {t(', '.join(overflow))} exceeded {t(a.get('store_dtype'))}'s range: stored as ±inf "
                  "(see /steps, field overflow)")
        if args.follow:
            _follow(run, args.interval)
    return 0


def _follow(run: Any, interval: float) -> None:
    """Print each step as it is committed, until the writer closes the file or dies."""
    import time

    shown = 0
    print("  following (Ctrl-C stops)", flush=True)
    try:
        while True:
            recording = run.recording  # read before the steps: a step committed meanwhile is still shown
            run.refresh()
            sigmas, experts = run.sigmas, run.experts
            for i in range(shown, run.num_steps):
                print(f"  step {i:4d}  sigma {sigmas[i]:.4f}  {terminal(experts[i])}", flush=True)
            shown = run.num_steps
            if not recording:
                break
            time.sleep(interval)
    except KeyboardInterrupt:
        return
    end = "complete" if run.complete else "INCOMPLETE: " + terminal(run.error or "the writer stopped without "
                                                                                 "closing the file")
    print(f"  {shown} steps, {end}")


# ----------------------------------------------------------------------------- metrics
def _open_for_metrics(path: str, cache: bool) -> Any:
    from ..store.reader import open_run

    return open_run(path, "r+" if cache else "r")


def _emit(text: str, out: str | None) -> None:
    """Write ``text`` to the file ``out`` as it is, or to standard output with control characters escaped."""
    if out:
        with open(out, "w", encoding="utf-8") as fh:
            fh.write(text if text.endswith("\n") else text + "\n")
    else:
        text = terminal_lines(text)
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


def _cmd_metrics(args: argparse.Namespace) -> int:
    from ..views.report import metrics_csv, metrics_json, terminal_summary

    with _open_for_metrics(args.run, args.cache) as run:
        if args.space not in run.spaces:
            raise KeyError(f"space {args.space!r} was not captured; this run's spaces: {', '.join(run.spaces)}")
        if args.json:
            text = metrics_json(run, args.space, args.phases)
        elif args.csv:
            text = metrics_csv(run, args.space)
        else:
            text = terminal_summary(run.metrics.summary(args.space, args.phases))
            note = run.metrics.coverage(args.space)
            if note:
                text = f"{text}\nNote: {note}"
            if run.attrs.get("simulated"):
                text = f"{SIMULATED}\n{text}"
    _emit(text, args.output)
    return 0


# ----------------------------------------------------------------------------- dashboard
def _labels(text: str | None, n: int) -> list[str] | None:
    if text is None:
        return None
    labels = [t.strip() for t in text.split(",")]
    if len(labels) != n:
        raise UsageError(f"--labels has {len(labels)} labels for {n} runs")
    return labels


def _static_paths(html_path: str, fmt: str, names: Sequence[str]) -> list[str]:
    stem = os.path.splitext(html_path)[0]
    return [f"{stem}-{name}.{fmt}" for name in names]


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from ..views.dashboard import build_figures, collect_series, write_dashboard
    from ..views.figures import FIGURE_NAMES
    from ..views.static import StaticExportError, export_figures

    labels = _labels(args.labels, len(args.runs))
    missing = [r for r in args.runs if not os.path.exists(r)]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: no such file")
    runs = []
    try:
        for path in args.runs:
            runs.append(_open_for_metrics(path, args.cache))
        series = collect_series(runs, labels, args.space, args.phases)
    finally:
        for run in runs:
            run.close()
    figures = build_figures(series)  # built once: for the page, the count and the static images
    write_dashboard(series, args.output, title=args.title, figures=figures)  # the page, written atomically
    print(f"wrote {terminal(args.output)} ({len(series)} run{'s' if len(series) > 1 else ''}, "
          f"{len(figures)} figures)")
    for fmt in [f for f, on in (("png", args.png), ("svg", args.svg)) if on]:
        try:
            written = export_figures(figures, _static_paths(args.output, fmt, FIGURE_NAMES[:len(figures)]))
            print("wrote " + terminal(", ".join(written)))
        except StaticExportError as exc:
            _note("dashboard", str(exc))
    if any(s.simulated for s in series):
        print(f"note: {terminal(', '.join(s.label for s in series if s.simulated))}: {SIMULATED}")
    return 0


# ----------------------------------------------------------------------------- analyze
def add_intervention_args(parser: argparse.ArgumentParser) -> None:
    """Frame truncation: ``--enable_half_frame [--keep K] [--until boundary|STEP] [--fill linear]``."""
    parser.add_argument("--enable_half_frame", action="store_true",
                        help="also run with frame truncation (same seed) and compare: token-steps skipped, "
                             "DiT time saved, fidelity of the result")
    parser.add_argument("--keep", type=int, default=3, help="key latent frames while truncating (default 3)")
    parser.add_argument("--until", default="boundary",
                        help="'boundary' (two-expert models: while the high-noise expert runs) or a step index")
    parser.add_argument("--fill", default="linear", choices=FILLS,
                        help="how the skipped frames' prediction is filled (default linear)")


def truncation_from_args(args: argparse.Namespace) -> dict | None:
    """The ``AnalyzeOptions.truncation`` setting, or None without ``--enable_half_frame``."""
    if not getattr(args, "enable_half_frame", False):
        return None
    if args.keep < 1:
        raise UsageError("--keep must be at least 1")
    until = args.until
    if until != "boundary":
        try:
            until = int(until)
        except ValueError:
            raise UsageError(f"--until {args.until!r}: 'boundary' or a step index") from None
    return {"keep": args.keep, "until": until, "fill": args.fill}


def _cmd_analyze(args: argparse.Namespace) -> int:
    from .analyze import AnalyzeOptions, parse_size, run_analysis

    if args.size:
        try:
            parse_size(args.size)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if args.guide_scale and len(args.guide_scale) > 2:
        raise UsageError("--guide_scale takes one value or two (low-noise, high-noise)")
    if any(v < 5 for v in args.num_frames or []):
        raise UsageError("--num_frames values must be at least 5 (two latent frames, 4n+1 video frames)")
    if any(v < 2 for v in args.num_inference_steps or []):
        raise UsageError("--num_inference_steps values must be at least 2")
    if args.task == "i2v-A14B" and not args.image:
        raise UsageError("task i2v-A14B needs --image PATH (the first frame)")
    o = AnalyzeOptions(
        prompt=args.prompt, output_dir=args.output_dir, task=args.task, backend=args.backend,
        model_path=args.model_path, num_frames=args.num_frames, num_inference_steps=args.num_inference_steps,
        size=args.size, seed=args.seed, use_epsilon=args.use_epsilon, negative_prompt=args.negative_prompt,
        image=args.image, wan_repo=args.wan_repo, wan_config=args.wan_config, sample_solver=args.sample_solver,
        sample_shift=args.sample_shift, guide_scale=args.guide_scale,
        offload_model=None if args.offload_model is None else args.offload_model == "true", t5_cpu=args.t5_cpu,
        convert_model_dtype=args.convert_model_dtype, device=args.device, dtype=args.dtype,
        store_dtype=args.store_dtype, cfg_branches=args.cfg_branches, phases=args.phases,
        static_images=args.png, truncation=truncation_from_args(args))
    result = run_analysis(o)
    for note in result.notes:
        _note("analyze", note)
    print(f"wrote {len(result.runs)} run{'s' if len(result.runs) > 1 else ''} and {terminal(result.dashboard)}")
    return 0


# ----------------------------------------------------------------------------- parser
PHASES_HELP = ("phase scheme, steps numbered from 0 as everywhere: thirds (default), original (steps 0-4, 5-9, "
               "10-19) or ranges with both ends included, e.g. '0-4,5-9,10-39' (the original analysis's 1-based "
               "ranges only with the explicit prefix '1-based:', e.g. '1-based:1-5,6-10,11-40')")


def _add_space_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", default="x0", help="latent space of the metrics: x0 (default), eps, x_t, pred, ...")
    p.add_argument("--phases", default="thirds", type=phase_scheme, help=PHASES_HELP)
    p.add_argument("--cache", action="store_true",
                   help="open the file writable and keep the computed metrics in it (/metrics) for next time")


def _build_analyze(sub: Any) -> None:
    from .analyze import TASKS

    a = sub.add_parser("analyze", help="record a real generation (Wan2.2 repo or diffusers) and write the views",
                       description="Load a model once, record one generation per sweep point (several "
                                   "--num_inference_steps or --num_frames values run one after another into "
                                   "subfolders) and write run.h5, statistics, .npz and a dashboard.")
    a.add_argument("--model_path", help="checkpoint folder (wan) or local diffusers-format folder (diffusers)")
    a.add_argument("--prompt", default="A red fox trotting through fresh snow at dawn, cinematic lighting",
                   help="text prompt (stored in the run; shown escaped in the dashboard)")
    a.add_argument("--negative_prompt", default="",
                   help="negative prompt (default: Wan2.2's own for the wan backend, empty for diffusers)")
    a.add_argument("--output_dir", default="latent_analysis", help="output folder (default: latent_analysis)")
    a.add_argument("--num_frames", type=int, nargs="+", metavar="N",
                   help="video frames, 4n+1 (default: the task's, 81 or 121); several values make a sweep")
    a.add_argument("--num_inference_steps", type=int, nargs="+", metavar="S",
                   help="denoising steps (default: the task's, 40 or 50); several values make a sweep")
    a.add_argument("--use_epsilon", action="store_true", help="metrics of the noise estimate ε̂ instead of x̂₀")
    a.add_argument("--task", default="t2v-A14B", choices=TASKS,
                   help="Wan2.2 task: t2v-A14B (default), i2v-A14B (needs --image) or ti2v-5B")
    a.add_argument("--size", help="WIDTH*HEIGHT as in Wan2.2 (default: 1280*720, ti2v-5B 1280*704)")
    a.add_argument("--seed", type=int, default=0, help="generation seed (default 0)")
    a.add_argument("--backend", default="wan", choices=("wan", "diffusers"),
                   help="wan: the Wan2.2 repository's pipelines (default); diffusers: a local diffusers-format "
                        "folder")
    add_model_arguments(a)
    a.add_argument("--image", metavar="PATH", help="first frame for i2v-A14B")
    add_storage_arguments(a, modes=False)
    a.add_argument("--phases", default="thirds", type=phase_scheme, help=PHASES_HELP)
    a.add_argument("--no-png", dest="png", action="store_false", help="skip the static PNG per run")
    add_intervention_args(a)
    a.set_defaults(func=_cmd_analyze)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="latent-probe", description="Record and analyse how a video DiT forms a video, "
                                                 "step by step and frame by frame.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           help="what to do (latent-probe COMMAND --help for its options):")

    d = sub.add_parser("demo", help="record the model organism (baseline and frame-truncated) and write the "
                                     "views (CPU, no download)",
                       description="Record three generations of the latent_probe model organism — "
                                   "a small video DiT trained on synthetic videos, not Wan2.2 — of one prompt: "
                                   "a baseline, one under FrameTruncation(keep=KEEP, until='boundary') from the "
                                   "same noise, and the baseline with the next seed (the floor: what two valid "
                                   "samples differ by). Writes "
                                   f"{DEMO_STEM}.h5/.html/.png/.npz (baseline), {DEMO_STEM}_truncated.h5, "
                                   f"{DEMO_STEM}_seedN.h5 and {DEMO_STEM}_frames.png to --out; the dashboard "
                                   "opens with its verdict in words, compares the runs and shows the videos; "
                                   "then prints the statistics table and the verdict. Without diffusers or the "
                                   f"organism's weights (or with --simulated): a simulated run, {SIMULATED}.")
    d.add_argument("--out", default="demo_continuity", help="output folder (default: demo_continuity)")
    d.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    d.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    d.add_argument("--prompt", default="a red square moving right",
                   help="one of the organism's 8 training prompts, or its index 0-7 (default: a red square "
                        "moving right)")
    d.add_argument("--keep", type=int, default=3, help="key frames of the truncated run (default 3)")
    d.add_argument("--weights", metavar="PATH", help="organism weights file (default: the packaged one)")
    d.add_argument("--simulated", action="store_true",
                   help="run the simulated demo instead (analytic denoiser, real diffusers scheduler; no model)")
    d.add_argument("--frames", type=int, help="with --simulated: latent frames (default 13)")
    d.add_argument("--no-png", dest="png", action="store_false", help="skip the static PNG")
    d.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on a shared machine more threads spin against each other)")
    d.set_defaults(func=_cmd_demo)

    i = sub.add_parser("info", help="summarise a recorded run", description="Summarise a recorded run file.")
    i.add_argument("run", help="the run file (RUN.h5) to summarise")
    i.add_argument("--follow", action="store_true",
                   help="follow a run that is being recorded: print each step as it is committed, until the "
                        "writer closes the file (or dies)")
    i.add_argument("--interval", type=float, default=0.5, help="seconds between looks with --follow (default 0.5)")
    i.set_defaults(func=_cmd_info)

    m = sub.add_parser("metrics", help="print the temporal-continuity statistics of a run (table, JSON or CSV)",
                       description="Print the statistics table of the original analysis (default), JSON "
                                   "(summary and per-step means) or tidy CSV (step, batch, pair, metric, value).")
    m.add_argument("run", help="the run file (RUN.h5)")
    _add_space_args(m)
    fmt = m.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="JSON: summary and per-step means")
    fmt.add_argument("--csv", action="store_true", help="tidy CSV, one row per step, batch item, pair and metric")
    m.add_argument("-o", "--output", help="write to this file instead of standard output")
    m.set_defaults(func=_cmd_metrics)

    b = sub.add_parser("dashboard", help="one self-contained interactive HTML page of one or more runs",
                       description="Write one self-contained HTML file (plotly.js inlined, nothing fetched) "
                                   "with the runs overlaid.")
    b.add_argument("runs", nargs="+", metavar="RUN.h5", help="recorded run files, overlaid in the given order")
    b.add_argument("-o", "--output", default="report.html", help="HTML file to write (default: report.html)")
    _add_space_args(b)
    b.add_argument("--labels", help="comma-separated legend labels, one per run (default: file names)")
    b.add_argument("--title", help="page title")
    b.add_argument("--png", action="store_true", help="also write each figure as PNG (needs kaleido + Chromium)")
    b.add_argument("--svg", action="store_true", help="also write each figure as SVG (needs kaleido + Chromium)")
    b.set_defaults(func=_cmd_dashboard)

    _build_analyze(sub)
    add_truncation_parser(sub)  # `latent-probe truncation` (app/truncation_cmd.py)
    from .study_cmd import register as add_study_parser  # `latent-probe study` (app/study_cmd.py)
    add_study_parser(sub)
    from .suite_cmd import register as add_suite_parser  # `latent-probe suite` (app/suite_cmd.py)
    add_suite_parser(sub)
    from .calibrate_cmd import register as add_calibrate_parser  # `latent-probe calibrate` (app/calibrate_cmd.py)
    add_calibrate_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 failure, 2 usage)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    prog = f"latent-probe {args.command}"
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"{prog}: error: {terminal(exc)} (see {prog} --help)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 1
    except Exception as exc:  # one line for the user; LATENT_PROBE_DEBUG=1 for the traceback
        if os.environ.get("LATENT_PROBE_DEBUG"):
            raise
        text = str(exc).strip()
        if isinstance(exc, KeyError) and len(exc.args) == 1:
            text = str(exc.args[0])
        msg = text.split("\n", 1)[0].rstrip("\r") if text else type(exc).__name__
        print(f"{prog}: error: {terminal(msg)}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
