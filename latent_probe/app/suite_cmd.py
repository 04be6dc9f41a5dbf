"""``latent-probe suite RUNS... -o suite.html``: statistics across many runs (a glob, a folder, files) as one
dashboard, with ``--json`` / ``--csv`` tables; the metrics are (re)computed in this process (threads), or on
Dask when asked (``--workers N``, ``--scheduler``), from each file's cache where it is current.

Registered by ``latent_probe.app.cli`` with ``register(subparsers)`` (sets ``func``). A file that cannot be
read is reported in one line on standard error and left out (``--strict``: refused, exit status 1).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .options import phase_scheme

__all__ = ["register", "suite_command"]


def _compare(text: str) -> tuple[str, str, str]:
    name, sep, values = text.partition("=")
    parts = [v.strip() for v in values.split(",")]
    if not sep or not name.strip() or len(parts) != 2 or not all(parts):
        raise argparse.ArgumentTypeError(f"--compare {text!r}: expected SETTING=A,B (the difference A − B), "
                                         "e.g. truncation=keep3,none")
    return name.strip(), parts[0], parts[1]


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{v} is negative")
    return v


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``suite`` subcommand to a ``latent-probe`` subparsers object."""
    p = subparsers.add_parser(
        "suite", help="statistics across many runs (mean ± CI per setting on σ, paired differences): one HTML page",
        description="Read many run files (globs, folders, files), compute or reuse each one's metrics (threads "
                    "of this process; Dask with --workers), and write one self-contained dashboard: mean ± bootstrap CI per setting on a σ (or progress) "
                    "axis with each run's expert boundary, per-prompt panels, phase table, paired difference of two "
                    "settings. Unreadable files are reported in one line each and left out.")
    p.add_argument("runs", nargs="+", metavar="RUNS", help="run files, folders (every *.h5 below) or quoted globs")
    p.add_argument("-o", "--output", default="suite.html", help="HTML file to write (default: suite.html)")
    p.add_argument("--json", metavar="PATH", help="also write the tables (curves, phases, paired, ranking, "
                                                  "boundaries, skipped files) as strict JSON; '-' for standard output")
    p.add_argument("--csv", metavar="PATH", help="also write the tidy per-step table (run, settings, step, σ, "
                                                 "metric, value) as CSV; '-' for standard output")
    p.add_argument("--space", default="x0", help="latent space of the metrics: x0 (default), eps, x_t, pred, ...")
    p.add_argument("--phases", default="thirds", type=phase_scheme,
                   help="phase scheme of each run, steps from 0: thirds (default), original (0-4, 5-9, 10-19) or "
                        "e.g. '0-4,5-9,10-39' ('1-based:1-5,6-10,11-40' for 1-based ranges)")
    p.add_argument("--on", default="sigma", choices=("sigma", "progress"),
                   help="common axis runs are interpolated onto (default sigma; never step index)")
    p.add_argument("--metric", default="l2_mean", choices=("l2_mean", "cos_mean", "one_minus_cos_mean"),
                   help="metric of the phase table, the ranking and the paired difference (default l2_mean)")
    p.add_argument("--by", action="append", metavar="SETTING",
                   help="group runs by this setting (repeatable; default: every setting)")
    p.add_argument("--compare", type=_compare, metavar="SETTING=A,B",
                   help="paired difference A − B over the same prompt and seed (default: the first setting with "
                        "two values, baseline-like value second)")
    p.add_argument("--workers", type=_positive, default=None,
                   help="Dask LocalCluster worker processes (default: none, threads of this process; 0: one file "
                        "after another in this process)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="a running Dask scheduler, e.g. tcp://host:8786 (its "
                                                         "workers must see the same paths)")
    p.add_argument("--memory-limit", default="2GiB", help="memory limit per LocalCluster worker (default 2GiB)")
    p.add_argument("--no-cache", dest="cache", action="store_false",
                   help="open the files read-only: metrics computed now are not stored in them (current "
                        "caches are still read)")
    p.add_argument("--incomplete", action="store_true", help="include runs whose recording stopped early")
    p.add_argument("--strict", action="store_true", help="refuse the set when any file cannot be read")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--confidence", type=float, default=0.95, help="CI level (default 0.95)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    p.add_argument("--title", help="page title")
    p.add_argument("--frontier", metavar="JSON", nargs="?", const="",
                   help="also draw the speed-quality frontier. Alone (latent-probe suite STUDY --frontier): computed "
                        "from the organism study folder STUDY: each clip's final latent scored against the baseline "
                        "setting's clip of the same prompt and seed (organism v1: fidelity; v2: fidelity_v2), the "
                        "floor from baseline clips of one prompt at other seeds, time saved 1 - t/t_baseline paired "
                        "per clip, 95%% CIs by prompt. The baseline setting is the one with method=baseline (or no "
                        "method, no truncation) and the most steps. With a JSON file: draw that file (--frontier_out's "
                        "or training/frontier_measure.py's --json)")
    p.add_argument("--frontier_out", metavar="PATH",
                   help="with --frontier alone: also write the frontier (floors, per-setting summary with CIs, best "
                        "setting per method at 25/40/60%% saving, per-clip rows) as JSON")
    p.add_argument("--frontier_saving", default="auto", choices=("auto", "wall_s", "thread_cpu_s", "dit_s",
                                                                 "token_steps"),
                   help="with --frontier alone: the cost whose saving is the x axis (auto: the generation's thread "
                        "CPU time on a CPU, wall time on a GPU)")
    p.add_argument("--declared", metavar="JSON",
                   help="with --frontier alone: pre-declared comparisons, a JSON list of {\"id\", \"measure\", \"a\", "
                        "\"b\"} (a, b: setting names as the frontier shows them, e.g. method=steps:12), each tested "
                        "as the paired difference a - b (CI by prompt, exact sign-flip p over prompts, at least 3 "
                        "prompts), Holm-corrected over the whole family; printed and in --frontier_out")
    p.set_defaults(func=suite_command)
    return p


