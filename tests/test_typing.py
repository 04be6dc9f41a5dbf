"""A README-style user script type-checks against the package under ``mypy --strict``: mypy finds latent_probe
(py.typed), ``run.metrics("x0")`` is ``AdjacentFrameMetrics`` and ``run.metrics.summary(...)`` a ``Summary``, not
``Any``; the spellings once promoted onto Run (``run.summary``) and typos are type errors. Skipped when mypy is
missing (the test extra installs it)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import latent_probe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(latent_probe.__file__)))

USER_SCRIPT = '''
from latent_probe import open_run

run = open_run("run.h5")
m = run.metrics("x0")
reveal_type(m)
reveal_type(m.l2_mean)
bad: str = run.metrics("x0")
s = run.metrics.summary("x0", phases="original")
reveal_type(s)
reveal_type(s.to_text())
reveal_type(run.metrics.step_change("pred"))
reveal_type(run.metrics.phases("thirds"))
reveal_type(run.metrics.eps_gap())
reveal_type(run.metrics)
run.summary("x0")
run.metrics.sumary("x0")
'''

TYPED = {  # line: what mypy --strict reveals (numpy's ndarray leaves its shape and dtype open: numpy's own Any)
    6: "latent_probe.metrics.continuity.AdjacentFrameMetrics",
    7: "numpy.ndarray[tuple[Any, ...], numpy.dtype[Any]]",
    10: "latent_probe.metrics.phases.Summary",
    11: "str",
    12: "latent_probe.metrics.continuity.StepChange",
    13: "list[latent_probe.metrics.phases.Phase]",
    14: "numpy.ndarray[tuple[Any, ...], numpy.dtype[Any]] | None",
    15: "latent_probe.metrics.run_metrics.RunMetrics",
}


@pytest.mark.slow
def test_mypy_sees_the_package_and_types_run_metrics(tmp_path):
    pytest.importorskip("mypy")
    (tmp_path / "user.py").write_text(USER_SCRIPT)
    env = dict(os.environ, MYPYPATH=ROOT)  # what `pip install -e . --config-settings editable_mode=strict` exposes
    done = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-error-summary",
                           "--cache-dir", str(tmp_path / "cache"), "user.py"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = done.stdout
    assert 'Revealed type is "latent_probe.metrics.continuity.AdjacentFrameMetrics"' in out, out
    # the typed result is checked: assigning it to a str is an error (with Any it would pass silently)
    assert 'user.py:8: error: Incompatible types in assignment (expression has type "AdjacentFrameMetrics"' in out, out
    assert "Cannot find implementation or library stub" not in out and "import-untyped" not in out, out
    for line, typ in TYPED.items():
        assert f'user.py:{line}: note: Revealed type is "{typ}"' in out, out
    # the old spelling and a typo are found by mypy, not at run time (Run's deprecation __getattr__ is hidden from it)
    assert 'user.py:16: error: "Run" has no attribute "summary"' in out, out
    assert 'user.py:17: error: "RunMetrics" has no attribute "sumary"' in out, out
    errors = [ln for ln in out.splitlines() if ": error:" in ln]
    assert [ln.split(":")[1] for ln in errors] == ["8", "16", "17"], out  # strict finds nothing else in the script
