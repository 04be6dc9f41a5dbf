"""Names, dimensions and version of the HDF5 layout (documented in docs/hdf5-schema.md).

/                       attrs: schema="latent_probe", schema_version, library_version, created, complete,
                               parameterization, store_dtype, quantities, layout, run metadata
/latents/<quantity>     [S, B, C, F, H, W], float16 or float32, chunked one step per chunk
/steps                  [S] compound per-step metadata (index, timestep, sigma, alpha, expert, guidance_scale,
                        generation, model_calls, blocked_ms, wall_time, nonfinite bitmask)
/metrics/...            cached metric values (written by latent_probe.metrics)

A step is committed once ``/steps`` holds its row: written last, after the latents, then flushed.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

SCHEMA_NAME = "latent_probe"
SCHEMA_VERSION = 1
LATENT_LAYOUT = "s b c f h w"
LATENTS_GROUP = "latents"
METRICS_GROUP = "metrics"
STORE_DTYPES = ("float16", "float32")
QUANTITIES = ("x_t", "pred", "x0", "eps", "pred_cond", "pred_uncond")

# /steps: one compound row per step. "expert" is a fixed-length UTF-8 byte string; "nonfinite" a bitmask
# over the quantities in the order of the dataset's attribute "quantities" (bit i = quantity i).
STEPS_DATASET = "steps"
EXPERT_BYTES = 64
STEP_DTYPE = np.dtype([
    ("index", np.int32),
    ("timestep", np.float64),
    ("sigma", np.float64),
    ("alpha", np.float64),
    ("expert", f"S{EXPERT_BYTES}"),
    ("guidance_scale", np.float64),
    ("generation", np.int32),
    ("model_calls", np.int32),
    ("blocked_ms", np.float64),
    ("wall_time", np.float64),
    ("nonfinite", np.uint32),
])

JSON_KEYS_ATTR = "json_keys"


def encode_attrs(values: dict[str, Any]) -> dict[str, Any]:
    """Plain scalars and strings stay as they are; anything else becomes a JSON string (never pickle)."""
    out: dict[str, Any] = {}
    json_keys: list[str] = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, (bool, np.bool_)):
            out[key] = bool(value)
        elif isinstance(value, (int, float, str, np.integer, np.floating)):
            out[key] = value
        else:
            out[key] = json.dumps(value, default=str)
            json_keys.append(key)
    out[JSON_KEYS_ATTR] = json.dumps(sorted(json_keys))
    return out


def decode_attrs(raw: dict[str, Any]) -> dict[str, Any]:
    json_keys = set(json.loads(raw.get(JSON_KEYS_ATTR, "[]")))
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key == JSON_KEYS_ATTR:
            continue
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, np.generic):
            value = value.item()
        out[key] = json.loads(value) if key in json_keys else value
    return out
