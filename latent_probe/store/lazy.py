"""Lazy views of a run's stored latents: numpy-style indexing that reads only the rows (and the parts of them)
it is asked for, each whole row read checked against the checksum written with it (``run.verify``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

if TYPE_CHECKING:
    from .reader import Run

__all__ = ["RowView", "LatentView"]


class RowView:
    """Numpy-style indexing over the rows of a lazy [K, ...] view: an int, a slice, an index or boolean array, then
    any further axes. Subclasses read one row (``_one``) and a selection of rows (``_some``)."""

    derived = False

    def __len__(self) -> int:
        return self._rows

    def _one(self, i: int, rest: tuple) -> np.ndarray:
        raise NotImplementedError

    def _some(self, rows: slice | np.ndarray, rest: tuple) -> np.ndarray:
        raise NotImplementedError

    def __getitem__(self, key: Any) -> np.ndarray:
        n = len(self)
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        if isinstance(first, (int, np.integer)):
            i = int(first) + n if first < 0 else int(first)
            if not 0 <= i < n:
                raise IndexError(f"row {first} out of range for {n} stored steps")
            return self._one(i, rest)
        if isinstance(first, slice):
            return self._some(slice(*first.indices(n)), rest)
        idx = np.asarray(first)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = np.where(idx < 0, idx + n, idx)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"row index out of range for {n} stored steps")
        return self._some(idx, rest)

    def __iter__(self) -> Iterator[np.ndarray]:
        """One row at a time: [B, C, F, H, W] each; memory stays at one step."""
        for i in range(len(self)):
            yield self._one(i, ())

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = self[:]
        return arr if dtype is None else arr.astype(dtype)

    def numpy(self) -> np.ndarray:
        return self[:]


class LatentView(RowView):
    """Lazy [K, B, C, F, H, W] view of one stored quantity; index it like a numpy array. Row k is step
    ``view.steps[k]``: K = S and row s = step s unless the run stored latents for chosen steps only
    (``latent_steps=``)."""

    def __init__(self, run: "Run", name: str) -> None:
        self._run = run
        self.name = name
        self._ds = run._latents[name]

    @property
    def _rows(self) -> int:
        return self._run._k

    @property
    def steps(self) -> np.ndarray:
        """[K] the step (0-based) of each row."""
        return self._run.latent_steps

    @property
    def shape(self) -> tuple[int, ...]:
        return (self._rows, *self._ds.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self._ds.dtype

    @property
    def step_nbytes(self) -> int:
        return int(np.prod(self._ds.shape[1:])) * self._ds.dtype.itemsize

    def _one(self, i: int, rest: tuple) -> np.ndarray:
        data = self._ds[(i, *rest)]  # h5py reads only what ``rest`` selects
        if not rest:  # a whole row was read: it is checked against the checksum written with it
            self._run._verify(self.name, np.asarray([i]), data[None])
        return data

    def _some(self, rows: slice | np.ndarray, rest: tuple) -> np.ndarray:
        if isinstance(rows, slice):
            data = self._ds[(rows, *rest)]
            if not rest:
                self._run._verify(self.name, np.arange(rows.start, rows.stop, rows.step), data)
            return data
        order = np.argsort(rows)  # h5py takes increasing indices
        data = self._ds[(np.sort(rows).tolist(), *rest)] if rows.size else self._ds[(slice(0, 0), *rest)]
        if not rest:
            self._run._verify(self.name, np.sort(rows), data)
        return data[np.argsort(order)]

    def __repr__(self) -> str:
        return f"LatentView({self.name!r}, shape={self.shape}, dtype={self.dtype})"
