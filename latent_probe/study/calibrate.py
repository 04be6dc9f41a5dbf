"""Calibration exports from a study: MagCache ``mag_ratios`` and FirstBlockCache's signal, per expert and branch.

A study recorded with ``--record_residuals`` (organism backend) keeps, beside each run, ``residuals/<job id>.json``
(``interventions.residuals.ResidualRecorder``: the exact quantities diffusers' MagCache calibration and
FirstBlockCache compute, per DiT call). This module reads them back:

* ``mag_ratio_table(records, expert, branch)`` → [clips, calls] float64, one row per clip (prompt × seed);
* ``mag_ratio_summary`` → per call: mean over clips and a 95 % CI from a cluster bootstrap by prompt (prompts
  resampled with replacement, every clip of a drawn prompt kept: between-prompt variance dominates);
* ``magcache_config(records, expert, branch, num_inference_steps)`` → the keyword arguments of
  ``diffusers.hooks.MagCacheConfig`` for that expert: ``mag_ratios`` (the mean over clips, index j = the
  expert's j-th call of that branch in a generation, 1.0 first, as diffusers indexes them) and
  ``num_inference_steps`` = the expert's calls per branch (diffusers resets MagCache's state after that many:
  the expert's own count is what is exact per expert). Another ``num_inference_steps`` resamples the ratios with
  diffusers' own nearest-index rule (``mag_cache.nearest_interp``) — MagCache's approximation, not a
  measurement at that count;
* ``fbc_signal_quantiles`` → the distribution over clips, per call, of FirstBlockCache's relative change of the
  first block's residual (its threshold is compared with this), to choose a threshold from data.

MagCacheConfig holds one ratio list for both CFG branches; ``branch="cond"``, ``"uncond"`` or ``"mean"`` (the
per-call mean of the two branches' means) says which goes into the config; the summary keeps both.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .inference import cluster_bootstrap_columns
from .jobs import StudyError
from .manifest import read_manifest
from .runner import job_status, run_path

__all__ = ["ResidualRecord", "read_residuals", "mag_ratio_table", "mag_ratio_summary", "magcache_config",
           "fbc_signal_quantiles", "nearest_interp", "calibration_report", "DEFAULT_BRANCH", "DEFAULT_BOOTSTRAP"]

FORMAT = "latent_probe.residuals/1"
BRANCH_CHOICES = ("cond", "uncond", "mean")
DEFAULT_BRANCH = "cond"      # the branch ``latent-probe calibrate`` and a study's --mag_calibrate put in a config
DEFAULT_BOOTSTRAP = 2000     # bootstrap resamples of the report's CIs


@dataclass(frozen=True)
class ResidualRecord:
    """One clip's recorded series: {(expert, branch): {"timestep", "mag_ratio", "fbc_signal"}}."""

    job_id: str
    prompt_id: str
    seed: int
    settings: dict[str, Any]
    series: dict[tuple[str, str], dict[str, list]]


def read_residuals(study_dir: str | os.PathLike, settings: dict[str, Any] | None = None) -> list[ResidualRecord]:
    """The residual records of the complete jobs of a study (those whose run file is complete), optionally only
    the jobs whose settings include ``settings``. Refuses (``StudyError``, one line) when there are none."""
    study_dir = os.fspath(study_dir)
    if read_manifest(study_dir) is None:
        raise StudyError(f"{study_dir} is not a study folder (no manifest.json)")
    files = sorted(glob.glob(os.path.join(glob.escape(study_dir), "residuals", "*.json")))
    if not files:
        raise StudyError(f"{study_dir} has no residuals/*.json: record the study with --record_residuals (the "
                         "MagCache and FirstBlockCache signals live inside the DiT; run files cannot give them)")
    out = []
    for path in files:
        try:
            with open(path, encoding="utf-8") as fh:
                doc = json.load(fh)
        except (OSError, ValueError) as exc:
            raise StudyError(f"{path}: not readable JSON ({exc})") from None
        if doc.get("format") != FORMAT:
            raise StudyError(f"{path}: not a latent_probe residuals file")
        if not job_status(run_path(study_dir, doc["job_id"]), doc["job_id"]).done:
            continue   # its run did not complete: not counted
        if settings and any(doc.get("settings", {}).get(k) != v for k, v in settings.items()):
            continue
        series = {(s["expert"], s["branch"]): {k: s[k] for k in ("timestep", "mag_ratio", "fbc_signal")}
                  for s in doc["series"]}
        out.append(ResidualRecord(doc["job_id"], str(doc["prompt_id"]), int(doc["seed"]), doc.get("settings", {}),
                                  series))
    if not out:
        raise StudyError(f"{study_dir}: no residuals of a complete job" + (f" with settings {settings}" if settings
                                                                           else ""))
    return out


def _one_setting(records: Sequence[ResidualRecord]) -> None:
    """Refuse to pool clips recorded under different settings (another guidance or step count is another
    population, not more clips of one)."""
    differ = sorted({k for r in records for k in set(r.settings) | set(records[0].settings)
                     if r.settings.get(k) != records[0].settings.get(k)})
    if differ:
        raise StudyError(f"these residuals were recorded under different settings ({', '.join(differ)}); pick one "
                         f"with --setting NAME=VALUE (Python: read_residuals(study, {{...}}))")


