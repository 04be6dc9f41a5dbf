"""``<out>/manifest.json``: the suite definition and its job list, written atomically (temp file + os.replace).

The manifest says what the suite is; whether a job is done is read from its run file only (runner.py).
A rerun into a folder whose manifest has another suite name or other fixed options is refused, so files
recorded with one model are never taken as done for another.
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any, Sequence

from .._version import __version__
from .jobs import Job, StudyError, Suite
from .outputs import write_atomic

__all__ = ["MANIFEST", "FORMAT", "write_manifest", "read_manifest", "check_same_suite"]

MANIFEST = "manifest.json"
FORMAT = "latent_probe.study"
VERSION = 1


def write_manifest(out_dir: str, suite: Suite, jobs: Sequence[Job], extra: dict[str, Any] | None = None) -> str:
    """Write the manifest of ``suite`` (its ``jobs``) into ``out_dir``; returns its path."""
    doc = {"format": FORMAT, "version": VERSION, "library_version": __version__,
           "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "suite": suite.describe(), **(extra or {}), "jobs": None}
    head = json.dumps(doc, indent=1, ensure_ascii=False, allow_nan=False)
    rows = ",\n  ".join(json.dumps(j.describe(), ensure_ascii=False, allow_nan=False) for j in jobs)
    text = head[: head.rindex("null")] + ("[\n  " + rows + "\n ]" if rows else "[]") + "\n}\n"  # a job a line
    return write_atomic(os.path.join(out_dir, MANIFEST), text.encode("utf-8"), prefix=".manifest.")


def read_manifest(out_dir: str) -> dict[str, Any] | None:
    """The manifest in ``out_dir`` (None if there is none); a damaged one raises StudyError."""
    path = os.path.join(out_dir, MANIFEST)
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StudyError(f"{path} cannot be read ({exc}); delete it to start the manifest afresh") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("suite"), dict):
        raise StudyError(f"{path} is not a latent_probe study manifest")
    return doc


def check_same_suite(doc: dict[str, Any] | None, suite: Suite, where: str) -> None:
    """Refuse a folder that holds another suite (another name, or other fixed options such as the model)."""
    if doc is None:
        return
    old = doc["suite"]
    if old.get("name") != suite.name:
        raise StudyError(f"{where} holds study {old.get('name')!r}, not {suite.name!r}; use another output folder")
    before, now = old.get("fixed") or {}, json.loads(json.dumps(dict(suite.fixed)))
    for key in sorted(set(before) | set(now)):
        if before.get(key) != now.get(key):
            raise StudyError(f"{where} was recorded with {key}={before.get(key)!r}, this run has {now.get(key)!r}; "
                             "use another output folder")
