"""Generated video frames as a plotly animation and a static frame strip (no model is imported here).

``video_figure({"baseline": frames, "truncated": frames})`` turns uint8 RGB frames [F, H, W, 3] (numpy or
CPU torch) into one figure: a column per video, titled with its label, a slider over the frames and a
play / pause button. Each frame is embedded once as a PNG data URI (``go.Image(source=...)``), so a
128×128 clip of 21 frames costs tens of kilobytes in the page, not megabytes of JSON numbers.

``frame_strip`` / ``strip_png`` / ``write_strip_png`` give a static strip of evenly spaced frames (one row
per video), written as PNG by a small encoder here (zlib): no kaleido or browser needed; the file written by
``write_strip_png`` names its rows and frames (drawn with Pillow where installed).
``video_section`` is the dashboard's section: the animated figure plus the strips as ``<img>`` elements,
which readers without JavaScript still see. Labels are HTML-escaped before they reach the page or plotly.
"""

from __future__ import annotations

import base64
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .figures import esc

__all__ = ["as_frames", "png_bytes", "png_data_uri", "strip_indices", "frame_strip", "strip_image", "strip_png",
           "labelled_strip_image",
           "write_strip_png", "video_figure", "is_video_figure", "VideoSection", "video_section",
           "STRIP_FRAMES"]

STRIP_FRAMES = 7        # frames per video in the static strip
GAP = 4                 # white pixels between frames and rows of the strip
FRAME_MS = 150          # playback: milliseconds per frame
VIDEO_META = "latent_probe.video"   # layout.meta of a video figure (the dashboard places it at the top)


def as_frames(frames: Any, label: str = "video") -> np.ndarray:
    """``frames`` as a C-contiguous uint8 array [F, H, W, 3]; ValueError for any other shape or dtype."""
    if hasattr(frames, "detach"):  # a torch tensor (CPU): no torch import here
        frames = frames.detach().cpu().numpy()
    arr = np.asarray(frames)
    if arr.dtype != np.uint8:
        raise ValueError(f"{label}: video frames must be uint8 RGB [F, H, W, 3], got dtype {arr.dtype}")
    if arr.ndim != 4 or arr.shape[-1] != 3 or min(arr.shape[:3]) < 1:
        raise ValueError(f"{label}: video frames must be uint8 RGB [F, H, W, 3], got shape {list(arr.shape)}")
    return np.ascontiguousarray(arr)


def _videos(videos: Mapping[str, Any]) -> dict[str, np.ndarray]:
    if not videos:
        raise ValueError("no video given")
    return {str(label): as_frames(frames, str(label)) for label, frames in videos.items()}


def png_bytes(image: np.ndarray, level: int = 9) -> bytes:
    """A PNG file (8-bit RGB, filter 0 on every row) of a uint8 image [H, W, 3]."""
    img = np.ascontiguousarray(image, dtype=np.uint8)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"png_bytes takes [H, W, 3], got {list(img.shape)}")
    h, w, _ = img.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), img.reshape(h, w * 3)], axis=1).tobytes()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8 bits, colour type 2 (RGB), no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, level))
            + chunk(b"IEND", b""))


