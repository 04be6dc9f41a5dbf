"""The offline truncation error per clip and step in the prediction space and in x̂₀, from baseline runs on a CPU.

docs/data/truncation_organism.json holds the baseline's x̂₀ interpolation error per clip (H200) but not the
prediction's — the quantity ``FrameTruncation`` actually fills (the DiT's v of the non-key frames). This reruns
the evaluation's 24 baseline clips (prompts 0–7 × seeds 0–2, 20 steps, CFG 4.0, batched as the H200 run was)
under a probe that captures the guided prediction and x̂₀, and writes, per (keep, fill), ``frame_errors``'
rel L2 [B, S] in both spaces. The x̂₀ errors are compared with the committed H200 ones (a check that the CPU
baselines are the same trajectories).

    nice -n 10 python training/feasibility_offline_errors.py --json docs/data/feasibility_offline_errors.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from latent_probe import LatentProbe  # noqa: E402
from latent_probe.interventions import default_keyframes  # noqa: E402
from latent_probe.metrics.feasibility import frame_errors  # noqa: E402
from latent_probe.organism import DEFAULT_GUIDANCE, load_organism  # noqa: E402
from measure_truncation import batched_call  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", required=True)
    p.add_argument("--data", default="docs/data/truncation_organism.json", help="the H200 data (clips, x̂₀ check)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    ref = json.loads(Path(args.data).read_text())
    clips = [(c["prompt_index"], c["seed"]) for c in ref["clips"]]
    org = load_organism()
    t0 = time.perf_counter()
    kwargs = batched_call(org, [c[0] for c in clips], [c[1] for c in clips], ref["steps"], DEFAULT_GUIDANCE)
    with LatentProbe(org.pipe, None, capture=("x0", "pred"), store_dtype="float32") as probe:
        org.pipe(**kwargs)
    run = probe.run
    lat = {"x0": run.latents("x0")[:], "pred": run.latents("pred")[:]}        # [S, B, C, F, h, w]
    gen_s = time.perf_counter() - t0
    out: dict = {"command": "python training/feasibility_offline_errors.py " + " ".join(argv or sys.argv[1:]),
                 "machine": "cpu", "torch": torch.__version__, "threads": args.threads, "generation_s": gen_s,
                 "clips": ref["clips"], "sigmas": [float(s) for s in run.sigmas], "errors": {}}
    assert np.allclose(out["sigmas"], ref["sigmas"], rtol=0, atol=1e-6), "σ schedule differs from the H200 run"
    F = int(lat["x0"].shape[-3])
    for keep, fill in itertools.product((2, 3, 5, 7), ("linear", "slerp")):
        keys = default_keyframes(F, keep)
        entry = {"keys": keys}
        for space, x in lat.items():
            entry[space] = [[frame_errors(torch.from_numpy(x[s, b:b + 1]).double(), keys, fill)[0]
                             for s in range(x.shape[0])] for b in range(x.shape[1])]
        h200 = np.asarray(ref["feasibility"][f"{keep}/{fill}"]["rel_l2"])
        entry["x0_max_abs_diff_vs_h200"] = float(np.abs(np.asarray(entry["x0"]) - h200).max())
        out["errors"][f"{keep}/{fill}"] = entry
        print(keep, fill, "x0 vs H200 max |Δ|", entry["x0_max_abs_diff_vs_h200"], flush=True)
    out["seconds"] = time.perf_counter() - t0
    Path(args.json).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
