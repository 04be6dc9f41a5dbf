"""A MagCache calibration kept inside a study's folder (``latent-probe study --mag_calibrate SEEDS``).

The calibration clips are a study of their own in ``<study>/calibration/`` (``manifest.json``, ``runs/``,
``residuals/``, ...: baseline generations of every prompt at the calibration seeds, recorded with
``--record_residuals``), never among the study's jobs. From it, per group of settings the study's ``mag_cache``
jobs run at (``{"steps": N}``, with ``"guidance"`` when the study sets it), this module writes what
``latent-probe calibrate STUDY --method magcache --setting steps=N`` writes — ``magcache-<label>.<expert>.json``
(``MagCacheConfig(**json)``) and ``magcache-<label>.report.json`` (CIs by prompt) — with the same functions
(``study.calibrate``), then, last, ``calibration.json``: the inputs it was made from (prompts, seeds, settings,
organism, model, branch) and the SHA-256 of every file it wrote. A calibration is complete only with that record;
each file is written atomically, so an interrupted one leaves nothing that reads as complete.

``read_calibration`` gives the configs of a complete calibration made from the same inputs, None where there is
none yet, and refuses (``StudyError``, one line) one made from other inputs or whose files changed since.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping, Sequence

from ..interventions.caches import check_mag_config
from .calibrate import DEFAULT_BOOTSTRAP, DEFAULT_BRANCH, calibration_report, magcache_config, read_residuals
from .jobs import StudyError
from .outputs import write_atomic

__all__ = ["CALIBRATION_DIR", "RECORD", "group_label", "write_calibration", "read_calibration"]

CALIBRATION_DIR = "calibration"
RECORD = "calibration.json"
FORMAT = "latent_probe.mag_calibration/1"


def group_label(settings: Mapping[str, Any]) -> str:
    """``{"steps": 20}`` → ``"steps20"``; ``{"steps": 20, "guidance": 3.5}`` → ``"steps20-cfg3.5"``."""
    label = f"steps{settings['steps']}"
    return label + (f"-cfg{settings['guidance']}" if settings.get("guidance") is not None else "")


def _json_bytes(doc: Any) -> bytes:
    return json.dumps(doc, indent=1, allow_nan=False).encode("utf-8")


def _canonical(doc: Any) -> Any:
    return json.loads(json.dumps(doc))


def write_calibration(cal_dir: str, inputs: Mapping[str, Any], groups: Sequence[Mapping[str, Any]],
                      jobs: Mapping[str, Sequence[str]], branch: str = DEFAULT_BRANCH,
                      n_boot: int = DEFAULT_BOOTSTRAP) -> dict[str, dict[str, dict[str, Any]]]:
    """Compute and write the configs of every group (``groups``: the settings each calibration clip was recorded
    under; ``jobs``: {group label: the calibration job ids of that group}, every one of which must have a residual
    record of a complete run), then the record; returns ``read_calibration``'s result."""
    files: list[dict[str, Any]] = []
    for settings in groups:
        label = group_label(settings)
        wanted = set(jobs[label])
        records = [r for r in read_residuals(cal_dir, dict(settings)) if r.job_id in wanted]
        missing = sorted(wanted - {r.job_id for r in records})
        if missing:
            raise StudyError(f"{cal_dir}: calibration job {missing[0]} has no residuals of a complete run "
                             f"({len(missing)} of {len(wanted)} missing); run the same command again")
        stem = f"magcache-{label}"
        entry: dict[str, Any] = {"settings": dict(settings), "label": label, "jobs": sorted(wanted), "configs": {}}
        for expert in sorted({e for r in records for e, _ in r.series}):
            name = f"{stem}.{expert}.json"
            data = _json_bytes(magcache_config(records, expert, branch))
            write_atomic(os.path.join(cal_dir, name), data, prefix=f".{stem}.")
            entry["configs"][expert] = {"file": name, "sha256": hashlib.sha256(data).hexdigest()}
        data = _json_bytes(calibration_report(records, n_boot))
        write_atomic(os.path.join(cal_dir, f"{stem}.report.json"), data, prefix=f".{stem}.")
        entry["report"] = {"file": f"{stem}.report.json", "sha256": hashlib.sha256(data).hexdigest()}
        files.append(entry)
    record = {"format": FORMAT, "inputs": {**inputs, "branch": branch, "bootstrap": n_boot}, "groups": files}
    write_atomic(os.path.join(cal_dir, RECORD), _json_bytes(record), prefix=".calibration.")
    out = read_calibration(cal_dir, inputs, branch, n_boot)
    assert out is not None
    return out


def read_calibration(cal_dir: str, inputs: Mapping[str, Any], branch: str = DEFAULT_BRANCH,
                     n_boot: int = DEFAULT_BOOTSTRAP) -> dict[str, dict[str, dict[str, Any]]] | None:
    """{group label: {expert: MagCacheConfig keyword dict}} of the complete calibration in ``cal_dir`` (None when
    it has no record); ``StudyError`` (one line) when it was made from other inputs or a file changed since."""
    path = os.path.join(cal_dir, RECORD)
    redo = f"delete {cal_dir} to calibrate afresh"
    try:
        with open(path, "rb") as fh:
            record = json.loads(fh.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StudyError(f"{path} cannot be read ({exc}); {redo}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("groups"), list):
        raise StudyError(f"{path} is not a latent_probe MagCache calibration record; {redo}")
    before = record.get("inputs") or {}
    now = _canonical({**inputs, "branch": branch, "bootstrap": n_boot})
    for key in sorted(set(before) | set(now)):
        if before.get(key) != now.get(key):
            raise StudyError(f"{cal_dir} was calibrated with {key}={before.get(key)!r}, this run asks "
                             f"{now.get(key)!r}; {redo} (or use another --out)")
    out: dict[str, dict[str, dict[str, Any]]] = {}
    try:
        for entry in record["groups"]:
            docs = {}
            for key, what in [*entry["configs"].items(), ("report", entry["report"])]:
                file = os.path.join(cal_dir, what["file"])
                with open(file, "rb") as fh:
                    data = fh.read()
                if hashlib.sha256(data).hexdigest() != what["sha256"]:
                    raise StudyError(f"{file} changed after the calibration wrote it (SHA-256 differs); {redo}")
                docs[key] = json.loads(data)
            out[entry["label"]] = {e: check_mag_config(docs[e], entry["configs"][e]["file"])
                                   for e in entry["configs"]}
    except StudyError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StudyError(f"{path}: a file it lists cannot be read ({type(exc).__name__}: {exc}); {redo}") from None
    return out
