"""``latent-probe``: a thin command line over the library. Exit status 0 ok, 1 failure, 2 usage."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence

__all__ = ["main", "build_parser"]


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo_generation

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "temporal_continuity_demo.h5")
    print("latent-probe demo: SIMULATED data (analytic denoiser, real flow-matching scheduler; no model weights)")
    _, run = run_demo_generation(path, steps=args.steps, frames=args.frames, seed=args.seed)
    print(f"recorded {run.num_steps} steps of {run.quantities} to {path}")
    for name, fn in _DEMO_OUTPUTS:
        fn(run, args.out)
    run.close()
    return 0


# Views that the demo writes after recording: (name, fn(run, out_dir)); filled by the views modules.
_DEMO_OUTPUTS: list[tuple[str, Callable]] = []


def _cmd_info(args: argparse.Namespace) -> int:
    from ..store.reader import open_run

    with open_run(args.run) as run:
        a = run.attrs
        print(f"{args.run}: latent_probe schema {a.get('schema_version')}, written by {a.get('library_version')}")
        print(f"  target      {a.get('target_class')} ({a.get('family')})")
        if a.get("prompt"):
            print(f"  prompt      {a['prompt']!r}")
        print(f"  steps       {run.num_steps}{'' if run.complete else '  (INCOMPLETE: ' + str(a.get('error', 'interrupted')) + ')'}")
        print(f"  quantities  {', '.join(run.quantities)}  [{a.get('store_dtype')}]")
        if run.num_steps:
            shape = run.latents(run.quantities[0]).shape
            print(f"  latent      [S, B, C, F, H, W] = {list(shape)}")
            print(f"  sigma       {run.sigmas[0]:.4f} → {run.sigmas[-1]:.4f}  ({a.get('parameterization')})")
            experts, counts = _runs_of(list(run.experts))
            print("  experts     " + ", ".join(f"{e} ×{c}" for e, c in zip(experts, counts)))
        nonfinite = sum(int(v.any()) for v in run.nonfinite.values())
        if nonfinite:
            print(f"  WARNING     NaN/Inf in {nonfinite} quantities (see /steps, field nonfinite)")
    return 0


def _runs_of(seq: list) -> tuple[list, list]:
    names, counts = [], []
    for x in seq:
        if names and names[-1] == x:
            counts[-1] += 1
        else:
            names.append(x)
            counts.append(1)
    return names, counts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="latent-probe", description="Record and analyse how a video DiT forms a video.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="simulated run through the real capture path (CPU, no download)")
    d.add_argument("--out", default="demo_continuity", help="output folder (default: demo_continuity)")
    d.add_argument("--steps", type=int, default=20)
    d.add_argument("--frames", type=int, default=13, help="latent frames")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_cmd_demo)

    i = sub.add_parser("info", help="summarise a recorded run")
    i.add_argument("run", help="RUN.h5")
    i.set_defaults(func=_cmd_info)
    for register in _EXTRA_COMMANDS:
        register(sub)
    return p


# Other view modules add subcommands here: fn(subparsers).
_EXTRA_COMMANDS: list[Callable] = []


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("latent-probe: interrupted", file=sys.stderr)
        return 1
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, ImportError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"latent-probe {args.command}: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
