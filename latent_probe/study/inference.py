"""Inference a reviewer accepts, for per-clip tables of any study (issue 19, item 4).

Rows are clips: a pandas DataFrame with a ``prompt`` column (the unit that varies most), usually ``seed``
and ``setting`` columns, and one column per measure.

* ``cluster_bootstrap`` — mean and percentile CI resampling **prompts** with replacement, each drawn prompt
  bringing all its clips (clips are nested in prompts, so their variation counts once, not N times);
* ``paired_difference_ci`` — setting A − setting B on the same (prompt, seed) clips, cluster-bootstrapped by
  prompt, with a two-sided bootstrap p-value; refuses when the two settings do not cover the same clips;
* ``holm`` — Holm's step-down adjusted p-values for a small, pre-declared family of comparisons;
* ``rank_correlation`` — Spearman ρ and Kendall τ-b (``scipy.stats``: ties take average ranks / τ-b);
* ``class_table`` — mean and prompt-cluster CI of a measure per (setting, class).

Resampling: ``numpy.random.default_rng(seed).integers(0, P, (n_resamples, P))`` over the P prompts; a
resample's statistic is the mean over the clips of the drawn prompts (with repetition); the interval is the
(1−c)/2, (1+c)/2 percentiles. The p-value is 2·min(share of resampled means ≤ 0, share ≥ 0), at least
1/(n_resamples + 1), at most 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .records import StudyError

__all__ = ["ClusterCI", "cluster_bootstrap", "PairedComparison", "paired_difference_ci", "holm",
           "rank_correlation", "class_table"]


@dataclass(frozen=True)
class ClusterCI:
    """Mean of the clips, its percentile CI from resampling clusters, clips and clusters counted."""

    mean: float
    low: float
    high: float
    n_clips: int
    n_clusters: int
    boot: np.ndarray

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n_clips": self.n_clips,
                "n_prompts": self.n_clusters}


def cluster_bootstrap(values: Any, clusters: Any, *, n_resamples: int = 4000, confidence: float = 0.95,
                      seed: int = 0) -> ClusterCI:
    """Mean of ``values`` [N] and its CI from resampling ``clusters`` [N] (labels, e.g. prompts).

    Non-finite values are refused (drop or impute them first, and say so): a silently shorter sample would
    weight the other clips of that prompt up.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    c = np.asarray(clusters).ravel()
    if v.shape != c.shape or v.size == 0:
        raise StudyError(f"cluster_bootstrap needs values and cluster labels of one length > 0, got {v.size} and {c.size}")
    if not np.isfinite(v).all():
        raise StudyError(f"cluster_bootstrap got {int((~np.isfinite(v)).sum())} non-finite values; drop them first")
    if not 0 < confidence < 1 or n_resamples < 1:
        raise StudyError("confidence must be in (0, 1) and n_resamples at least 1")
    labels, idx = np.unique(c, return_inverse=True)
    p = len(labels)
    if p < 2:
        raise StudyError("cluster_bootstrap needs at least 2 clusters (prompts): one gives no interval")
    sums = np.bincount(idx, weights=v, minlength=p)                    # [P] per-cluster sums
    counts = np.bincount(idx, minlength=p).astype(np.float64)          # [P] clips per cluster
    draw = np.random.default_rng(seed).integers(0, p, size=(n_resamples, p))
    boot = sums[draw].sum(1) / counts[draw].sum(1)
    low, high = np.percentile(boot, [50 * (1 - confidence), 50 * (1 + confidence)])
    return ClusterCI(float(v.mean()), float(low), float(high), int(v.size), p, boot)


@dataclass(frozen=True)
class PairedComparison:
    """A − B over the shared clips: the per-clip differences, their prompt-cluster CI and p-value."""

    a: str
    b: str
    measure: str
    diffs: pd.DataFrame
    ci: ClusterCI
    p_value: float

    def as_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "measure": self.measure, **self.ci.as_dict(), "p_value": self.p_value}


def _p_two_sided(boot: np.ndarray) -> float:
    n = boot.size
    share = min(float((boot <= 0).mean()), float((boot >= 0).mean()))
    return float(min(1.0, max(2 * share, 1.0 / (n + 1))))


