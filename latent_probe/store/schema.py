"""Names, dimensions and version of the HDF5 layout (documented in docs/hdf5-schema.md).

/                       attrs, written before the first step is committed and never changed afterwards:
                        schema="latent_probe", schema_version, library_version, created, store_dtype, layout,
                        quantities, parameterization, experts, run metadata, the user's attrs
/run_state              [1] compound: the mutable end-of-run state (committed steps, complete, errors),
                        updated in place — never deleted and rewritten
/latents/<quantity>     [S, B, C, F, H, W], float16 or float32, one uncompressed chunk per step
/steps                  [S] compound per-step metadata (index, timestep, sigma, alpha, expert index,
                        guidance_scale, generation, model_calls, blocked_ms, wall_time, nonfinite, overflow)
/metrics/...            cached metric values (written by latent_probe.metrics)
/online/<space>/<sum>   [S, ...] float64 per-step sums of metrics computed during the run (``metrics=``): sq [B, F],
                        dot and dd [B, F−1], change [4] (latent_probe.metrics.online says what each holds)
/block_hidden/<branch>  [R, K, B, F', T, D] store dtype: the probed blocks' output hidden states at the steps
                        block_steps= chose, one chunk a (row, block); <branch>_step [R] int64 (the step of each
                        row), <branch>_crc [R, K] uint32 (each chunk's checksum), <branch>_flags [R, K] uint8
/latent_step            [K] int64, with latents for chosen steps only (``latent_steps=``): the step of each latent
                        row; dimension scale "latent_step" of the latents' first axis. Absent: row s is step s.

netCDF view (HDF5 dimension scales, so that xarray / h5netcdf name every axis; created before the first commit):
/step                   [S] int64, 0-based step number (the row): dimension scale "step", extended with the rows
/batch /channel /frame /height /width   [n] int64 0..n-1: dimension scales of the latents' other axes
/timestep /sigma /alpha /expert          [S] copies of /steps' fields, coordinates along "step" (expert: UTF-8 name)
/<quantity>             a second hard link to /latents/<quantity>, so a netCDF reader of the root group sees it
/generation             [1] int32, the generation number (1-based): dimension scale of /run_state

A step is committed once ``/run_state`` counts it: written after its latents and its ``/steps`` row have
been flushed, then flushed itself.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import h5py
import numpy as np

SCHEMA_NAME = "latent_probe"
SCHEMA_VERSION = 3  # 3: /online sums, /latent_step, runs without latents; root attrs noise_convention, source_dtypes
LATENT_LAYOUT = "s b c f h w"
LATENTS_GROUP = "latents"
METRICS_GROUP = "metrics"
ONLINE_GROUP = "online"
CHECKSUMS_GROUP = "checksums"  # /checksums/<quantity>: uint32 [K], the checksum of each stored latent row
BLOCKS_GROUP = "blocks"  # /blocks: the block probes' per-step sums (store/blocks.py)
HIDDEN_GROUP = "block_hidden"  # /block_hidden: the probed blocks' output hidden states at chosen steps (block_steps=)
HIDDEN_BRANCHES = ("cond", "uncond")
HIDDEN_LAYOUT = "row block batch frame token channel"  # /block_hidden/<branch>: [R, K, B, F', T, D]
LATENT_STEP_DIM = "latent_step"
STORE_DTYPES = ("float16", "float32")
MAX_ROOT_ATTRS = 4096  # root attributes a reader accepts (a run writes about 40, plus the caller's attrs=)
MAX_USER_ATTRS = 1024  # attrs= entries a probe accepts
MAX_QUANTITIES = 16  # members of /latents, /online, /online/<space> a reader accepts (a run writes at most 6, 4, 4)

# /steps: one compound row per step. "expert" indexes the root attribute "experts" (-1: no expert ran);
# "nonfinite" is a bitmask over the quantities in the order of the dataset's attribute "quantities" (bit i:
# quantity i as stored holds NaN/Inf), "overflow" the same for finite values beyond the store dtype's range
# (stored as ±inf; float16 holds |x| < 65520). Bit ONLINE_BIT0 + j of "nonfinite": space j of the dataset's
# attribute "online_bits" (the spaces whose metric sums were computed during the run) held NaN/Inf at that step.
ONLINE_BIT0 = 16
STEPS_DATASET = "steps"
STEP_DTYPE = np.dtype([
    ("index", np.int32),
    ("timestep", np.float64),
    ("sigma", np.float64),
    ("alpha", np.float64),
    ("expert", np.int16),
    ("guidance_scale", np.float64),
    ("generation", np.int32),
    ("model_calls", np.int32),
    ("blocked_ms", np.float64),
    ("wall_time", np.float64),
    ("nonfinite", np.uint32),
    ("overflow", np.uint32),
])
# schema version 1 stored the expert's name in the row, cut to 64 bytes
EXPERT_BYTES_V1 = 64
STEP_DTYPE_V1 = np.dtype([
    ("index", np.int32), ("timestep", np.float64), ("sigma", np.float64), ("alpha", np.float64),
    ("expert", f"S{EXPERT_BYTES_V1}"), ("guidance_scale", np.float64), ("generation", np.int32),
    ("model_calls", np.int32), ("blocked_ms", np.float64), ("wall_time", np.float64), ("nonfinite", np.uint32),
])

# /run_state: one row, rewritten in place. "steps" is the commit counter; "closed" is 1 once the writer
# finished cleanly; error messages are UTF-8, cut at a character boundary to ERROR_BYTES.
STATE_DATASET = "run_state"
ERROR_BYTES = 1024
STATE_DTYPE = np.dtype([
    ("steps", np.int64),
    ("steps_seen", np.int64),
    ("complete", np.uint8),
    ("closed", np.uint8),
    ("nonfinite_steps", np.int64),
    ("blocked_ms_total", np.float64),
    ("error", f"S{ERROR_BYTES}"),
    ("writer_error", f"S{ERROR_BYTES}"),
])
STATE_FIELDS = ("steps", "steps_seen", "complete", "closed", "nonfinite_steps", "blocked_ms_total", "error",
                "writer_error")

JSON_KEYS_ATTR = "json_keys"

# Dimension scales (netCDF dimensions) and the per-step coordinates stored beside /steps.
STEP_DIM = "step"
LATENT_DIMS = ("step", "batch", "channel", "frame", "height", "width")  # the axes of LATENT_LAYOUT
STEP_COORDS = ("timestep", "sigma", "alpha", "expert")  # 1-D datasets along "step", copies of /steps fields
GENERATION_DIM = "generation"  # the axis of /run_state (one row: this file's generation)
SCALE_CHUNK = 64  # rows per chunk of the resizable 1-D datasets (/steps, /step, the coordinates)


def expert_dtype(names: list[str] | tuple[str, ...]) -> np.dtype:
    """Fixed-length UTF-8 strings wide enough for every expert name (and "unknown"): no variable-length data."""
    width = max([len(n.encode("utf-8")) for n in (*names, "unknown")] + [1])
    return h5py.string_dtype("utf-8", width)


def generation_path(path: str, generation: int) -> str:
    """Where generation ``generation`` (1-based) of a probe recording to ``path`` goes: ``path`` itself for the
    first, ``<stem>.gen<n><suffix>`` beside it for the n-th (``run.h5`` → ``run.gen2.h5``)."""
    if generation <= 1:
        return path
    stem, suffix = os.path.splitext(path)
    return f"{stem}.gen{int(generation)}{suffix}"


_GEN_NAME = re.compile(r"^(?P<stem>.*)\.gen(?P<n>[1-9][0-9]*)$")


def first_generation_path(path: str, generation: int | None) -> str | None:
    """``path`` of generation ``generation`` → the path of generation 1 (None when the name does not follow
    :func:`generation_path`, e.g. a renamed file)."""
    if not generation or generation <= 1:
        return path
    stem, suffix = os.path.splitext(path)
    for stem, suffix in ((stem, suffix), (path, "")):  # "run.gen2.h5", or "run.gen2" of a path without suffix
        m = _GEN_NAME.match(stem)
        if m is not None and int(m.group("n")) == generation:
            return m.group("stem") + suffix
    return None


def generation_siblings(first: str) -> dict[int, str]:
    """Files beside ``first`` named as its later generations: n → path (n ≥ 2), existing files only."""
    stem, suffix = os.path.splitext(first)
    folder = os.path.dirname(os.path.abspath(first))
    base = os.path.basename(stem)
    out: dict[int, str] = {}
    try:
        names = os.listdir(folder)
    except OSError:
        return out
    for name in names:
        if not (name.startswith(base + ".gen") and name.endswith(suffix)):
            continue
        m = _GEN_NAME.match(name[: len(name) - len(suffix)] if suffix else name)
        if m is not None and m.group("stem") == base:
            out[int(m.group("n"))] = os.path.join(os.path.dirname(first), name)
    return dict(sorted(out.items()))

# Root attribute names the library writes itself: user attrs may not use them (refused at entry).
RESERVED_ATTRS = frozenset({
    "schema", "schema_version", "library_version", "created", "store_dtype", "layout", "quantities",
    "parameterization", "capture", "cfg_branches", "step_layout", "experts", "intervention", "call_args",
    "generation", "probe_id", "planned_steps", "online", "latent_steps", "latent_shape", "noise_convention",
    "source_dtypes", "checksum", "block_probe", JSON_KEYS_ATTR, *STATE_FIELDS,
})


def utf8_cut(text: str, limit: int = ERROR_BYTES) -> bytes:
    """``text`` as UTF-8, at most ``limit`` bytes, never cut inside a character ("…" marks a cut)."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit:
        return raw
    return raw[: limit - 3].decode("utf-8", "ignore").encode() + "…".encode()


