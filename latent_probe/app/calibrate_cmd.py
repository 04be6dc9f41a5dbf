"""``latent-probe calibrate STUDY --method magcache -o out.json``: cache configs calibrated on a study's runs.

Reads ``STUDY/residuals/*.json`` (a study recorded with ``--record_residuals``; ``study.calibrate``).

* ``--method magcache``: ``-o out.json`` is ``MagCacheConfig(**json)``-ready for one expert (``--expert``; a
  one-expert study needs none; a two-expert study writes ``out.transformer.json`` and ``out.transformer_2.json``
  when ``--expert`` is not given). ``--branch`` picks the CFG branch whose ratios go in (cond, uncond, mean);
  ``--num_inference_steps N`` resamples to N calls of the expert (diffusers' nearest-index rule). Beside it,
  ``<out>.report.json``: per expert and branch, every call's mean ratio with a 95 % CI (cluster bootstrap by
  prompt), and FirstBlockCache's signal quantiles.
* ``--method firstblock``: ``-o out.json`` is that report alone (choose a threshold from its quantiles).

Registered by ``latent_probe.app.cli`` with ``register(subparsers)``.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

__all__ = ["register", "calibrate_command"]


def _write(path: str, doc: Any) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1)
    os.replace(tmp, path)


def calibrate_command(args: argparse.Namespace) -> int:
    """``latent-probe calibrate``: the ``func`` of its parser."""
    from ..study.calibrate import calibration_report, magcache_config, read_residuals
    from ..study.jobs import StudyError, parse_setting

    settings: dict[str, Any] = {}
    for text in args.setting or []:
        name, values = parse_setting(text, known=None)
        if len(values) != 1:
            raise StudyError(f"--setting {text!r}: give one value")
        settings[name] = values[0]
    records = read_residuals(args.study, settings)
    report = calibration_report(records, n_boot=args.bootstrap)
    stem, ext = os.path.splitext(args.out)
    if args.method == "firstblock":
        _write(args.out, report)
        print(f"wrote {args.out}: FirstBlockCache signal quantiles over {report['clips']} clips "
              f"({report['prompts']} prompts)")
        return 0
    experts = sorted({e for r in records for e, _ in r.series})
    chosen = [args.expert] if args.expert else experts
    if args.num_inference_steps is not None and len(chosen) > 1:
        raise StudyError("--num_inference_steps is a count of one expert's steps (each expert runs its own share "
                         "of the sampling steps): give --expert with it")
    written = []
    for expert in chosen:
        cfg = magcache_config(records, expert, args.branch, args.num_inference_steps)
        path = args.out if len(chosen) == 1 else f"{stem}.{expert}{ext or '.json'}"
        _write(path, cfg)
        written.append(path)
    _write(f"{stem}.report.json", report)
    print(f"wrote {', '.join(written)} (MagCacheConfig(**json); {args.branch} branch, {report['clips']} clips, "
          f"{report['prompts']} prompts) and {stem}.report.json (CIs by prompt)")
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``calibrate`` to a ``latent-probe`` subparsers object."""
    from ..study.calibrate import DEFAULT_BOOTSTRAP, DEFAULT_BRANCH

    p = subparsers.add_parser(
        "calibrate", help="calibrate a cache (MagCache mag_ratios, FirstBlockCache signal) from a study's runs",
        description="Read STUDY/residuals/*.json (record the study with --record_residuals) and write a "
                    "MagCacheConfig-ready JSON per expert, or FirstBlockCache's signal distribution. "
                    "See docs/studies.md.")
    p.add_argument("study", help="study folder (manifest.json, runs/, residuals/)")
    p.add_argument("--method", required=True, choices=("magcache", "firstblock"),
                   help="magcache: MagCacheConfig JSON per expert (+ report); firstblock: FirstBlockCache signal "
                        "quantiles per call")
    p.add_argument("-o", "--out", required=True, help="output JSON")
    p.add_argument("--expert", choices=("transformer", "transformer_2"),
                   help="magcache: the expert to write (default: each, into OUT.<expert>.json when there are two)")
    p.add_argument("--branch", default=DEFAULT_BRANCH, choices=("cond", "uncond", "mean"),
                   help="magcache: the CFG branch whose ratios go into the config (diffusers holds one list for "
                        "both; default cond)")
    p.add_argument("--num_inference_steps", type=int,
                   help="magcache: resample to this many calls of the expert (default: as recorded, exact)")
    p.add_argument("--setting", action="append", metavar="NAME=VALUE",
                   help="use only jobs with this setting, e.g. steps=20 (clips must share a step count)")
    p.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP,
                   help=f"bootstrap resamples for the CIs (default {DEFAULT_BOOTSTRAP})")
    p.set_defaults(func=calibrate_command)
    return p
