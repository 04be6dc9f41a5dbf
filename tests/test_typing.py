"""A README-style user script type-checks against the package: mypy finds latent_probe (py.typed) and
``run.metrics("x0")`` is ``AdjacentFrameMetrics``, not ``Any``. Skipped when mypy is missing (the test extra
installs it)."""

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
'''


@pytest.mark.slow
def test_mypy_sees_the_package_and_types_run_metrics(tmp_path):
    pytest.importorskip("mypy")
    (tmp_path / "user.py").write_text(USER_SCRIPT)
    env = dict(os.environ, MYPYPATH=ROOT)  # what `pip install -e . --config-settings editable_mode=strict` exposes
    done = subprocess.run([sys.executable, "-m", "mypy", "--follow-imports=silent", "--no-error-summary",
                           "--cache-dir", str(tmp_path / "cache"), "user.py"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = done.stdout
    assert 'Revealed type is "latent_probe.metrics.continuity.AdjacentFrameMetrics"' in out, out
    # the typed result is checked: assigning it to a str is an error (with Any it would pass silently)
    assert 'user.py:8: error: Incompatible types in assignment (expression has type "AdjacentFrameMetrics"' in out, out
    assert "Cannot find implementation or library stub" not in out and "import-untyped" not in out, out