def paired_difference_ci(table: pd.DataFrame, a: str, b: str, measure: str, *, setting: str = "setting",
                         keys: Sequence[str] = ("prompt", "seed"), **bootstrap: Any) -> PairedComparison:
    """Per-clip ``measure`` of setting ``a`` minus that of ``b``, matched on ``keys``; CI by prompt.

    Refuses (``StudyError``, one line) when a clip is in one setting only, a clip appears twice, or the
    measure is not finite for a matched clip.
    """
    for col in (setting, measure, *keys):
        if col not in table.columns:
            raise StudyError(f"the table has no column {col!r}")
    ta = table[table[setting] == a].set_index(list(keys))[measure]
    tb = table[table[setting] == b].set_index(list(keys))[measure]
    for name, t in ((a, ta), (b, tb)):
        if t.empty:
            raise StudyError(f"setting {name!r} has no rows")
        if t.index.duplicated().any():
            raise StudyError(f"setting {name!r} has a clip twice ({t.index[t.index.duplicated()][0]})")
    if set(ta.index) != set(tb.index):
        only = sorted(set(ta.index) ^ set(tb.index), key=str)
        raise StudyError(f"settings {a!r} and {b!r} do not cover the same clips (e.g. {only[0]}): not paired")
    d = (ta - tb.reindex(ta.index)).rename("diff").reset_index()
    ci = cluster_bootstrap(d["diff"], d[keys[0]], **bootstrap)
    return PairedComparison(a, b, measure, d, ci, _p_two_sided(ci.boot))


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values, in the input order: sort ascending, p₍ᵢ₎·(m − i) for i = 0 …,
    running maximum, capped at 1. Reject comparison j at level α when adjusted[j] ≤ α."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1 or p.size == 0 or not np.all((p >= 0) & (p <= 1)):
        raise StudyError("holm needs a non-empty list of p-values in [0, 1]")
    m = p.size
    order = np.argsort(p, kind="stable")
    adj = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out = np.empty(m)
    out[order] = adj
    return out


def rank_correlation(x: Any, y: Any) -> dict[str, float]:
    """Spearman ρ (average ranks for ties) and Kendall τ-b (tie-corrected) with their p-values (scipy)."""
    from scipy import stats

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.size < 3 or not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise StudyError("rank_correlation needs two finite arrays of one length ≥ 3")
    rho = stats.spearmanr(x, y)
    tau = stats.kendalltau(x, y, variant="b")
    return {"spearman": float(rho.statistic), "spearman_p": float(rho.pvalue),
            "kendall_tau_b": float(tau.statistic), "kendall_p": float(tau.pvalue), "n": int(x.size)}


def class_table(table: pd.DataFrame, measure: str, *, by: Sequence[str] = ("setting", "class"),
                cluster: str = "prompt", **bootstrap: Any) -> pd.DataFrame:
    """Mean, CI (clusters = ``cluster``), clips and clusters of ``measure`` per group of ``by``, NaN rows
    dropped and counted in ``dropped``. With one prompt per class the CI is over that prompt's seeds only
    (``n_prompts`` says 1): read it as within-prompt spread."""
    rows = []
    for key, g in table.groupby(list(by), sort=True):
        ok = np.isfinite(g[measure].to_numpy(dtype=np.float64))
        sub = g[ok]
        key = key if isinstance(key, tuple) else (key,)
        rec = dict(zip(by, key))
        if len(sub) < 2:   # no interval from one clip
            rec.update(mean=float(sub[measure].mean()) if len(sub) else np.nan, low=np.nan, high=np.nan,
                       n_clips=len(sub), n_prompts=int(sub[cluster].nunique()), dropped=int((~ok).sum()))
        else:
            clusters = sub[cluster] if sub[cluster].nunique() > 1 else np.arange(len(sub))
            ci = cluster_bootstrap(sub[measure], clusters, **bootstrap)
            rec.update(ci.as_dict(), n_prompts=int(sub[cluster].nunique()), dropped=int((~ok).sum()))
        rows.append(rec)
    return pd.DataFrame(rows)
