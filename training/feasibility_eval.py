"""Does the offline feasibility estimate predict what truncation does, better than trivial predictors?

Data: docs/data/truncation_organism.json (64 truncation settings × 24 clips, H200, with the baseline's
per-step x̂₀ interpolation error per clip). Predictors of the damage (per setting and clip): ``until``
(truncated steps), token-steps skipped, the old estimate (mean interpolation error over the truncated
steps) and ``metrics.feasibility.integrated_error`` (the error integrated over the truncated steps in σ).
Target: −PSNR against the baseline (higher = more damage). Tie-aware rank correlations (Spearman with
average ranks, Kendall τ-b) over settings (clip means) and over clips; the difference between predictors'
Spearman ρ gets a CI by resampling prompts (the settings' means recomputed per resample).
None of the predictors has a fitted parameter, so nothing is tuned on the data it is scored on.

    python training/feasibility_eval.py --json docs/data/feasibility_eval.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latent_probe.metrics.feasibility import integrated_error  # noqa: E402
from latent_probe.study.inference import rank_correlation  # noqa: E402

PREDICTORS = ("until_steps", "token_steps_skipped", "feasibility_mean", "feasibility_integrated")


def table(d: dict) -> pd.DataFrame:
    rows = []
    for i, s in enumerate(d["settings"]):
        per = np.asarray(d["feasibility"][f"{s['keep']}/{s['fill']}"]["rel_l2"])       # [B, S]
        for b, clip in enumerate(d["clips"]):
            rows.append({"setting": i, "prompt": clip["prompt_index"], "seed": clip["seed"],
                         "until_steps": s["until_steps"], "token_steps_skipped": s["token_steps_skipped"],
                         "feasibility_mean": float(per[b, : s["until_steps"]].mean()),
                         "feasibility_integrated": integrated_error(per[b], d["sigmas"], s["until_steps"]),
                         "damage": -s["psnr_db"][b]})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="docs/data/truncation_organism.json")
    p.add_argument("--json", required=True)
    p.add_argument("--n-resamples", type=int, default=2000)
    args = p.parse_args(argv)
    d = json.loads(Path(args.data).read_text())
    t = table(d)
    per_setting = t.groupby("setting")[[*PREDICTORS, "damage"]].mean()
    out: dict = {"data": args.data, "machine": d["machine"], "n_settings": int(per_setting.shape[0]),
                 "n_clips": len(d["clips"]), "settings": {}, "clips": {}}
    for name in PREDICTORS:
        out["settings"][name] = rank_correlation(per_setting[name], per_setting["damage"])
        out["clips"][name] = rank_correlation(t[name], t["damage"])
    # CI by prompt of ρ(predictor) − ρ(best trivial) over settings
    prompts = np.sort(t.prompt.unique())
    rng = np.random.default_rng(0)
    boot = {name: [] for name in PREDICTORS}
    boot_clips = {name: [] for name in PREDICTORS}
    for _ in range(args.n_resamples):
        draw = rng.choice(prompts, size=prompts.size, replace=True)
        sub = pd.concat([t[t.prompt == pr] for pr in draw])
        m = sub.groupby("setting")[[*PREDICTORS, "damage"]].mean()
        for name in PREDICTORS:
            boot[name].append(stats.spearmanr(m[name], m["damage"]).statistic)
            boot_clips[name].append(stats.spearmanr(sub[name], sub["damage"]).statistic)
    for level, bt in (("settings", boot), ("clips", boot_clips)):
        for name in ("feasibility_mean", "feasibility_integrated"):
            for ref in ("until_steps", "token_steps_skipped"):
                diff = np.asarray(bt[name]) - np.asarray(bt[ref])
                lo, hi = np.percentile(diff, [2.5, 97.5])
                out.setdefault("spearman_difference", []).append(
                    {"level": level, "predictor": name, "against": ref,
                     "difference": out[level][name]["spearman"] - out[level][ref]["spearman"],
                     "low": float(lo), "high": float(hi)})
    for name in PREDICTORS:
        lo, hi = np.percentile(boot[name], [2.5, 97.5])
        out["settings"][name].update(spearman_low=float(lo), spearman_high=float(hi))
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
