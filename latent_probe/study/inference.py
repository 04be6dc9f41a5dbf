"""Inference a reviewer accepts, for per-clip tables of any study (issue 19, item 4).

Rows are clips: a pandas DataFrame with a ``prompt`` column (the unit that varies most), usually ``seed``
and ``setting`` columns, and one column per measure.

* ``cluster_bootstrap`` — mean and percentile CI resampling **prompts** with replacement, each drawn prompt
  bringing all its clips (clips are nested in prompts, so their variation counts once, not N times);
  ``cluster_bootstrap_columns`` the same for every column of a [clips, K] table at once (NaN entries left out);
* ``paired_difference_ci`` — setting A − setting B on the same (prompt, seed) clips, cluster-bootstrapped by
  prompt, with a two-sided bootstrap p-value; refuses when the two settings do not cover the same clips;
* ``holm`` — Holm's step-down adjusted p-values for a small, pre-declared family of comparisons;
* ``sign_flip_p`` — the exact randomisation test of paired differences, flipping whole prompts' signs (valid
  with few prompts, where a bootstrap p-value is not);
* ``declared_comparisons`` — such a family (``Declared``: id, measure, A, B; ``read_declared`` reads it from
  JSON) as paired differences by prompt: CI by bootstrap, p by sign flip, Holm over the whole family;
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

__all__ = ["ClusterCI", "cluster_bootstrap", "cluster_bootstrap_columns", "PairedComparison", "paired_difference_ci",
           "sign_flip_p", "holm",
           "Declared", "read_declared", "declared_comparisons", "rank_correlation", "class_table"]


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


def _resample(values: np.ndarray, clusters: Any, n_resamples: int, confidence: float, seed: int
              ) -> tuple[np.ndarray, int]:
    """[n_resamples, K] means of the finite entries of each column of ``values`` [N, K] over clusters drawn with
    replacement (the recipe in the module docstring), and the number of clusters."""
    c = np.asarray(clusters).ravel()
    if values.ndim != 2 or values.shape[0] != c.size or c.size == 0:
        raise StudyError(f"a cluster bootstrap needs values and cluster labels of one length > 0, got "
                         f"{values.shape[0] if values.ndim else 0} and {c.size}")
    if not 0 < confidence < 1 or n_resamples < 1:
        raise StudyError("confidence must be in (0, 1) and n_resamples at least 1")
    labels, idx = np.unique(c, return_inverse=True)
    p = len(labels)
    if p < 2:
        raise StudyError("a cluster bootstrap needs at least 2 clusters (prompts): one gives no interval")
    finite = np.isfinite(values)
    sums = np.zeros((p, values.shape[1]))
    counts = np.zeros((p, values.shape[1]))
    np.add.at(sums, idx, np.where(finite, values, 0.0))                # [P, K] per-cluster sums
    np.add.at(counts, idx, finite.astype(np.float64))                  # [P, K] finite clips per cluster
    draw = np.random.default_rng(seed).integers(0, p, size=(n_resamples, p))
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums[draw].sum(1) / counts[draw].sum(1), p


def cluster_bootstrap(values: Any, clusters: Any, *, n_resamples: int = 4000, confidence: float = 0.95,
                      seed: int = 0) -> ClusterCI:
    """Mean of ``values`` [N] and its CI from resampling ``clusters`` [N] (labels, e.g. prompts).

    Non-finite values are refused (drop or impute them first, and say so): a silently shorter sample would
    weight the other clips of that prompt up.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size != np.asarray(clusters).size or v.size == 0:
        raise StudyError(f"cluster_bootstrap needs values and cluster labels of one length > 0, got {v.size} and "
                         f"{np.asarray(clusters).size}")
    if not np.isfinite(v).all():
        raise StudyError(f"cluster_bootstrap got {int((~np.isfinite(v)).sum())} non-finite values; drop them first")
    means, p = _resample(v[:, None], clusters, n_resamples, confidence, seed)
    boot = means[:, 0]
    low, high = np.percentile(boot, [50 * (1 - confidence), 50 * (1 + confidence)])
    return ClusterCI(float(v.mean()), float(low), float(high), int(v.size), p, boot)


