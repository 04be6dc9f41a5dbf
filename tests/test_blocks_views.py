"""Block views and the calibration skip map (issue 21 items 3–4): built from arrays, checked against hand counts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from latent_probe.metrics.blocks import block_metrics_from_sums, skip_map
from latent_probe.views.blocks import block_heatmaps, reach_curves, step_block_tables


def test_skip_map_counts_cells_below_threshold_in_enough_runs():
    c = np.full((4, 5, 3), 0.5)  # runs, steps, blocks
    c[:, 3, 2] = 0.01  # every run: skippable
    c[:3, 4, 0] = 0.01  # 3 of 4 runs: below a 0.9 quantile, inside a 0.75 one
    c[:, 0] = np.nan  # the first step never qualifies
    experts = ["high", "high", "low", "low", "low"]
    m = skip_map(c, experts, [0, 4, 8], threshold=0.05)
    assert m["experts"]["high"] == {"steps": [0, 1], "cells": [], "share": 0.0}
    assert m["experts"]["low"]["cells"] == [[3, 8]]
    assert skip_map(c, experts, [0, 4, 8], threshold=0.05, quantile=0.75)["experts"]["low"]["cells"] == [[3, 8], [4, 0]]
    json.dumps(m)  # JSON-ready
    with pytest.raises(ValueError, match="runs, 5 steps, 2 blocks"):
        skip_map(c, experts, [0, 4], threshold=0.05)
    with pytest.raises(ValueError, match="threshold"):
        skip_map(c, experts, [0, 4, 8], threshold=0.0)


def test_metrics_from_sums_and_tables_follow_the_formulas():
    rng = np.random.default_rng(0)
    S, B, K, F = 3, 1, 2, 4
    sq = rng.uniform(1, 2, (S, 2, B, K, F))
    dot = rng.uniform(-1, 1, (S, 2, B, K, F - 1))
    dd = sq[..., :-1] + sq[..., 1:] - 2 * dot
    upd = rng.uniform(0.1, 1, (S, 2, B, K, 2))
    change = rng.uniform(0.1, 1, (S, 2, B, K, 2))
    m = block_metrics_from_sums(dict(sq=sq, dot=dot, dd=dd, upd=upd, change=change))
    np.testing.assert_allclose(m["cos"], dot / np.sqrt(sq[..., :-1] * sq[..., 1:]), rtol=1e-12)
    np.testing.assert_allclose(m["update"], np.sqrt(upd[..., 0] / upd[..., 1]), rtol=1e-12)
    np.testing.assert_allclose(m["change"], change[..., 0] / change[..., 1], rtol=1e-12)
    t = step_block_tables(m, branch=1)
    np.testing.assert_allclose(t["continuity"], m["cos"][:, 1].mean(axis=(1, 3)), rtol=1e-12)
    assert t["update"].shape == (S, K)


def test_heatmaps_mark_the_expert_switch_and_reach_curves_draw_each_step():
    tables = {"continuity": np.zeros((4, 3)), "update": np.ones((4, 3))}
    fig = block_heatmaps(tables, [0, 2, 4], [1.0, 0.9, 0.5, 0.2], ["high", "high", "low", "low"])
    assert len(fig.data) == 2 and len(fig.layout.shapes) == 2
    assert {s.y0 for s in fig.layout.shapes} == {1.5}  # between step 1 (high) and step 2 (low)
    assert "expert switch" in fig.layout.title.text
    one = block_heatmaps(tables, [0, 2, 4], [1.0, 0.9, 0.5, 0.2], ["m"] * 4)
    assert not one.layout.shapes
    reach = np.full((4, 5), 0.2)
    fig = reach_curves(reach, [1.0, 0.9, 0.5, 0.2], [0, 3], floor=np.full(5, 0.2))
    assert [t.name for t in fig.data] == ["step 0, σ=1.00", "step 3, σ=0.20", "uniform attention"]
