"""Latent layouts: any einops-named layout → a contiguous ``[N, R, F, L]`` view the reductions read.

N: every batch axis (a leading step axis included), F: frames, R × L: one frame's values split at the
frame axis (R the frame axes before ``f`` in memory, L those after), so one frame is ``y[n, :, f, :]``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from einops import rearrange

__all__ = ["DEFAULT_FRAME_AXES", "FLOAT_TYPES", "CanonicalLatent", "as_tensor", "canonicalize"]

#: Axis names that make up one frame unless ``frame_axes=`` says otherwise.
DEFAULT_FRAME_AXES: tuple[str, ...] = ("c", "h", "w")
FLOAT_TYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class CanonicalLatent(NamedTuple):
    """A latent rearranged (a view whenever possible) to ``[N, R, F, L]``.

    ``R`` and ``L`` are the frame axes that precede / follow ``f`` in memory,
    so one frame is the ``R x L`` slab ``y[n, :, f, :]`` and ``D = R * L``.
    ``batch_shape`` are the sizes of the axes flattened into ``N``.
    """

    y: torch.Tensor
    batch_shape: tuple[int, ...]


def as_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Zero-copy conversion of a numpy array (memmaps included) to a tensor."""
    if isinstance(x, torch.Tensor):
        return x
    arr = np.asarray(x)
    if not arr.flags.writeable:
        # torch.from_numpy warns on read-only arrays; nothing here writes into it.
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(arr)
    return torch.from_numpy(arr)


@functools.lru_cache(maxsize=256)
def _parse_layout(
    layout: str, ndim: int, frame_axes: tuple[str, ...], time_axis: str
) -> tuple[str, tuple[int, ...]]:
    """Return (einops pattern to [N, R, F, L], positions of batch axes)."""
    names = layout.split()
    if "(" in layout or ")" in layout:
        raise ValueError(f"layout {layout!r}: use plain axis names, no groups")
    if names.count(time_axis) != 1:
        raise ValueError(f"layout {layout!r} must name the frame axis {time_axis!r} once")
    if len(set(n for n in names if n != "...")) != len([n for n in names if n != "..."]):
        raise ValueError(f"layout {layout!r} repeats an axis name")
    if "..." not in names:
        if ndim > len(names):
            names = ["..."] + names  # extra leading axes (e.g. steps) are batch
        elif ndim < len(names):
            raise ValueError(f"layout {layout!r} has {len(names)} axes, tensor has {ndim}")
    elif ndim < len(names) - 1:
        raise ValueError(f"layout {layout!r} needs at least {len(names) - 1} axes, tensor has {ndim}")
    fpos = names.index(time_axis)
    frame = [n for n in names if n in frame_axes]
    if not frame:
        raise ValueError(f"layout {layout!r} contains none of the frame axes {frame_axes}")
    batch = [n for n in names if n != time_axis and n not in frame_axes]
    before = [n for n in names[:fpos] if n in frame_axes]
    after = [n for n in names[fpos + 1 :] if n in frame_axes]
    pattern = (
        f"{' '.join(names)} -> ({' '.join(batch)}) ({' '.join(before)}) "
        f"{time_axis} ({' '.join(after)})"
    )
    # positions of batch axes in the input, to recover batch_shape
    n_ell = ndim - (len(names) - 1) if "..." in names else 0
    pos: list[int] = []
    i = 0
    for n in names:
        if n == "...":
            if n in batch:
                pos.extend(range(i, i + n_ell))
            i += n_ell
        else:
            if n in batch:
                pos.append(i)
            i += 1
    return pattern, tuple(pos)


def canonicalize(
    x: torch.Tensor | np.ndarray,
    layout: str = "b c f h w",
    *,
    frame_axes: Sequence[str] = DEFAULT_FRAME_AXES,
    time_axis: str = "f",
) -> CanonicalLatent:
    """Rearrange ``x`` to a contiguous ``[N, R, F, L]`` tensor (a view for the usual layouts).

    ``layout`` is an einops-style list of axis names.  ``time_axis`` ("f") is
    the frame axis, ``frame_axes`` (default c, h, w) make up one frame, every
    other axis (and any extra leading axes, e.g. a step axis) is a batch axis.
    """
    t = as_tensor(x)
    if t.dtype not in FLOAT_TYPES:
        raise TypeError(f"expected a floating latent, got {t.dtype}")
    pattern, pos = _parse_layout(layout, t.ndim, tuple(frame_axes), time_axis)
    y = rearrange(t, pattern)
    if not y.is_contiguous():
        y = y.contiguous()
    return CanonicalLatent(y, tuple(t.shape[p] for p in pos))

