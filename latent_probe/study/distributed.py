"""Ranks of a torchrun launch and the little coordination a study needs: one plan from rank 0, one end barrier.

Coordination goes through the launcher's key-value store (``torch.distributed.rendezvous("env://")``: the
TCPStore that ``init_process_group`` would use), not through a process group: ``LatentProbe`` records only
on rank 0 of an initialised process group, so data-parallel ranks, which each write their own files, must not
have one. A rank that fails posts it to the store, and every rank beats a heartbeat counter; a rank waiting at
the end barrier stops with one line as soon as another rank has failed or has been silent for ``dead_after_s``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .jobs import StudyError

__all__ = ["Ranks", "Coordinator", "coordinator"]

_calls = 0  # run_study calls in this process: every rank makes the same calls, so keys match across ranks


@dataclass(frozen=True)
class Ranks:
    """``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` of this process (0, 1, 0 outside torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Ranks":
        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local = int(os.environ.get("LOCAL_RANK", "0"))
        except ValueError:
            raise StudyError("RANK / WORLD_SIZE / LOCAL_RANK are not integers") from None
        if world < 1 or not 0 <= rank < world or local < 0:
            raise StudyError(f"RANK={rank} does not fit WORLD_SIZE={world}")
        return cls(rank, world, local)

    @property
    def device(self) -> str:
        """``cuda:LOCAL_RANK`` when CUDA is there, else ``cpu``."""
        import torch

        return f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu"


class Coordinator:
    """One process alone: nothing to coordinate."""

    def __init__(self, ranks: Ranks) -> None:
        self.ranks = ranks

    def share(self, value: Any) -> Any:
        """Rank 0's ``value`` (JSON-able), on every rank."""
        return value

    def failed(self, message: str) -> None:
        """Tell the other ranks that this one is giving up."""

    def barrier(self) -> None:
        """Wait until every rank got here (StudyError if one failed or went silent)."""

    def close(self) -> None:
        pass


class StoreCoordinator(Coordinator):
    """Ranks of a launch, through the launcher's store."""

    def __init__(self, ranks: Ranks, timeout_s: float, dead_after_s: float, beat_s: float = 2.0) -> None:
        super().__init__(ranks)
        import torch.distributed as dist

        global _calls
        _calls += 1
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        self.prefix = f"latent_probe/study/{attempt}/{_calls}/"
        self.timeout_s, self.dead_after_s, self.beat_s = timeout_s, dead_after_s, beat_s
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if not os.environ.get(var):
                raise StudyError(f"WORLD_SIZE={ranks.world_size} but {var} is not set: launch with torchrun")
        store, _, _ = next(dist.rendezvous("env://", timeout=timedelta(seconds=timeout_s)))
        self.store = store
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name="latent_probe-study-heartbeat", daemon=True)
        self._beat.start()

    def _key(self, name: str) -> str:
        return self.prefix + name

    def _heartbeat(self) -> None:
        while not self._stop.is_set():
            try:
                self.store.add(self._key(f"beat/{self.ranks.rank}"), 1)
            except Exception:  # noqa: BLE001 - the store is gone (rank 0 died): the barrier will say so
                return
            self._stop.wait(self.beat_s)

    def share(self, value: Any) -> Any:
        key = self._key("plan")
        if self.ranks.rank == 0:
            self.store.set(key, json.dumps(value))
            return value
        try:
            return json.loads(self.store.get(key))  # waits up to timeout_s for rank 0
        except Exception as exc:  # noqa: BLE001 - torch raises DistStoreError / RuntimeError
            raise StudyError(f"rank {self.ranks.rank}: no plan from rank 0 within {self.timeout_s:.0f} s "
                             f"({_first_line(exc)})") from None

    def failed(self, message: str) -> None:
        try:
            self.store.set(self._key("failed"), f"rank {self.ranks.rank}: {message}")
        except Exception:  # noqa: BLE001 - best effort: the others notice the silence instead
            pass

    def barrier(self) -> None:
        r, world = self.ranks.rank, self.ranks.world_size
        try:
            self.store.set(self._key(f"done/{r}"), "1")
            self._wait("done", range(world), self.timeout_s)
            self.store.set(self._key(f"left/{r}"), "1")
            if r == 0:  # rank 0 may host the store: it leaves last, once every rank has seen the barrier pass
                self._wait("left", range(1, world), min(self.timeout_s, 60.0))
        except StudyError:
            raise
        except Exception as exc:  # noqa: BLE001 - the store went away with rank 0
            raise StudyError(f"lost the launch's store while waiting for the other ranks (rank 0 died?): "
                             f"{_first_line(exc)}") from None

    def _wait(self, what: str, ranks: range, timeout_s: float) -> None:
        """Until every rank in ``ranks`` has set ``what/<rank>``; a failure or a silent rank ends the wait."""
        seen: dict[int, tuple[int, float]] = {}
        start = time.monotonic()
        while True:
            if self.store.check([self._key("failed")]):
                raise StudyError("stopped waiting for the other ranks: "
                                 + self.store.get(self._key("failed")).decode("utf-8", "replace"))
            waiting = [k for k in ranks if not self.store.check([self._key(f"{what}/{k}")])]
            if not waiting:
                return
            now = time.monotonic()
            for k in waiting:
                beats = int(self.store.add(self._key(f"beat/{k}"), 0))
                if beats == 0:  # not in the study yet (still loading its model): only the timeout applies
                    continue
                if seen.get(k, (-1, 0.0))[0] != beats:
                    seen[k] = (beats, now)
                elif now - seen[k][1] > self.dead_after_s:
                    raise StudyError(f"rank {k} has been silent for {self.dead_after_s:.0f} s (died?); "
                                     "its unfinished jobs are redone on a rerun")
            if now - start > timeout_s:
                raise StudyError(f"ranks {waiting} did not reach the end within {timeout_s:.0f} s")
            time.sleep(0.2)

    def close(self) -> None:
        self._stop.set()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def coordinator(ranks: Ranks, timeout_s: float = 6 * 3600.0, dead_after_s: float = 120.0) -> Coordinator:
    """The coordinator for this launch: ``Coordinator`` alone, ``StoreCoordinator`` under torchrun."""
    if ranks.world_size == 1:
        return Coordinator(ranks)
    return StoreCoordinator(ranks, timeout_s, dead_after_s)
