"""integrated_error: the offline error integrated over the truncated steps in σ (hand-worked case)."""

from __future__ import annotations

import pytest

from latent_probe.metrics.feasibility import integrated_error


def test_integrated_error_weighs_each_truncated_step_by_its_sigma_step():
    err, sig = [0.5, 0.2, 0.1, 0.4], [1.0, 0.8, 0.5, 0.2]
    # steps 0, 1 truncated: 0.5·(1.0 − 0.8) + 0.2·(0.8 − 0.5) = 0.16
    assert integrated_error(err, sig, 2) == pytest.approx(0.16, rel=1e-12)
    assert integrated_error(err, sig, 0) == 0.0
    # all four: the last step runs to σ = 0 (appended)
    assert integrated_error(err, sig, 4) == pytest.approx(0.16 + 0.1 * 0.3 + 0.4 * 0.2, rel=1e-12)
    assert integrated_error(err, [*sig, 0.0], 4) == integrated_error(err, sig, 4)
    # grows with until (the mean over truncated steps need not)
    vals = [integrated_error(err, sig, u) for u in range(5)]
    assert vals == sorted(vals)


def test_integrated_error_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="S errors"):
        integrated_error([0.1, 0.2], [1.0, 0.5, 0.2, 0.0], 1)
    with pytest.raises(ValueError, match="until"):
        integrated_error([0.1, 0.2], [1.0, 0.5], 3)
