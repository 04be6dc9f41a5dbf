"""Speed–quality frontier of acceleration settings from a per-clip table (time and measures per clip).

Rows: one clip (``prompt``, ``seed``) under one ``setting`` of a ``method``, with a time column (seconds)
and measure columns. ``saving`` is paired: 1 − t(setting, clip) / t(baseline, clip) for the same clip,
so a clip's own cost cancels; every mean carries a CI from ``inference.cluster_bootstrap`` by prompt.
``best_at_saving`` picks, per method, the best setting among those whose mean saving reaches a target —
a selection over settings, so it is exploratory: confirm it with a pre-declared paired comparison.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from .inference import cluster_bootstrap
from .records import StudyError

__all__ = ["add_saving", "frontier_summary", "best_at_saving"]


def add_saving(table: pd.DataFrame, baseline: str, time_col: str, *, setting: str = "setting",
               keys: Sequence[str] = ("prompt", "seed")) -> pd.DataFrame:
    """A copy of ``table`` with ``saving_<time_col>`` = 1 − t / t_baseline of the same clip (fraction).
    Refuses when a clip of a setting has no baseline row."""
    base = table[table[setting] == baseline].set_index(list(keys))[time_col]
    if base.empty:
        raise StudyError(f"no rows of the baseline setting {baseline!r}")
    if base.index.duplicated().any():
        raise StudyError(f"the baseline {baseline!r} has a clip twice")
    idx = pd.MultiIndex.from_frame(table[list(keys)])
    missing = ~idx.isin(base.index)
    if missing.any():
        raise StudyError(f"clip {tuple(table.loc[missing, list(keys)].iloc[0])} has no baseline row: cannot pair")
    out = table.copy()
    out[f"saving_{time_col}"] = 1.0 - table[time_col].to_numpy() / base.reindex(idx).to_numpy()
    return out


def frontier_summary(table: pd.DataFrame, measures: Sequence[str], *, setting: str = "setting",
                     cluster: str = "prompt", extra: Sequence[str] = ("method",), **bootstrap: Any) -> pd.DataFrame:
    """Per setting: mean, low, high (CI by ``cluster``) of every column in ``measures`` (NaN clips dropped,
    counted in ``<m>_n``; fewer than 2 clusters left: no interval, NaN), plus the ``extra`` columns (constant
    within a setting)."""
    rows = []
    for name, g in table.groupby(setting, sort=False):
        rec: dict[str, Any] = {setting: name, **{c: g[c].iloc[0] for c in extra if c in g}}
        for m in measures:
            v = g[m].to_numpy(dtype=np.float64)
            ok = np.isfinite(v)
            rec[f"{m}_n"] = int(ok.sum())
            if len(set(g[cluster].to_numpy()[ok])) < 2:   # no interval from one prompt (or none)
                rec.update({m: float(v[ok].mean()) if ok.any() else np.nan, f"{m}_low": np.nan, f"{m}_high": np.nan})
                continue
            ci = cluster_bootstrap(v[ok], g[cluster].to_numpy()[ok], **bootstrap)
            rec.update({m: ci.mean, f"{m}_low": ci.low, f"{m}_high": ci.high})
        rows.append(rec)
    return pd.DataFrame(rows)


def best_at_saving(summary: pd.DataFrame, measure: str, saving: str, *, higher_is_better: bool,
                   targets: Sequence[float] = (0.25, 0.40, 0.60), method: str = "method",
                   setting: str = "setting") -> pd.DataFrame:
    """Per method and target saving: the setting with the best mean ``measure`` among those whose mean
    ``saving`` ≥ target (none: NaN row). Columns: method, target, setting, saving (+ CI), measure (+ CI)."""
    rows = []
    for m, g in summary.groupby(method, sort=False):
        for t in targets:
            ok = g[g[saving] >= t]
            rec = {method: m, "target": t}
            if ok.empty:
                rec.update({setting: None, saving: np.nan, measure: np.nan})
            else:
                best = ok.loc[ok[measure].idxmax() if higher_is_better else ok[measure].idxmin()]
                rec.update({setting: best[setting], saving: best[saving], f"{saving}_low": best[f"{saving}_low"],
                            f"{saving}_high": best[f"{saving}_high"], measure: best[measure],
                            f"{measure}_low": best[f"{measure}_low"], f"{measure}_high": best[f"{measure}_high"]})
            rows.append(rec)
    return pd.DataFrame(rows)
