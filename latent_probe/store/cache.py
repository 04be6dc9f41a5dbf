"""``run.cache``: results derived from a run, kept with it — in memory, and under ``/metrics`` in a writable file.

An entry is found by its key (``"x0/adjacent"``) and the version of the definition that computed it, and is
believed only when it still belongs to its data: the file's entry records a fingerprint of the run's data (the
checksums of every stored latent row, and the metric sums computed during the run) and the checksum of its own
arrays. A different or missing fingerprint, arrays that do not match their checksum, another version or another
number of steps: a miss, never an answer. The store knows no metric: callers say what a key means.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from . import schema
from .checksum import fingerprint

if TYPE_CHECKING:  # pragma: no cover
    from .reader import Run

__all__ = ["RunCache"]


class RunCache:
    """Get and put dicts of arrays by key and version (see the module docstring)."""

    def __init__(self, run: "Run") -> None:
        self._run = run
        self.memory: dict[str, dict[str, np.ndarray]] = {}
        self._source: int | None | bool = False  # not computed yet

    # ------------------------------------------------------------------ what the entries were computed from
    def source_fingerprint(self) -> int | None:
        """A checksum over the run's data (its latent rows' checksums and its metric sums), or None when the run has
        data without checksums (a file from before them): then nothing cached in the file can be believed."""
        if self._source is False:
            run = self._run
            parts: list[np.ndarray] = [np.asarray([run.num_steps, len(run.latent_steps)], dtype=np.int64)]
            for name in sorted(run.quantities):
                sums = run.checksums(name)
                if sums is None:
                    self._source = None
                    return None
                parts.append(sums)
            for space in sorted(run.online_spaces):
                for _, arr in sorted(run.online_sums(space).items()):
                    parts.append(np.asarray(arr, dtype=np.float64))
            self._source = fingerprint(parts)
        return self._source  # type: ignore[return-value]

    # ------------------------------------------------------------------ entries
    def _group(self, key: str) -> Any:
        """The file's group of ``key``; links are never followed (a crafted file's cache is a miss, not a read of
        another file)."""
        node: Any = self._run.file
        for part in f"{schema.METRICS_GROUP}/{key}".split("/"):
            if not isinstance(node, h5py.Group) or not isinstance(node.get(part, getlink=True), h5py.HardLink):
                return None
            node = node[part]
        return node if isinstance(node, h5py.Group) else None

    def _current(self, g: Any, version: int) -> bool:
        source = self.source_fingerprint()
        if source is None:
            return False
        try:
            return (int(g.attrs.get("version", -1)) == version and int(g.attrs.get("num_steps", -1)) ==
                    self._run.num_steps and int(g.attrs.get("source_checksum", -1)) == source)
        except (TypeError, ValueError, OSError):
            return False

    def has(self, key: str, version: int) -> bool:
        """An entry for ``key`` at ``version`` is in memory, or in the file, current and intact."""
        return self.get(key, version) is not None

    def get(self, key: str, version: int) -> dict[str, np.ndarray] | None:
        """The arrays cached under ``key`` (one row a step each), or None: a miss unless current and intact."""
        if key in self.memory:
            return self.memory[key]
        g = self._group(key)
        if g is None or not self._current(g, version):
            return None
        arrays = self._run.read_arrays(g.name, rows=self._run.num_steps)
        if not arrays:
            return None
        try:
            own = int(g.attrs.get("checksum", -1))
        except (TypeError, ValueError, OSError):
            return None
        if own != fingerprint([arrays[k] for k in sorted(arrays)]):
            return None  # the numbers were changed after they were cached
        self.memory[key] = arrays
        return arrays

    def put(self, key: str, version: int, arrays: dict[str, np.ndarray]) -> None:
        """Keep ``arrays`` in memory, and in the file when it is writable (not while it is being recorded)."""
        self.memory[key] = arrays
        run = self._run
        try:
            writable = run.file.mode == "r+" and not run.file.swmr_mode
        except Exception:  # pragma: no cover
            writable = False
        source = self.source_fingerprint()
        if not writable or source is None:
            return
        path = f"{schema.METRICS_GROUP}/{key}"
        if path in run.file:
            del run.file[path]
        g = run.file.require_group(path)
        for k, v in arrays.items():
            g.create_dataset(k, data=v)
        g.attrs["version"] = version
        g.attrs["num_steps"] = run.num_steps
        g.attrs["source_checksum"] = np.int64(source)
        g.attrs["checksum"] = np.int64(fingerprint([np.asarray(arrays[k]) for k in sorted(arrays)]))
        run.file.flush()
