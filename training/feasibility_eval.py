"""Does the offline feasibility estimate predict what truncation does, better than trivial predictors?

Data: docs/data/truncation_organism.json (64 truncation settings × 24 clips, H200, with the baseline's
per-step x̂₀ interpolation error per clip); docs/data/feasibility_offline_errors.json (the same 24 baselines
rerun on a CPU: the prediction's interpolation error per clip and step, which the H200 data lacks);
docs/data/feasibility_sensitivity.json (per-step sensitivities from a perturbation sweep on other clips:
seeds ≥ 10). Predictors of the damage (per setting and clip): ``until`` (truncated steps), token-steps
skipped, the old estimate (mean x̂₀ error over the truncated steps), ``integrated_error`` (Σ error × Δσ over
the truncated steps) in x̂₀ and in the prediction, and ``weighted_error`` (Σ sensitivity × error over the
truncated steps) in x̂₀ and in the prediction. Target: −PSNR against the baseline (higher = more damage).
Tie-aware rank correlations (Spearman with average ranks, Kendall τ-b) over settings (clip means), over all
(setting, clip) rows, and within each setting over its 24 clips (mean ρ: which clips a setting hurts most;
the trivial predictors are constant there); differences between predictors' Spearman ρ get a CI by
resampling prompts (the settings' means recomputed per resample). No predictor has a parameter fitted on
these data (the sensitivities come from other clips), so every setting and clip is held out.

    python training/feasibility_eval.py --json docs/data/feasibility_eval.json --n-resamples 1000
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

from latent_probe.metrics.feasibility import integrated_error, weighted_error  # noqa: E402
from latent_probe.study.inference import rank_correlation  # noqa: E402

TRIVIAL = ("until_steps", "token_steps_skipped")
BASE = (*TRIVIAL, "feasibility_mean", "feasibility_integrated")
NEW = ("pred_integrated", "x0_weighted", "pred_weighted")


def sensitivity_of(sens: dict, space: str, num_steps: int) -> np.ndarray:
    """[S] sensitivities of one space at every step, NaN where the sweep did not perturb."""
    out = np.full(num_steps, np.nan)
    sp = sens["spaces"][space]
    out[np.asarray(sp["steps"], dtype=int)] = sp["sensitivity"]
    return out


def table(d: dict, offline: dict | None = None, sens: dict | None = None) -> pd.DataFrame:
    """One row per (setting, clip): the predictors and the damage. ``offline`` / ``sens``: the CPU data files
    (feasibility_offline_errors.json, feasibility_sensitivity.json); without them only the first four."""
    rows = []
    if sens is not None:
        w = {sp: sensitivity_of(sens, sp, len(d["sigmas"])) for sp in ("x0", "prediction") if sp in sens["spaces"]}
    for i, s in enumerate(d["settings"]):
        name, u = f"{s['keep']}/{s['fill']}", s["until_steps"]
        per = np.asarray(d["feasibility"][name]["rel_l2"])       # [B, S] x̂₀ error, H200 baselines
        for b, clip in enumerate(d["clips"]):
            row = {"setting": i, "prompt": clip["prompt_index"], "seed": clip["seed"],
                   "until_steps": u, "token_steps_skipped": s["token_steps_skipped"],
                   "feasibility_mean": float(per[b, :u].mean()),
                   "feasibility_integrated": integrated_error(per[b], d["sigmas"], u),
                   "damage": -s["psnr_db"][b], "final_x0_rel_l2": s["x0_rel_l2"][b]}
            if offline is not None:
                pred = np.asarray(offline["errors"][name]["pred"][b])          # [S] prediction error, CPU
                row["pred_integrated"] = integrated_error(pred, d["sigmas"], u)
                if sens is not None:
                    if "x0" in w:
                        row["x0_weighted"] = weighted_error(per[b], w["x0"], u)
                    if "prediction" in w:
                        row["pred_weighted"] = weighted_error(pred, w["prediction"], u)
            rows.append(row)
    return pd.DataFrame(rows)


def within_setting(t: pd.DataFrame, name: str) -> float:
    """Mean over settings of Spearman ρ(predictor, damage) across that setting's clips (average ranks; settings
    where the predictor is constant are left out, NaN if all are). Every setting holds the same clips."""
    g = t.sort_values("setting", kind="stable")
    n = int(g["setting"].nunique())
    x = g[name].to_numpy(dtype=np.float64).reshape(n, -1)
    y = g["damage"].to_numpy(dtype=np.float64).reshape(n, -1)
    rx, ry = stats.rankdata(x, axis=1), stats.rankdata(y, axis=1)
    rx, ry = rx - rx.mean(1, keepdims=True), ry - ry.mean(1, keepdims=True)
    den = np.sqrt((rx ** 2).sum(1) * (ry ** 2).sum(1))
    ok = den > 0
    return float(np.mean((rx * ry).sum(1)[ok] / den[ok])) if ok.any() else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="docs/data/truncation_organism.json")
    p.add_argument("--offline", default="docs/data/feasibility_offline_errors.json",
                   help="prediction-space errors per clip (training/feasibility_offline_errors.py); '' for none")
    p.add_argument("--sensitivity", default="docs/data/feasibility_sensitivity.json",
                   help="per-step sensitivities (training/feasibility_sensitivity.py); '' for none")
    p.add_argument("--json", required=True)
    p.add_argument("--n-resamples", type=int, default=2000)
    args = p.parse_args(argv)
    d = json.loads(Path(args.data).read_text())
    offline = json.loads(Path(args.offline).read_text()) if args.offline else None
    sens = json.loads(Path(args.sensitivity).read_text()) if args.sensitivity and offline else None
    t = table(d, offline, sens)
    predictors = [n for n in (*BASE, *NEW) if n in t.columns]
    per_setting = t.groupby("setting")[[*predictors, "damage"]].mean()
    out: dict = {"data": args.data, "offline": args.offline or None, "sensitivity": args.sensitivity or None,
                 "machine": d["machine"], "n_settings": int(per_setting.shape[0]),
                 "n_clips": len(d["clips"]), "settings": {}, "clips": {}, "within_setting": {}}
    if offline is not None:
        out["offline_x0_max_abs_diff_vs_h200"] = max(e["x0_max_abs_diff_vs_h200"] for e in offline["errors"].values())
    for name in predictors:
        out["settings"][name] = rank_correlation(per_setting[name], per_setting["damage"])
        out["clips"][name] = rank_correlation(t[name], t["damage"])
        out["within_setting"][name] = within_setting(t, name)
    # the weighted predictors claim the final sample's relative change to first order: their scale against the
    # measured final x̂₀ rel L2 (per setting means; a ratio of 1 = the linearisation holds at truncation's size)
    for name in ("x0_weighted", "pred_weighted"):
        if name in predictors:
            m = t.groupby("setting")[[name, "final_x0_rel_l2"]].mean()
            ratio = m[name] / m["final_x0_rel_l2"]
            out.setdefault("scale", {})[name] = {
                "ratio_median": float(ratio.median()), "ratio_min": float(ratio.min()),
                "ratio_max": float(ratio.max()),
                "spearman_vs_final_x0_rel_l2": rank_correlation(m[name], m["final_x0_rel_l2"])["spearman"]}
    # CI by prompt of ρ(predictor) − ρ(best trivial) over settings
    prompts = np.sort(t.prompt.unique())
    rng = np.random.default_rng(0)
    rows_of = {pr: np.flatnonzero(t.prompt.to_numpy() == pr) for pr in prompts}
    boot: dict = {name: [] for name in predictors}
    boot_clips: dict = {name: [] for name in predictors}
    boot_within: dict = {name: [] for name in predictors}
    for _ in range(args.n_resamples):
        draw = rng.choice(prompts, size=prompts.size, replace=True)
        sub = t.iloc[np.concatenate([rows_of[pr] for pr in draw])]
        m = sub.groupby("setting")[[*predictors, "damage"]].mean()
        for name in predictors:
            boot[name].append(stats.spearmanr(m[name], m["damage"]).statistic)
            boot_clips[name].append(stats.spearmanr(sub[name], sub["damage"]).statistic)
            if name not in TRIVIAL:
                boot_within[name].append(within_setting(sub, name))
    for level, bt in (("settings", boot), ("clips", boot_clips)):
        for name in predictors[2:]:
            for ref in (*TRIVIAL, *(("feasibility_integrated",) if name in NEW else ())):
                diff = np.asarray(bt[name]) - np.asarray(bt[ref])
                lo, hi = np.percentile(diff, [2.5, 97.5])
                out.setdefault("spearman_difference", []).append(
                    {"level": level, "predictor": name, "against": ref,
                     "difference": out[level][name]["spearman"] - out[level][ref]["spearman"],
                     "low": float(lo), "high": float(hi)})
    for name in predictors:
        lo, hi = np.percentile(boot[name], [2.5, 97.5])
        out["settings"][name].update(spearman_low=float(lo), spearman_high=float(hi))
        lo, hi = np.percentile(boot_clips[name], [2.5, 97.5])
        out["clips"][name].update(spearman_low=float(lo), spearman_high=float(hi))
        if boot_within[name]:
            lo, hi = np.nanpercentile(boot_within[name], [2.5, 97.5])
            out["within_setting"][name] = {"spearman_mean": out["within_setting"][name], "low": float(lo),
                                           "high": float(hi)}
    for name in NEW:   # within setting: against the x̂₀ integrated error (the trivial predictors are constant there)
        if name in predictors:
            diff = np.asarray(boot_within[name]) - np.asarray(boot_within["feasibility_integrated"])
            lo, hi = np.nanpercentile(diff, [2.5, 97.5])
            out.setdefault("spearman_difference", []).append(
                {"level": "within_setting", "predictor": name, "against": "feasibility_integrated",
                 "difference": out["within_setting"][name]["spearman_mean"]
                 - out["within_setting"]["feasibility_integrated"]["spearman_mean"],
                 "low": float(lo), "high": float(hi)})
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
