"""Static images (PNG / SVG) of the figures: kaleido with a Chromium-based browser, else matplotlib.

Kaleido 1.x drives a local Chrome/Chromium (``/usr/bin/chromium`` on PATH, or ``BROWSER_PATH``); it never
downloads one here. When neither kaleido+browser nor matplotlib can write the image, a
:class:`StaticExportError` with a one-line reason is raised and the caller prints it.
"""

from __future__ import annotations

import os
import textwrap
from typing import Sequence

from ..errors import LatentProbeError
from .progress import progress
from .series import RunSeries

__all__ = ["StaticExportError", "export_figures", "write_continuity_image", "kaleido_available"]

HINT = "install kaleido (pip install 'latent-probe[views]') and Chromium (apt-get install chromium)"


class StaticExportError(LatentProbeError, RuntimeError):
    """No way to write a static image here; the message is one line (a tool's multi-line error is joined)."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


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
    kinds = sorted({os.path.splitext(p)[1].lstrip(".").upper() or "image" for p in paths})
    try:
        for fig, path in progress(list(zip(figures, paths)), desc="exporting " + "/".join(kinds),
                                  total=len(paths)):
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

    from .figures import STEP_TITLE, phase_label

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax_l2, ax_cos) = plt.subplots(1, 2, figsize=(13, 4.8), dpi=100)
    fills = ("#fde3df", "#fff3d6", "#d9f5ec", "#e3e5fe")
    first = series[0]
    for k, (name, start, stop) in enumerate(p for p in first.phases if p[2] > p[1]):
        for ax in (ax_l2, ax_cos):
            ax.axvspan(start - 0.5, stop - 0.5, color=fills[k % len(fills)], zorder=0, lw=0)  # steps 0-based
            ax.text((start + stop - 1) / 2, 1.01, phase_label(name, start, stop, html=False),
                    transform=ax.get_xaxis_transform(), fontsize=7, ha="center", va="bottom", color="#555")
    for i, s in enumerate(series):
        ax_l2.plot(s.steps, s.l2_mean, "o-", ms=3, label=s.label, color=f"C{i}")
        ax_cos.plot(s.steps, s.cos_mean, "o-", ms=3, label=s.label, color=f"C{i}")
        for step in s.switches:
            for ax in (ax_l2, ax_cos):
                ax.axvline(step - 0.5, ls="--", lw=1, color=f"C{i}",
                           label="expert switch" + (f" ({s.label})" if len(series) > 1 else "")
                           if ax is ax_cos and step == s.switches[0] else None)
    if first.space == "x_t":  # the noise floor is defined on x_t: never drawn over another space's cosine
        ax_cos.plot(first.steps, first.noise_floor, ":", color="#888", label="noise floor")
    ax_l2.set_title("Normalized L2 distance (adjacent frames)", pad=14)
    ax_cos.set_title("Cosine similarity (adjacent frames)", pad=14)
    ax_l2.set(xlabel=STEP_TITLE, ylabel="normalized L2 distance")
    ax_cos.set(xlabel=STEP_TITLE, ylabel="adjacent-frame cosine")
    for ax in (ax_l2, ax_cos):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_cos.legend(fontsize=8)
    note = " (SIMULATED data)" if any(s.simulated for s in series) else ""
    phase_notes = "\n".join(textwrap.fill(s.phase_note, 160) for s in series if s.phase_note)
    fig.suptitle(f"Temporal continuity of {first.space}{note}" + (f"\n{phase_notes}" if phase_notes else ""),
                 fontsize=10 if phase_notes else None)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