def _write(text: str, path: str) -> None:
    from ..views.safe_text import terminal_lines

    if path == "-":
        sys.stdout.write(terminal_lines(text))
    else:
        with open(path, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)


def _csv(rs: Any) -> str:
    import io

    from ..views.safe_text import csv_writer

    df = rs.to_dataframe()
    out = io.StringIO()
    w = csv_writer(out)
    w.writerow(df.columns)
    for row in df.itertuples(index=False):
        w.writerow([v.item() if hasattr(v, "item") else v for v in row])
    return out.getvalue()


def _study_frontier(args: argparse.Namespace, say: Any) -> Any:
    """The frontier figure of the one study folder in RUNS (and --frontier_out's JSON)."""
    import os

    from ..study.inference import read_declared
    from ..study.jobs import StudyError
    from ..views.frontier import frontier_from_document
    from ..views.report import strict_json
    from ..views.safe_text import terminal
    from .frontier_cmd import frontier_document

    if len(args.runs) != 1 or not os.path.isdir(args.runs[0]):
        raise StudyError("--frontier without a JSON file computes the frontier of one study folder: "
                         "latent-probe suite STUDY --frontier")
    declared = read_declared(args.declared) if args.declared else []
    doc = frontier_document(args.runs[0], saving=args.frontier_saving, n_resamples=args.resamples, seed=args.seed,
                            log=lambda text: print(terminal(text), file=sys.stderr), declared=declared)
    for r in doc.get("declared", []):
        head = f"{r['id']} {r['measure']}: {r['a']} − {r['b']}"
        if r["status"] == "tested":
            say(terminal(f"{head} = {r['mean']:.4g} [{r['low']:.4g}, {r['high']:.4g}] (95 % CI by prompt, "
                         f"{r['n_prompts']} prompts, {r['n_clips']} clips, {r['n_dropped']} dropped), p "
                         f"{r['p_value']:.4f} (sign flip over prompts), Holm p {r['p_holm']:.4f} (family of "
                         f"{r['holm_m']})"))
        else:
            say(terminal(f"{head}: not tested ({r['status']}; {r['n_clips']} clips, {r['n_dropped']} dropped); "
                         f"counts as p = 1 in the family of {r['holm_m']}"))
    if args.frontier_out:
        _write(json.dumps(strict_json(doc), indent=1, allow_nan=False) + "\n", args.frontier_out)
        say(f"wrote {terminal(args.frontier_out)}")
    return frontier_from_document(doc)


def suite_command(args: argparse.Namespace) -> int:
    """Read the runs, write the dashboard (and tables); 0 on success (errors raise for the CLI to report)."""
    from ..study.collection import open_runs
    from ..views.progress import progress
    from ..views.report import strict_json
    from ..views.safe_text import terminal
    from ..views.suite import suite_figures, suite_json, suite_stats, write_suite_dashboard

    def say(text: str) -> None:  # status lines keep out of a table written to standard output
        print(text, file=sys.stderr if "-" in (args.json, args.csv) else sys.stdout)

    if not 0 < args.confidence < 1 or args.resamples < 1:
        raise ValueError("--confidence must be in (0, 1) and --resamples at least 1")
    frontier = None
    for opt in ("frontier_out", "declared"):   # an empty name would otherwise switch the option off silently
        if getattr(args, opt, None) == "":
            raise ValueError(f"--{opt} needs a file name, got an empty one")
    if args.frontier is None and (args.frontier_out or args.declared):
        raise ValueError("--frontier_out and --declared need --frontier (alone: latent-probe suite STUDY --frontier)")
    if args.frontier:  # a bad frontier file is refused before any run is read
        from ..views.frontier import frontier_from_json
        if args.frontier_out or args.declared:
            raise ValueError("--frontier_out and --declared work on a frontier computed from a study: give --frontier "
                             "without a file")
        frontier = frontier_from_json(args.frontier)
    elif args.frontier is not None:   # computed from the study folder, refused in one line before anything else
        frontier = _study_frontier(args, say)
    rs = open_runs(args.runs, space=args.space, phases=args.phases, workers=args.workers, scheduler=args.scheduler,
                   memory_limit=args.memory_limit, cache=args.cache, incomplete=args.incomplete, strict=args.strict,
                   progress=progress)
    for s in rs.skipped:
        print(f"latent-probe suite: skipped {terminal(s.path)}: {terminal(s.reason)}", file=sys.stderr)
    computed = sum(r.computed for r in rs.records)
    print(f"read {len(rs)} runs ({computed} computed, {len(rs) - computed} from caches or sums recorded during the run)"
          + (f", skipped {len(rs.skipped)}" if rs.skipped else ""), file=sys.stderr)
    st = suite_stats(rs, on=args.on, metric=args.metric, compare=args.compare, by=args.by,
                     n_resamples=args.resamples, confidence=args.confidence, seed=args.seed)
    figures = suite_figures(rs, st)
    if frontier is not None:
        figures.append(frontier)
    write_suite_dashboard(rs, args.output, stats=st, figures=figures, title=args.title)
    say(f"wrote {terminal(args.output)} ({len(rs)} runs, {len(figures)} figures)")
    if args.json:
        _write(json.dumps(strict_json(suite_json(rs, st)), indent=1, allow_nan=False) + "\n", args.json)
        if args.json != "-":
            say(f"wrote {terminal(args.json)}")
    if args.csv:
        _write(_csv(rs), args.csv)
        if args.csv != "-":
            say(f"wrote {terminal(args.csv)}")
    return 0
