"""Calibrate diffusers' MagCache ``mag_ratios`` for the v1 organism from its own baseline generations.

Runs the 20-step CFG baseline on every prompt at seeds that the frontier's 24 evaluation clips do not use
(default 3 and 4; the evaluation clips are seeds 0–2), records with ``interventions.residuals.ResidualRecorder``
exactly what MagCache's calibration computes per DiT call (per expert and CFG branch), and exports with the
library's ``study.calibrate``: ``magcache_config(records, expert, branch="mean")`` (the config
``Method("mag_cache", t).applied(pipe, mag_ratios=...)`` takes) and ``calibration_report`` (per-call means with
95 % CIs by prompt). Writes ``--out`` JSON ({"mag_ratios": {expert: MagCacheConfig kwargs}, "report", seeds}).

    nice -n 10 python training/frontier_magcache.py --out docs/data/frontier_magcache.json

``--organism small|large`` (with ``--weights`` / ``--sha256``, or ``--random-weights`` for development)
calibrates organism v2 at its 40-step default on its 10 prompts, same seeds 3 and 4 (v2's evaluation clips are
seeds 0–2 too); ``training/frontier_run.py --organism SIZE`` reads docs/data/frontier_magcache_v2_SIZE.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from frontier_run import V2_BASE_STEPS, build_organism  # noqa: E402

from latent_probe.interventions.caches import experts_of  # noqa: E402
from latent_probe.interventions.residuals import ResidualRecorder  # noqa: E402
from latent_probe.organism import DEFAULT_GUIDANCE  # noqa: E402
from latent_probe.study.calibrate import ResidualRecord, calibration_report, magcache_config  # noqa: E402

EVAL_SEEDS = (0, 1, 2)   # the frontier's evaluation clips (training/frontier_run.py --seeds 3)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--organism", choices=("v1", "small", "large"), default="v1")
    p.add_argument("--weights", default=None, help="v2: the weights file")
    p.add_argument("--sha256", default=None, help="v2: its SHA-256")
    p.add_argument("--random-weights", action="store_true", help="v2: untrained weights (development only)")
    p.add_argument("--prompts", type=int, default=None, help="first N prompts (default: v1 8, v2 10)")
    p.add_argument("--seeds", type=int, nargs="+", default=[3, 4])
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: v1 20, v2 40)")
    args = p.parse_args(argv)
    v2 = args.organism != "v1"
    if not v2 and (args.weights or args.sha256 or args.random_weights):
        p.error("--weights, --sha256 and --random-weights are for an organism v2 size")
    args.prompts = args.prompts if args.prompts is not None else (10 if v2 else 8)
    args.steps = args.steps if args.steps is not None else (V2_BASE_STEPS if v2 else 20)
    if set(args.seeds) & set(EVAL_SEEDS):
        p.error(f"seeds {sorted(set(args.seeds) & set(EVAL_SEEDS))} are evaluation seeds: calibrate on others")
    torch.set_num_threads(1)
    device = "cuda" if v2 and torch.cuda.is_available() else "cpu"    # v1: as calibrated (CPU)
    org = build_organism(args.organism, device, args.weights, args.sha256, args.random_weights)
    experts = experts_of(org.pipe)
    records = []
    for pr in range(args.prompts):
        for s in args.seeds:
            rec = ResidualRecorder(experts, org.pipe)
            with rec.attached():
                org.generate(pr, seed=s, num_inference_steps=args.steps, guidance_scale=DEFAULT_GUIDANCE)
            records.append(ResidualRecord(f"p{pr}_s{s}", str(pr), s, {"steps": args.steps}, rec.series()))
            print(f"recorded prompt {pr} seed {s}", flush=True)
    ratios = {e: magcache_config(records, e, branch="mean") for e in experts}
    out = {"steps": args.steps, "guidance": DEFAULT_GUIDANCE, "prompts": args.prompts, "seeds": args.seeds,
           "branch": "mean", "mag_ratios": ratios, "report": calibration_report(records)}
    if v2:
        out["organism"] = {"size": args.organism, "weights": args.weights, "sha256": args.sha256,
                           "random_weights": args.random_weights}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(ratios, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
