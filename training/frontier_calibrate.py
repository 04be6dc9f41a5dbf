"""Time the organism's DiT calls by shape under equal load, and price each frontier setting with them.

On a CPU shared with other jobs, a generation's thread CPU time rises with the machine's load (shared
caches and cores): in the frontier run it varied 5.1–7.2 s for the same 20-step baseline. Settings run at
different times are then not comparable. This script times every call shape a setting uses —
a full call (21 frames), a truncated call (K frames), a FirstBlockCache call that skips the tail (the
expert with its first block only) — interleaved in rounds (every shape once a round, ``--rounds`` rounds),
so all shapes see the same load; the median of each is its cost. A setting's DiT time per clip is then
Σ over its DiT calls (counted in the run: calls, tokens, calls whose last block ran) of the shape's cost.
Writes ``--out`` JSON: per shape the median thread CPU seconds, and per setting the priced DiT seconds and
saving against the baseline.

    nice -n 10 python training/frontier_calibrate.py --run /tmp/frontier/run*.json --out docs/data/frontier_calls.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latent_probe.organism import load_organism  # noqa: E402


def call(expert: torch.nn.Module, frames: int, text: torch.Tensor, blocks: int | None = None) -> float:
    """Thread CPU seconds of one forward of ``expert`` on [1, 16, frames, 16, 16] (``blocks``: only the first)."""
    x = torch.randn(1, 16, frames, 16, 16)
    t = torch.tensor([900.0])
    saved = expert.blocks
    if blocks is not None:
        expert.blocks = torch.nn.ModuleList(list(saved)[:blocks])
    try:
        t0 = time.thread_time()
        with torch.no_grad():
            expert(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)
        return time.thread_time() - t0
    finally:
        expert.blocks = saved


def price_row(row: dict, setting: dict, cost: dict) -> dict:
    """One clip's DiT seconds priced from its call counts (calls, tokens, calls whose last block ran) and the
    shapes' costs, plus its own host seconds (thread CPU outside the DiT: scheduler, CFG, fills)."""
    calls, tail, tokens = row["dit_calls"], row["blocks_run"], row["token_steps"]
    if "keep" in setting:
        k = setting["keep"]                    # truncated calls: k·64 tokens, full calls 21·64
        n_trunc = (calls * 21 * 64 - tokens) / ((21 - k) * 64)
        dit = n_trunc * cost[f"k{k}"] + (calls - n_trunc) * cost["full"]
    else:
        dit = tail * cost["full"] + (calls - tail) * cost["first_block"]
    host = row["thread_cpu_s"] - row["dit_s"]
    return {"dit_s": dit, "host_s": host, "total_s": dit + host}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--keeps", type=int, nargs="*", default=[3, 5, 7, 11], help="truncated call sizes to time")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    org = load_organism()
    expert = org.pipe.transformer
    text = org.embeds(0)
    settings: dict = {}
    for r in args.run:
        settings.update(json.loads(Path(r).read_text())["settings"])
    shapes = {"full": (21, None), "first_block": (21, 1)}
    keeps = {s["keep"] for s in settings.values() if "keep" in s} | set(args.keeps)
    for k in sorted(keeps):
        shapes[f"k{k}"] = (k, None)
    for name, (f, b) in shapes.items():   # warm-up
        call(expert, f, text, b)
    times: dict[str, list[float]] = {n: [] for n in shapes}
    for _ in range(args.rounds):
        for name, (f, b) in shapes.items():
            times[name].append(call(expert, f, text, b))
    cost = {n: float(np.median(v)) for n, v in times.items()}
    spread = {n: [float(np.percentile(v, 25)), float(np.percentile(v, 75))] for n, v in times.items()}
    priced = {}
    for name, s in settings.items():
        per = [price_row(r, s, cost) for r in s["rows"]]   # settings of the run files given now
        priced[name] = {k: float(np.mean([x[k] for x in per])) for k in ("dit_s", "host_s", "total_s")}
    base = priced["baseline_s20"]["total_s"]
    for v in priced.values():
        v["saving"] = 1 - v["total_s"] / base
    out = {"rounds": args.rounds, "call_thread_cpu_s": cost, "call_iqr_s": spread, "settings": priced,
           "loadavg_1min": list(__import__("os").getloadavg())}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
