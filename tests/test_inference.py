"""Study inference against hand-worked cases and independent references (issue 19, item 4)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from latent_probe.errors import LatentProbeError
from latent_probe.study import inference as I
from latent_probe.study.stats import bootstrap_mean_ci


def test_holm_matches_a_hand_worked_case():
    # sorted 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → running max 0.06
    np.testing.assert_allclose(I.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02], rtol=1e-12)
    np.testing.assert_allclose(I.holm([0.5, 0.9]), [1.0, 1.0])
    with pytest.raises(LatentProbeError):
        I.holm([1.2])


def test_cluster_bootstrap_reproduces_its_documented_recipe():
    rng = np.random.default_rng(1)
    prompts = np.repeat(np.arange(6), 3)
    v = rng.normal(size=18) + prompts
    ci = I.cluster_bootstrap(v, prompts, n_resamples=500, seed=7)
    draw = np.random.default_rng(7).integers(0, 6, size=(500, 6))
    means = np.array([np.concatenate([v[prompts == p] for p in d]).mean() for d in draw])
    lo, hi = np.percentile(means, [2.5, 97.5])
    assert (ci.low, ci.high) == pytest.approx((lo, hi), rel=1e-12)
    assert ci.mean == pytest.approx(v.mean()) and ci.n_clusters == 6 and ci.n_clips == 18


def test_cluster_ci_widens_when_between_prompt_variance_dominates():
    rng = np.random.default_rng(0)
    prompts = np.repeat(np.arange(8), 3)
    within = rng.normal(0, 0.3, size=24)
    between = np.repeat(rng.normal(0, 3.0, size=8), 3)
    v = within + between
    iid = bootstrap_mean_ci(v[:, None])
    clus = I.cluster_bootstrap(v, prompts)
    assert clus.high - clus.low > 1.4 * float(iid[2][0] - iid[1][0])
    # no prompt effect: the two agree to within resampling noise
    clus0 = I.cluster_bootstrap(within, prompts)
    iid0 = bootstrap_mean_ci(within[:, None])
    assert clus0.high - clus0.low == pytest.approx(float(iid0[2][0] - iid0[1][0]), rel=0.35)


def clip_table():
    rng = np.random.default_rng(2)
    rows = []
    for p in range(8):
        pe = rng.normal(0, 3)                                   # a prompt effect both settings share
        for s in range(3):
            ce = rng.normal(0, 1)                               # a clip effect both settings share
            rows.append({"setting": "A", "prompt": p, "seed": s, "q": pe + ce + 0.5 + rng.normal(0, 0.1)})
            rows.append({"setting": "B", "prompt": p, "seed": s, "q": pe + ce + rng.normal(0, 0.1)})
    return pd.DataFrame(rows)


def test_paired_difference_sees_an_effect_the_unpaired_cis_hide():
    t = clip_table()
    cmp = I.paired_difference_ci(t, "A", "B", "q")
    assert 0.4 < cmp.ci.low < 0.5 < cmp.ci.high < 0.6
    assert cmp.p_value == pytest.approx(1 / 4001)
    a = I.cluster_bootstrap(t[t.setting == "A"].q, t[t.setting == "A"].prompt)
    b = I.cluster_bootstrap(t[t.setting == "B"].q, t[t.setting == "B"].prompt)
    assert a.low < b.high                                      # unpaired intervals overlap
    diffs = t[t.setting == "A"].q.to_numpy() - t[t.setting == "B"].q.to_numpy()
    np.testing.assert_allclose(cmp.diffs["diff"].to_numpy(), diffs, rtol=1e-12)


def test_paired_difference_refuses_unmatched_clips():
    t = clip_table()
    with pytest.raises(LatentProbeError, match="same clips"):
        I.paired_difference_ci(t.drop(index=t.index[0]), "A", "B", "q")
    with pytest.raises(LatentProbeError, match="twice"):
        I.paired_difference_ci(pd.concat([t, t.iloc[:1]]), "A", "B", "q")
    with pytest.raises(LatentProbeError, match="non-finite"):
        bad = t.copy()
        bad.loc[0, "q"] = np.nan
        I.paired_difference_ci(bad, "A", "B", "q")


def test_rank_correlation_uses_average_ranks_and_tau_b_for_ties():
    x, y = [1, 1, 2, 3, 3, 4], [1, 2, 3, 4, 6, 5]
    rx = np.array([1.5, 1.5, 3, 4.5, 4.5, 6])
    ry = np.array([1, 2, 3, 4, 6, 5], dtype=float)
    out = I.rank_correlation(x, y)
    assert out["spearman"] == pytest.approx(np.corrcoef(rx, ry)[0, 1], rel=1e-12)
    # τ-b by hand: concordant − discordant over √((n0 − n1)(n0 − n2))
    c = d = 0
    for i in range(6):
        for j in range(i + 1, 6):
            s = np.sign(x[i] - x[j]) * np.sign(y[i] - y[j])
            c += s > 0
            d += s < 0
    n0, n1 = 15, 2                                              # two tied pairs in x, none in y
    assert out["kendall_tau_b"] == pytest.approx((c - d) / np.sqrt((n0 - n1) * n0), rel=1e-12)


def test_class_table_counts_dropped_rows():
    t = clip_table()
    t["class"] = t.prompt % 2
    t.loc[0, "q"] = np.nan
    tab = I.class_table(t, "q")
    assert len(tab) == 4 and tab.n_clips.sum() == 47 and tab.dropped.sum() == 1
    row = tab[(tab.setting == "A") & (tab["class"] == 0)].iloc[0]
    sub = t[(t.setting == "A") & (t["class"] == 0)].q.dropna()
    assert row["mean"] == pytest.approx(sub.mean()) and row["low"] <= row["mean"] <= row["high"]


def test_cluster_bootstrap_refuses_one_cluster_and_nan():
    with pytest.raises(LatentProbeError, match="at least 2 clusters"):
        I.cluster_bootstrap([1.0, 2.0, 3.0], [0, 0, 0])
    with pytest.raises(LatentProbeError, match="non-finite"):
        I.cluster_bootstrap([1.0, np.nan], [0, 1])


def _clips(rng: np.random.Generator) -> pd.DataFrame:
    """5 prompts × 2 seeds × settings a, b, c; b = a − 1 + noise, c = a + noise; one NaN (object lost) in c."""
    rows = []
    for p in range(5):
        for s in range(2):
            base = rng.normal() + p
            for name, v in (("a", base), ("b", base - 1 + 0.1 * rng.normal()), ("c", base + 0.1 * rng.normal())):
                rows.append({"prompt": f"p{p}", "seed": s, "setting": name, "m": v})
    t = pd.DataFrame(rows)
    t.loc[(t.setting == "c") & (t.prompt == "p2") & (t.seed == 1), "m"] = np.nan
    return t


def test_declared_comparisons_pair_drop_nan_and_holm_over_the_whole_declared_family():
    t = _clips(np.random.default_rng(3))
    fam = [I.Declared("P1", "m", "a", "b"), I.Declared("P2", "m", "a", "c"), I.Declared("P3", "m", "a", "zzz"),
           I.Declared("P4", "nope", "a", "b")]
    out = I.declared_comparisons(t, fam, n_resamples=800, seed=2)
    assert [r["id"] for r in out] == ["P1", "P2", "P3", "P4"]
    assert [r["status"] for r in out] == ["tested", "tested", "absent", "absent"]
    wide = t.pivot_table(index=["prompt", "seed"], columns="setting", values="m", dropna=False)   # float64 reference
    d1, d2 = (wide.a - wide.b).to_numpy(), (wide.a - wide.c).to_numpy()
    assert out[0]["mean"] == pytest.approx(d1.mean(), rel=1e-12) and out[0]["n_clips"] == 10
    assert out[1]["mean"] == pytest.approx(np.nanmean(d2), rel=1e-12) and out[1]["n_clips"] == 9
    assert (out[0]["n_dropped"], out[1]["n_dropped"], out[1]["n_unpaired"]) == (0, 1, 0)
    assert out[0]["low"] > 0.5 and out[1]["low"] < 0 < out[1]["high"]       # a real effect, and none
    # p: the exact sign flip over the 5 prompts (all agree for P1: 2 of 32 sign vectors reach it)
    assert out[0]["p_value"] == pytest.approx(2 / 32) and out[0]["p_bootstrap"] < out[0]["p_value"]
    # Holm over the 4 declared, the two untestable ones as p = 1: the family does not shrink with the data
    np.testing.assert_allclose([out[0]["p_holm"], out[1]["p_holm"]],
                               I.holm([out[0]["p_value"], out[1]["p_value"], 1.0, 1.0])[:2])
    assert {r["holm_m"] for r in out} == {4} and "p_holm" not in out[2] and "p_holm" not in out[3]


def test_declared_comparisons_with_one_prompt_left_are_reported_not_tested():
    t = _clips(np.random.default_rng(4))
    t.loc[(t.setting == "c") & (t.prompt != "p0"), "m"] = np.nan
    (rec,) = I.declared_comparisons(t, [I.Declared("P1", "m", "a", "c")], n_resamples=100)
    assert rec["status"] == "too few prompts" and rec["n_dropped"] == 8 and "p_value" not in rec
    t.loc[(t.setting == "c") & (t.prompt.isin(["p1", "p2"])), "m"] = 1.0     # 3 prompts: the default minimum
    (rec,) = I.declared_comparisons(t, [I.Declared("P1", "m", "a", "c")], n_resamples=100)
    assert rec["status"] == "tested" and rec["n_prompts"] == 3
    (rec,) = I.declared_comparisons(t, [I.Declared("P1", "m", "a", "c")], n_resamples=100, min_prompts=4)
    assert rec["status"] == "too few prompts"
    t["m"] = np.where(t.setting == "c", np.nan, t.m)
    (rec,) = I.declared_comparisons(t, [I.Declared("P1", "m", "a", "c")], n_resamples=100)
    assert rec["status"] == "no finite pair" and rec["n_clips"] == 0


def test_sign_flip_p_is_the_exact_randomisation_test_over_prompts():
    """Against brute force over every sign vector (itertools), clip-weighted; and its floor 2 / 2^P."""
    import itertools

    rng = np.random.default_rng(8)
    prompts = np.repeat(["a", "b", "c", "d", "e"], [1, 2, 3, 1, 2])
    v = rng.normal(0.3, 1.0, size=prompts.size)
    sums = np.array([v[prompts == p].sum() for p in "abcde"])
    obs = abs(sums.sum())
    want = np.mean([abs(np.dot(s, sums)) >= obs * (1 - 1e-12) for s in itertools.product((1, -1), repeat=5)])
    assert I.sign_flip_p(v, prompts) == want
    assert I.sign_flip_p(np.ones(6), np.repeat(["a", "b"], 3)) == 0.5           # 2 prompts: never below 0.5
    assert I.sign_flip_p(np.ones(8), list("abcdefgh")) == pytest.approx(2 / 256)
    mc = I.sign_flip_p(v, prompts, max_exact=3, n_resamples=20000, seed=1)     # Monte Carlo beyond max_exact
    assert abs(mc - want) < 0.02


def test_read_declared_accepts_the_documented_list_and_refuses_anything_else(tmp_path):
    good = tmp_path / "p.json"
    good.write_text('[{"id": "P1", "measure": "psnr", "a": "x", "b": "y"}]')
    assert I.read_declared(str(good)) == [I.Declared("P1", "psnr", "x", "y")]
    for text, why in (('[{"id": "P1", "measure": "psnr", "a": "x"}]', "expected a non-empty JSON list"),
                      ('[]', "expected a non-empty JSON list"), ('{"id": 1}', "expected a non-empty JSON list"),
                      ('[{"id": "P", "measure": "m", "a": "x", "b": "y"}, {"id": "P", "measure": "m", "a": "x", '
                       '"b": "z"}]', "not unique"), ("[{", "cannot read")):
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(LatentProbeError, match=why):
            I.read_declared(str(bad))


def test_cluster_bootstrap_columns_is_the_recipe_per_column_with_nan_left_out():
    rng = np.random.default_rng(5)
    prompts = np.repeat(["a", "b", "c", "d"], [2, 3, 1, 2])
    table = rng.normal(size=(8, 3)) + np.arange(8)[:, None]
    table[1, 2] = table[5, 0] = np.nan
    lo, hi = I.cluster_bootstrap_columns(table, prompts, n_resamples=400, seed=9)
    labels = np.unique(prompts)
    draw = np.random.default_rng(9).integers(0, 4, size=(400, 4))
    means = np.array([np.nanmean(np.concatenate([table[prompts == labels[i]] for i in d]), axis=0) for d in draw])
    np.testing.assert_allclose(lo, np.nanquantile(means, 0.025, axis=0), rtol=1e-12)
    np.testing.assert_allclose(hi, np.nanquantile(means, 0.975, axis=0), rtol=1e-12)
    ci = I.cluster_bootstrap(table[:, 1], prompts, n_resamples=400, seed=9)      # one column: the same numbers
    assert (ci.low, ci.high) == pytest.approx((lo[1], hi[1]), rel=1e-12)


def test_declared_comparisons_with_one_key_pair_on_it():
    """keys=("prompt",): the index holds scalars, not tuples; the comparison is still tested on every prompt."""
    t = _clips(np.random.default_rng(6))
    t = t[t.seed == 0]
    (rec,) = I.declared_comparisons(t, [I.Declared("P1", "m", "a", "b")], keys=("prompt",), n_resamples=200)
    wide = t.pivot_table(index="prompt", columns="setting", values="m")
    assert rec["status"] == "tested" and rec["n_clips"] == 5
    assert rec["mean"] == pytest.approx((wide.a - wide.b).mean(), rel=1e-12)


def test_declared_comparisons_refuse_a_clip_twice_in_one_line():
    t = _clips(np.random.default_rng(7))
    t = pd.concat([t, t[t.setting == "a"].head(1)])
    with pytest.raises(LatentProbeError, match=r"declared comparison P1: setting 'a' has a clip twice"):
        I.declared_comparisons(t, [I.Declared("P1", "m", "a", "b")], n_resamples=100)


def test_read_declared_refuses_json_nested_too_deep(tmp_path):
    bad = tmp_path / "deep.json"
    bad.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(LatentProbeError, match="cannot read the declared comparisons"):
        I.read_declared(str(bad))
