"""Per-step sensitivity of the organism's final sample to a truncation-shaped perturbation (issue 19, item 6).

Runs ``interventions.sensitivity.step_sensitivity`` on the packaged v1 organism (20 steps, CFG 4.0) in the
prediction space (the guided v the scheduler integrates, which ``FrameTruncation`` fills) and in x̂₀, on clips
that are not the evaluation's (training/feasibility_eval.py scores prompts 0–7 × seeds 0–2; these use seeds ≥ 10).
One batched generation per perturbed step; keys and fill of keep 3, linear. Writes JSON.

    nice -n 10 python training/feasibility_sensitivity.py --json docs/data/feasibility_sensitivity.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from latent_probe.interventions.sensitivity import step_sensitivity  # noqa: E402
from latent_probe.organism import DEFAULT_GUIDANCE, load_organism  # noqa: E402
from measure_truncation import batched_call  # noqa: E402

CLIPS = ((0, 10), (3, 11), (6, 12))     # (prompt, seed): seeds the evaluation never uses


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", required=True)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--eps", type=float, default=0.05, help="relative perturbation size")
    p.add_argument("--keep", type=int, default=3)
    p.add_argument("--fill", default="linear")
    p.add_argument("--spaces", default="prediction,x0")
    p.add_argument("--only-steps", default=None, help="comma-separated steps (default all)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    org = load_organism()
    call = (org, [c[0] for c in CLIPS], [c[1] for c in CLIPS], args.steps, DEFAULT_GUIDANCE)

    def run() -> torch.Tensor:
        return org.pipe(**batched_call(*call)).frames

    clips = [{"prompt": org.prompts[pr], "prompt_index": pr, "seed": s} for pr, s in CLIPS]
    only = None if args.only_steps is None else [int(s) for s in args.only_steps.split(",")]
    out = {"command": "python training/feasibility_sensitivity.py " + " ".join(argv or sys.argv[1:]),
           "machine": "cpu", "torch": torch.__version__, "threads": args.threads, "steps": args.steps,
           "guidance": DEFAULT_GUIDANCE, "clips": clips, "spaces": {}}
    t0 = time.perf_counter()
    for space in args.spaces.split(","):
        res = step_sensitivity(org.pipe.scheduler, run, args.steps, steps=only, keep=args.keep, fill=args.fill,
                               space=space, eps=args.eps, clips=clips, progress=lambda m: print(m, flush=True))
        out["spaces"][space] = res.to_dict()
        out["seconds"] = time.perf_counter() - t0
        Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
