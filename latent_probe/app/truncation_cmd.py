"""``latent-probe truncation RUN.h5 --keep 3``: frame-truncation feasibility of a recorded baseline run.

Registered by ``latent_probe.app.cli`` with ``add_truncation_parser(subparsers)`` (sets ``func``).
"""

from __future__ import annotations

import argparse
import json

from ..frames import FILLS

__all__ = ["add_truncation_parser", "truncation_command"]


def _keyframes(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--keyframes wants comma-separated integers, got {text!r}") from exc


def add_truncation_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``truncation`` subcommand to a ``latent-probe`` subparsers object."""
    p = subparsers.add_parser(
        "truncation", help="how well K key frames predict all frames, step by step (frame-truncation feasibility)",
        description="How well K key frames predict all frames, step by step (frame-truncation feasibility). Steps "
                    "are 0-based, as everywhere in latent_probe: step s ran at scheduler.timesteps[s].")
    p.add_argument("run", help="RUN.h5 of a baseline (untruncated) generation")
    p.add_argument("--keep", type=int, default=3, help="key latent frames, evenly spaced incl. first and last (3)")
    p.add_argument("--keyframes", type=_keyframes, default=None, help="explicit key frames, e.g. 0,10,20")
    p.add_argument("--space", default="x0", help="captured quantity to rebuild (x0)")
    p.add_argument("--fill", choices=FILLS, default="linear",
                   help="how the frames between key frames are rebuilt (default linear)")
    p.add_argument("--threshold", type=float, default=0.1, help="rel L2 counted as good enough (0.1)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=truncation_command)
    return p


def truncation_command(args: argparse.Namespace) -> int:
    """Print the feasibility table of ``args.run`` (control characters escaped); 0 on success (errors raise
    for the CLI to report)."""
    from ..metrics.feasibility import truncation_feasibility
    from ..views.truncation_text import format_feasibility
    from ..store.reader import open_run
    from ..views.report import strict_json
    from ..views.safe_text import terminal_lines

    with open_run(args.run) as run:
        result = truncation_feasibility(run, keep=args.keep, keyframes=args.keyframes, space=args.space,
                                        fill=args.fill)
    if args.json:
        out = result.to_dict()
        out["leading_steps_below_threshold"] = result.leading_steps_below(args.threshold)
        out["threshold"] = args.threshold
        # strict JSON like `metrics --json` (NaN → null); ensure_ascii: control characters come out as \u escapes
        print(json.dumps(strict_json(out), allow_nan=False))
    else:
        print(terminal_lines(format_feasibility(result, args.threshold)))
    return 0