def _experts(records: Sequence[ResidualRecord]) -> list[str]:
    return sorted({e for r in records for e, _ in r.series})


def mag_ratio_table(records: Sequence[ResidualRecord], expert: str, branch: str,
                    key: str = "mag_ratio") -> np.ndarray:
    """[clips, calls] float64 of ``key`` for ``expert`` / ``branch``; refuses clips of different lengths or
    timesteps (different step counts or schedules cannot be averaged call by call)."""
    rows, ts = [], None
    for r in records:
        s = r.series.get((expert, branch))
        if s is None:
            raise StudyError(f"job {r.job_id} has no {expert}/{branch} series (experts here: {_experts(records)})")
        if ts is None:
            ts = s["timestep"]
        elif s["timestep"] != ts:
            raise StudyError(f"job {r.job_id}: {expert}/{branch} ran at other timesteps than the first job; "
                             "calibrate one step count at a time (--setting steps=N)")
        rows.append([np.nan if v is None else float(v) for v in s[key]])
    return np.asarray(rows, dtype=np.float64)


def mag_ratio_summary(records: Sequence[ResidualRecord], expert: str, branch: str, n_boot: int = DEFAULT_BOOTSTRAP
                      ) -> dict[str, Any]:
    """Per call: mean over clips, 95 % CI (cluster bootstrap by prompt; None with fewer than two prompts), clip
    and prompt counts, timesteps."""
    table = mag_ratio_table(records, expert, branch)
    prompts = [r.prompt_id for r in records]
    if len(set(prompts)) < 2:   # one prompt: a bootstrap by prompt has nothing to resample
        lo = hi = None
    else:
        lo, hi = (v.tolist() for v in cluster_bootstrap_columns(table, prompts, n_resamples=n_boot))
    return {"expert": expert, "branch": branch, "timestep": records[0].series[(expert, branch)]["timestep"],
            "mean": table.mean(axis=0).tolist(), "ci95_low": lo, "ci95_high": hi,
            "clips": len(records), "prompts": len({r.prompt_id for r in records})}


def nearest_interp(values: Sequence[float], target_length: int) -> list[float]:
    """diffusers' own ``mag_cache.nearest_interp`` (what ``MagCacheConfig`` does with a list of another length)."""
    import torch
    from diffusers.hooks.mag_cache import nearest_interp as diffusers_nearest

    if target_length < 1:
        raise StudyError(f"num_inference_steps must be >= 1, got {target_length}")
    return [float(v) for v in diffusers_nearest(torch.tensor(list(values), dtype=torch.float64), target_length)]


def magcache_config(records: Sequence[ResidualRecord], expert: str, branch: str = DEFAULT_BRANCH,
                    num_inference_steps: int | None = None) -> dict[str, Any]:
    """``MagCacheConfig`` keyword arguments for ``expert`` (see the module docstring)."""
    if branch not in BRANCH_CHOICES:
        raise StudyError(f"branch {branch!r}: choose {', '.join(BRANCH_CHOICES)}")
    _one_setting(records)
    if expert not in _experts(records):
        raise StudyError(f"no expert {expert!r} in these residuals; experts: {', '.join(_experts(records))}")
    branches = ["cond", "uncond"] if branch == "mean" else [branch]
    means = [mag_ratio_table(records, expert, b).mean(axis=0) for b in branches]
    ratios = [float(v) for v in np.mean(means, axis=0)]
    calls = len(ratios)
    n = calls if num_inference_steps is None else int(num_inference_steps)
    return {"mag_ratios": ratios if n == calls else nearest_interp(ratios, n), "num_inference_steps": n}


def fbc_signal_quantiles(records: Sequence[ResidualRecord], expert: str, branch: str,
                         q: Sequence[float] = (0.05, 0.25, 0.5, 0.75, 0.95)) -> dict[str, Any]:
    """Per call (from the second on): quantiles over clips of FirstBlockCache's signal."""
    table = mag_ratio_table(records, expert, branch, key="fbc_signal")[:, 1:]
    qs = np.quantile(table, q, axis=0) if table.size else np.empty((len(q), 0))
    return {"expert": expert, "branch": branch, "timestep": records[0].series[(expert, branch)]["timestep"][1:],
            "quantiles": list(q), "values": qs.T.tolist(), "clips": len(records)}


def calibration_report(records: Sequence[ResidualRecord], n_boot: int = DEFAULT_BOOTSTRAP) -> dict[str, Any]:
    """MagCache ratio summaries and FirstBlockCache signal quantiles for every expert and branch."""
    _one_setting(records)
    keys = sorted({k for r in records for k in r.series})
    return {"clips": len(records), "prompts": len({r.prompt_id for r in records}),
            "jobs": [r.job_id for r in records],
            "mag_ratios": [mag_ratio_summary(records, e, b, n_boot) for e, b in keys],
            "first_block_cache_signal": [fbc_signal_quantiles(records, e, b) for e, b in keys]}