def encode_attrs(values: dict[str, Any]) -> dict[str, Any]:
    """Plain scalars and strings stay as they are; anything else becomes a JSON string (never pickle).

    Raises ValueError naming the attribute that cannot be stored (NUL in a string, a value JSON refuses).
    """
    out: dict[str, Any] = {}
    json_keys: list[str] = []
    for key, value in values.items():
        if value is None:
            continue
        if not isinstance(key, str) or not key or "\x00" in key or "/" in key or key == ".":
            raise ValueError(f"attribute name {key!r} cannot be stored (a non-empty string without NUL or '/')")
        if isinstance(value, (bool, np.bool_)):
            out[key] = bool(value)
        elif isinstance(value, (int, np.integer)) and not -2**63 <= int(value) < 2**63:
            out[key] = json.dumps(int(value))
            json_keys.append(key)
        elif isinstance(value, (int, float, np.integer, np.floating)):
            out[key] = value
        elif isinstance(value, str) and "\x00" not in value:
            out[key] = value
        else:
            try:
                out[key] = json.dumps(value, default=str, ensure_ascii=False)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"attribute {key!r} cannot be stored as JSON: {exc}") from None
            if "\x00" in out[key]:  # json escapes NUL as \u0000; only a str subclass could get here
                raise ValueError(f"attribute {key!r} cannot be stored (NUL character)")
            json_keys.append(key)
    out[JSON_KEYS_ATTR] = json.dumps(sorted(json_keys))
    return out


def json_keys_of(raw: Any) -> set[str]:
    """The names the ``json_keys`` attribute lists (empty when it is missing or unreadable)."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    try:
        keys = json.loads(raw if raw is not None else "[]")
    except (TypeError, ValueError):
        return set()
    return {k for k in keys if isinstance(k, str)} if isinstance(keys, list) else set()


def decode_value(key: str, value: Any, json_keys: set[str]) -> Any:
    """One stored attribute value as the Python value that was written (bytes → str, JSON parsed)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        value = value.item()
    if key in json_keys and isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            pass
    return value


def decode_attrs(raw: dict[str, Any]) -> dict[str, Any]:
    json_keys = json_keys_of(raw.get(JSON_KEYS_ATTR))
    return {key: decode_value(key, value, json_keys) for key, value in raw.items() if key != JSON_KEYS_ATTR}


def state_dict(row: np.void | None) -> dict[str, Any]:
    """The /run_state row as plain Python values (strings decoded)."""
    if row is None:
        return {}
    out: dict[str, Any] = {}
    for name in STATE_FIELDS:
        value = row[name]
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif isinstance(value, np.generic):
            value = value.item()
        out[name] = value
    out["complete"] = bool(out["complete"])
    out["closed"] = bool(out["closed"])
    return out
