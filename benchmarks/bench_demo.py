"""Where `latent-probe demo` spends its time: wall and CPU seconds, the pieces from a cProfile, load averages.

    python benchmarks/bench_demo.py [--out /tmp/demo_bench] [--threads 1]

Runs the demo once in this process under cProfile (the profile adds a few per cent) and prints the
cumulative seconds of its pieces — imports and loading the organism, each generation, metrics and figures,
the dashboard, the frame strip, the static PNG (kaleido) — with the 1-minute load average before and after:
the 2-core machines here are shared, so a number without its load says little.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import resource
import sys
import time
from contextlib import redirect_stdout

PIECES = {  # function name (as pstats prints it) → what it is
    "load_demo_organism": "imports + loading the organism",
    "run_organism_demo": "the three generations (probe included)",
    "collect": "metrics of the runs (views.series.collect)",
    "write_dashboard": "the dashboard (figures + HTML)",
    "write_strip_png": "the labelled frame strip",
    "write_continuity_image": "the static PNG (kaleido/Chromium)",
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/demo_bench")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    from latent_probe.app import cli

    load0 = os.getloadavg()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    text = io.StringIO()
    with redirect_stdout(text):
        prof.enable()
        code = cli.main(["demo", "--out", a.out, "--threads", str(a.threads)])
        prof.disable()
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    load1 = os.getloadavg()
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    stats = pstats.Stats(prof)
    print(f"latent-probe demo: exit {code}, {wall:.1f} s wall, {cpu:.1f} s CPU (this process; kaleido's browser "
          f"apart), torch threads {a.threads}; load average {load0[0]:.1f} before, {load1[0]:.1f} after")
    for name, what in PIECES.items():
        total = sum(v[3] for k, v in stats.stats.items() if k[2] == name)  # cumulative time
        print(f"  {what:48s} {total:6.1f} s")
    for line in text.getvalue().splitlines():
        if line.startswith("recorded "):
            print("  " + line)
    return code


if __name__ == "__main__":
    sys.exit(main())