def cluster_bootstrap_columns(table: Any, clusters: Any, *, n_resamples: int = 2000, confidence: float = 0.95,
                              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile CI [K], [K] of the column means of ``table`` [N, K] (e.g. clips × DiT calls), resampling
    ``clusters`` [N] as ``cluster_bootstrap`` does; NaN entries are left out of each resample's column means
    (a column with no finite entry in a resample does not count for that column)."""
    means, _ = _resample(np.asarray(table, dtype=np.float64), clusters, n_resamples, confidence, seed)
    a = (1 - confidence) / 2
    with np.errstate(invalid="ignore"):
        return np.nanquantile(means, a, axis=0), np.nanquantile(means, 1 - a, axis=0)


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


@dataclass(frozen=True)
class Declared:
    """One pre-declared comparison: ``measure`` of setting ``a`` minus that of setting ``b``, named ``id``."""

    id: str
    measure: str
    a: str
    b: str


def read_declared(path: str) -> list[Declared]:
    """The comparisons declared in a JSON file: a list of ``{"id", "measure", "a", "b"}`` (strings, ids unique).
    Anything else is refused (``StudyError``, one line naming the file)."""
    import json

    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError, RecursionError) as exc:   # RecursionError: JSON nested too deep
        raise StudyError(f"{path}: cannot read the declared comparisons ({exc})") from None
    fields = ("id", "measure", "a", "b")
    if not isinstance(doc, list) or not doc or not all(
            isinstance(d, dict) and set(d) == set(fields) and all(isinstance(d[f], str) and d[f] for f in fields)
            for d in doc):
        raise StudyError(f"{path}: expected a non-empty JSON list of {{\"id\", \"measure\", \"a\", \"b\"}} "
                         f"with string values")
    out = [Declared(*(d[f] for f in fields)) for d in doc]
    if len({d.id for d in out}) != len(out):
        raise StudyError(f"{path}: the comparison ids are not unique")
    return out


def sign_flip_p(values: Any, clusters: Any, *, max_exact: int = 16, n_resamples: int = 20000, seed: int = 0
                ) -> float:
    """Two-sided p-value of the paired differences ``values`` [N] having mean 0, by flipping the sign of whole
    clusters (prompts): the statistic is the mean over clips, Σ_p s_p·S_p / N with S_p a prompt's sum; p is the
    share of the 2^P sign vectors whose |statistic| reaches the observed one (exact for P ≤ ``max_exact``, else
    ``n_resamples`` seeded random vectors, (k + 1) / (n + 1)). Valid for any number of prompts: with P prompts
    it cannot go below 2 / 2^P (0.5 with 2, 0.0078 with 8) — unlike a bootstrap p, which reaches
    1 / (n_resamples + 1) whenever every prompt agrees in sign."""
    v = np.asarray(values, dtype=np.float64).ravel()
    c = np.asarray(clusters).ravel()
    if v.size != c.size or v.size == 0 or not np.isfinite(v).all():
        raise StudyError("sign_flip_p needs finite values and cluster labels of one length > 0")
    _, idx = np.unique(c, return_inverse=True)
    sums = np.bincount(idx, weights=v)                                   # [P]
    p = sums.size
    if p <= max_exact:
        signs = 1 - 2 * ((np.arange(2 ** p)[:, None] >> np.arange(p)) & 1)   # [2^P, P], every sign vector
    else:
        signs = np.random.default_rng(seed).choice([-1, 1], size=(n_resamples, p))
    stat = np.abs(signs @ sums)
    observed = abs(sums.sum())
    hits = int((stat >= observed * (1 - 1e-12)).sum())                  # ties (rounding) count as reaching it
    return hits / signs.shape[0] if p <= max_exact else (hits + 1) / (n_resamples + 1)


def declared_comparisons(table: pd.DataFrame, declared: Sequence[Declared], *, setting: str = "setting",
                         keys: Sequence[str] = ("prompt", "seed"), min_prompts: int = 3, **bootstrap: Any
                         ) -> list[dict[str, Any]]:
    """A pre-declared family of paired comparisons, each A − B over the clips where its measure is finite in both
    settings (a clip whose object was lost leaves that comparison: ``n_dropped``; a clip in one setting only:
    ``n_unpaired``): mean and CI by prompt (``paired_difference_ci``: ``mean``, ``low``, ``high``,
    ``p_bootstrap``), the exact sign-flip ``p_value`` over prompts (``sign_flip_p``: valid with few prompts),
    and Holm's ``p_holm`` over the **whole declared family** (``holm_m`` comparisons; one that could not be
    tested counts as p = 1, so the family does not shrink with the data).

    One dict per declared comparison, in order: ``id``, ``measure``, ``a``, ``b``, ``status`` — ``"tested"``,
    ``"absent"`` (a setting or the measure is not in the table), ``"no finite pair"`` or ``"too few prompts"``
    (fewer than ``min_prompts`` with finite pairs) — ``n_clips`` (finite pairs), ``n_dropped``, ``n_unpaired``,
    ``holm_m``. Untested comparisons are reported, never hidden.
    """
    if min_prompts < 2:
        raise StudyError("min_prompts must be at least 2")
    out: list[dict[str, Any]] = []
    for d in declared:
        rec: dict[str, Any] = {"id": d.id, "measure": d.measure, "a": d.a, "b": d.b, "n_clips": 0, "n_dropped": 0,
                               "n_unpaired": 0, "holm_m": len(declared)}
        out.append(rec)
        if d.measure not in table.columns or not {d.a, d.b} <= set(table[setting]):
            rec["status"] = "absent"
            continue
        ta = table[table[setting] == d.a].set_index(list(keys))[d.measure].astype(np.float64)
        tb = table[table[setting] == d.b].set_index(list(keys))[d.measure].astype(np.float64)
        for name, t in ((d.a, ta), (d.b, tb)):
            if t.index.duplicated().any():
                raise StudyError(f"declared comparison {d.id}: setting {name!r} has a clip twice "
                                 f"({t.index[t.index.duplicated()][0]})")
        both = ta.index.intersection(tb.index)
        ok = both[np.isfinite(ta.reindex(both).to_numpy()) & np.isfinite(tb.reindex(both).to_numpy())]
        rec["n_dropped"] = int(len(both) - len(ok))
        rec["n_unpaired"] = int(len(ta.index.symmetric_difference(tb.index)))
        keep = {k if isinstance(k, tuple) else (k,) for k in ok}   # one key: a plain Index of scalars
        rec["n_clips"] = len(keep)
        rows = [tuple(r) in keep for r in table[list(keys)].itertuples(index=False)]
        sub = table[table[setting].isin([d.a, d.b]).to_numpy() & np.asarray(rows, dtype=bool)]
        if not keep:
            rec["status"] = "no finite pair"
            continue
        if len({k[0] for k in keep}) < min_prompts:
            rec["status"] = "too few prompts"
            continue
        pc = paired_difference_ci(sub, d.a, d.b, d.measure, setting=setting, keys=keys, **bootstrap)
        rec.update(status="tested", **{k: v for k, v in pc.as_dict().items() if k != "p_value"},
                   p_bootstrap=pc.p_value, p_value=sign_flip_p(pc.diffs["diff"], pc.diffs[keys[0]]))
    adjusted = holm([r["p_value"] if r["status"] == "tested" else 1.0 for r in out]) if out else []
    for rec, adj in zip(out, adjusted):
        if rec["status"] == "tested":
            rec["p_holm"] = float(adj)
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
