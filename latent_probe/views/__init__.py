"""Views of recorded runs: plotly dashboards, text/JSON/CSV reports, static images.

Modules: series (what a view needs, read through the Run API) → figures (plotly figures) → page (the HTML
page) → dashboard (``build_figures``, ``write_dashboard``); report (table, JSON, CSV, .npz); static (PNG/SVG);
safe_text (escaping for terminals and CSV); progress. The command line and ``analyze`` are in
``latent_probe.app``. Imported lazily: ``import latent_probe`` does not load plotly.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_figures", "write_dashboard", "collect_series"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import dashboard

        return getattr(dashboard, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