def png_data_uri(image: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def strip_indices(num_frames: int, n: int = STRIP_FRAMES) -> list[int]:
    """``n`` evenly spaced frame indices from the first to the last (all frames when there are fewer)."""
    if num_frames <= n:
        return list(range(num_frames))
    return sorted({int(round(i * (num_frames - 1) / (n - 1))) for i in range(n)})


def frame_strip(frames: Any, n: int = STRIP_FRAMES, gap: int = GAP) -> np.ndarray:
    """One row of ``n`` evenly spaced frames of ``frames`` [F, H, W, 3], separated by white gaps: [H, W', 3]."""
    arr = as_frames(frames)
    picked = [arr[i] for i in strip_indices(arr.shape[0], n)]
    h = arr.shape[1]
    sep = np.full((h, gap, 3), 255, np.uint8)
    parts: list[np.ndarray] = []
    for k, img in enumerate(picked):
        parts.extend([sep, img] if k else [img])
    return np.concatenate(parts, axis=1)


def strip_image(videos: Mapping[str, Any], n: int = STRIP_FRAMES, gap: int = GAP) -> np.ndarray:
    """uint8 RGB [H', W', 3]: the strips of all ``videos``, one row per video in the given order (white
    padding to align)."""
    rows = [frame_strip(v, n, gap) for v in _videos(videos).values()]
    width = max(r.shape[1] for r in rows)
    padded = []
    for k, r in enumerate(rows):
        if r.shape[1] < width:
            r = np.concatenate([r, np.full((r.shape[0], width - r.shape[1], 3), 255, np.uint8)], axis=1)
        padded.extend([np.full((gap, width, 3), 255, np.uint8), r] if k else [r])
    return np.concatenate(padded, axis=0)


def strip_png(videos: Mapping[str, Any], n: int = STRIP_FRAMES, gap: int = GAP) -> bytes:
    """PNG of :func:`strip_image` (the page's ``<img>``: the table around it names the rows)."""
    return png_bytes(strip_image(videos, n, gap))


LABEL_PX = 230   # the labelled strip's left column (run labels)
HEADER_PX = 18   # its top row (video frame numbers)


def labelled_strip_image(videos: Mapping[str, Any], n: int = STRIP_FRAMES, gap: int = GAP) -> np.ndarray | None:
    """:func:`strip_image` with each row's label at its left and the video frame number above each column
    (drawn with Pillow, which matplotlib brings); None when Pillow is missing."""
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        return None
    vids = _videos(videos)
    body = strip_image(vids, n, gap)
    first = next(iter(vids.values()))
    f, h, w = first.shape[0], first.shape[1], first.shape[2]
    img = Image.new("RGB", (LABEL_PX + body.shape[1], HEADER_PX + body.shape[0]), "white")
    img.paste(Image.fromarray(body), (LABEL_PX, HEADER_PX))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    for k, i in enumerate(strip_indices(f, n)):
        draw.text((LABEL_PX + k * (w + gap) + 2, 3), f"frame {i}", fill=(60, 60, 60), font=font)
    for r, label in enumerate(vids):
        words, lines, line = str(label).split(), [], ""
        for word in words:  # wrap to the column
            trial = f"{line} {word}".strip()
            if line and draw.textlength(trial, font=font) > LABEL_PX - 12:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
        top = HEADER_PX + r * (h + gap) + max(0, (h - 14 * len(lines)) // 2)
        for j, text in enumerate(lines):
            draw.text((6, top + 14 * j), text, fill=(20, 20, 20), font=font)
    return np.asarray(img, dtype=np.uint8)


def write_strip_png(videos: Mapping[str, Any], path: str | os.PathLike, n: int = STRIP_FRAMES,
                    labels: bool = True) -> str:
    """Write the strips to ``path`` as PNG (atomically): with ``labels`` each row named at its left and each
    column's video frame number above it (:func:`labelled_strip_image`; unlabelled when Pillow is missing);
    returns the path."""
    path = os.fspath(path)
    image = labelled_strip_image(videos, n) if labels else None
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(png_bytes(image if image is not None else strip_image(videos, n)))
    os.replace(tmp, path)
    return path


def video_figure(videos: Mapping[str, Any], title: str | None = None, frame_ms: int = FRAME_MS,
                 frame_name: str = "frame") -> go.Figure:
    """An animated figure of one or more videos side by side (a column each, titled with its label).

    One plotly animation frame per video frame (the longest video's count; a shorter one holds its last
    frame), a slider over them and play / pause buttons. ``frame_name`` names a frame on the slider.
    """
    vids = _videos(videos)
    labels = list(vids)
    n = len(labels)
    count = max(v.shape[0] for v in vids.values())
    uris = {label: [png_data_uri(f) for f in v] for label, v in vids.items()}

    def source(label: str, f: int) -> str:
        return uris[label][min(f, len(uris[label]) - 1)]

    fig = make_subplots(rows=1, cols=n, subplot_titles=[esc(lb) for lb in labels],
                        horizontal_spacing=0.04 if n > 1 else 0.0)
    for col, label in enumerate(labels, start=1):
        fig.add_trace(go.Image(source=source(label, 0), name=esc(label),
                               hovertemplate=f"{esc(label)}<br>x %{{x}}, y %{{y}}<extra></extra>"),
                      row=1, col=col)
        fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, row=1, col=col)
        fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, autorange="reversed",
                         scaleanchor=f"x{col if col > 1 else ''}", row=1, col=col)
    fig.frames = [go.Frame(name=str(f), data=[go.Image(source=source(label, f)) for label in labels],
                           traces=list(range(n))) for f in range(count)]
    play = dict(frame=dict(duration=frame_ms, redraw=True), fromcurrent=True, transition=dict(duration=0))
    pause = dict(mode="immediate", frame=dict(duration=0, redraw=False), transition=dict(duration=0))
    fig.update_layout(
        title=dict(text=esc(title)) if title else None,
        height=max(300, min(480, 200 + 480 // n)), margin=dict(l=10, r=10, t=70 if title else 40, b=10),
        plot_bgcolor="white", meta=VIDEO_META,
        updatemenus=[dict(type="buttons", direction="left", showactive=False, x=0.0, y=-0.02, xanchor="left",
                          yanchor="top", pad=dict(t=0, r=10),
                          buttons=[dict(label="▶ play", method="animate", args=[None, play]),
                                   dict(label="❚❚ pause", method="animate", args=[[None], pause])])],
        sliders=[dict(active=0, x=0.22, len=0.78, y=-0.02,  # right of the buttons also at 800 px
                      yanchor="top", pad=dict(t=0, b=0),
                      currentvalue=dict(prefix=f"{esc(frame_name)} ", visible=True),
                      steps=[dict(label=str(f), method="animate",
                                  args=[[str(f)], dict(mode="immediate", frame=dict(duration=0, redraw=True),
                                                       transition=dict(duration=0))])
                             for f in range(count)])],
    )
    fig.update_layout(margin=dict(b=90))
    return fig


def is_video_figure(fig: Any) -> bool:
    """Whether ``fig`` was made by :func:`video_figure` (the dashboard puts such figures at the top)."""
    return getattr(getattr(fig, "layout", None), "meta", None) == VIDEO_META


@dataclass
class VideoSection:
    """The dashboard's video section: the animated figure and the static strips (HTML, no JavaScript)."""

    figure: go.Figure | None
    static_html: str
    heading: str = "Generated video"
    note: str = ""   # plain text (the page escapes it)


def video_section(videos: Mapping[str, Any] | None = None, figure: go.Figure | None = None,
                  n: int = STRIP_FRAMES, note: str | None = None,
                  frame_name: str = "frame") -> VideoSection:
    """The section for ``videos`` (or for an already built video ``figure`` alone, without strips)."""
    vids = _videos(videos) if videos else {}
    if figure is None and vids:
        figure = video_figure(vids, frame_name=frame_name)
    rows = []
    for label, frames in vids.items():
        idx = strip_indices(frames.shape[0], n)
        alt = f"{label}: {frame_name}s {', '.join(map(str, idx))} of {frames.shape[0]}"
        rows.append(f'<tr><th>{esc(label)}</th><td><img class="strip" src="{png_data_uri(frame_strip(frames, n))}" '
                    f'alt="{esc(alt)}" title="{esc(alt)}"></td></tr>')
    static = ""
    if rows:
        first = next(iter(vids.values()))
        idx = strip_indices(first.shape[0], n)
        static = (f'<p class="note">At a glance ({esc(frame_name)}s {esc(", ".join(map(str, idx)))}; static '
                  f"images, shown without JavaScript too):</p><table class=\"strips\">{''.join(rows)}</table>")
    if note is None:
        note = (f"Decoded frames of each run's final latent, one picture per {frame_name}; press play or drag "
                "the slider (the videos move together).")
    return VideoSection(figure=figure, static_html=static, note=note)
