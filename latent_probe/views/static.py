"""Static images (PNG / SVG) of the figures: kaleido with a Chromium-based browser, else matplotlib.

Kaleido 1.x drives a local Chrome/Chromium (``/usr/bin/chromium`` on PATH, or ``BROWSER_PATH``); it never
downloads one here. When neither kaleido+browser nor matplotlib can write the image, a
:class:`StaticExportError` with a one-line reason is raised and the caller prints it.
"""

from __future__ import annotations

import os
from typing import Sequence

from .series import RunSeries

__all__ = ["StaticExportError", "export_figures", "write_continuity_image", "kaleido_available"]

HINT = "install kaleido (pip install 'latent-probe[views]') and Chromium (apt-get install chromium)"


class StaticExportError(RuntimeError):
    """No way to write a static image here; the message is one line."""


def kaleido_available() -> bool:
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return False
    return True


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def export_figures(figures: Sequence[object], paths: Sequence[str | os.PathLike], width: int = 1400,
                   scale: float = 1.0) -> list[str]:
    """Write plotly figures with kaleido; the format follows each path's extension (.png, .svg, .pdf)."""
    if not kaleido_available():
        raise StaticExportError(f"static export needs kaleido and a Chromium-based browser: {HINT}")
    import plotly.io as pio

    paths = [os.fspath(p) for p in paths]
    try:
        for fig, path in zip(figures, paths):
            height = getattr(getattr(fig, "layout", None), "height", None) or 500
            pio.write_image(fig, path, width=width, height=height, scale=scale)
    except Exception as exc:  # kaleido raises browser, timeout and render errors of several types
        raise StaticExportError(f"kaleido could not export ({_first_line(exc)}); {HINT}") from exc
    return paths


def write_continuity_image(series: Sequence[RunSeries], path: str | os.PathLike, figure: object = None) -> str:
    """The two-subplot continuity figure (normalised L2 and cosine against step) as PNG/SVG.

    Uses kaleido on ``figure`` (a plotly figure) when it can, else draws it with matplotlib.
    """
    path = os.fspath(path)
    reasons = []
    if figure is not None:
        try:
            return export_figures([figure], [path], width=1300)[0]
        except StaticExportError as exc:
            reasons.append(str(exc))
    try:
        return _matplotlib_continuity(series, path)
    except ImportError:
        reasons.append("matplotlib is not installed")
    raise StaticExportError(f"no static image written to {path}: " + "; ".join(reasons or [HINT]))


def _matplotlib_continuity(series: Sequence[RunSeries], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, (ax_l2, ax_cos) = plt.subplots(1, 2, figsize=(13, 4.8), dpi=100)
    fills = ("#fde3df", "#fff3d6", "#d9f5ec", "#e3e5fe")
    first = series[0]
    for k, (name, start, stop) in enumerate(first.phases):
        for ax in (ax_l2, ax_cos):
            ax.axvspan(start + 0.5, stop + 0.5, color=fills[k % len(fills)], zorder=0, lw=0)
        ax_l2.text(start + 0.6, 1.0, f"{name} {start + 1}–{stop}", transform=ax_l2.get_xaxis_transform(),
                   fontsize=7, va="top", color="#666")
    for i, s in enumerate(series):
        ax_l2.plot(s.steps, s.l2_mean, "o-", ms=3, label=s.label, color=f"C{i}")
        ax_cos.plot(s.steps, s.cos_mean, "o-", ms=3, label=s.label, color=f"C{i}")
        for step in s.switches:
            for ax in (ax_l2, ax_cos):
                ax.axvline(step - 0.5, ls="--", lw=1, color=f"C{i}")
    ax_cos.plot(first.steps, first.noise_floor, ":", color="#888", label="noise floor")
    ax_l2.set(title="Normalized L2 distance (adjacent frames)", xlabel="denoising step", ylabel="normalized L2")
    ax_cos.set(title="Cosine similarity (adjacent frames)", xlabel="denoising step", ylabel="cosine")
    for ax in (ax_l2, ax_cos):
        ax.grid(alpha=0.3)
    ax_cos.legend(fontsize=8)
    note = " (SIMULATED data)" if any(s.simulated for s in series) else ""
    fig.suptitle(f"Temporal continuity of {first.space}{note}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

