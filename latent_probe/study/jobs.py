"""A suite (prompts × seeds × a grid of settings) and its jobs, each with a stable, readable id.

A job id is ``<prompt id>-s<seed>-<one token per setting>-<8 hex>``, e.g. ``p003-s2-steps30-keep3-1f0c9a2e``;
the hex digits are the start of a SHA-256 of the prompt id, prompt text, image, seed and settings, so the
same suite gives the same ids on every machine and any change to them gives a new id. Prompt files:
``read_prompts`` (text, CSV, JSON); seeds and ``--set`` grids: ``parse_seeds``, ``parse_setting``.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from ..errors import LatentProbeError

__all__ = ["StudyError", "Prompt", "Job", "Suite", "read_prompts", "parse_seeds", "parse_setting",
           "parse_truncation", "SETTINGS", "ATTR_PREFIX"]

ATTR_PREFIX = "setting_"  # each setting is the run attribute setting_<name>
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}\Z")
_TRUNC = re.compile(r"keep(\d+)(?:@(boundary|\d+))?\Z")
PROMPT_KEYS = ("id", "prompt", "image")


class StudyError(LatentProbeError, ValueError):
    """A bad suite definition, prompt file or study directory (one line)."""


# ----------------------------------------------------------------------------- settings
def _int(name: str, minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise StudyError(f"--set {name}: {text!r} is not an integer") from None
        if value < minimum:
            raise StudyError(f"--set {name}: {value} is below {minimum}")
        return value
    return parse


def _float(name: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise StudyError(f"--set {name}: {text!r} is not a number") from None
        if not math.isfinite(value):
            raise StudyError(f"--set {name}: {text!r} is not finite")
        return value
    return parse


def parse_truncation(text: str) -> dict[str, Any] | None:
    """``none`` → None; ``keepK``, ``keepK@boundary``, ``keepK@STEP`` → ``{"keep": K, "until": ...}``."""
    if text == "none":
        return None
    m = _TRUNC.match(text)
    if not m or int(m.group(1)) < 1:
        raise StudyError(f"--set truncation: {text!r} is not none, keepK, keepK@boundary or keepK@STEP (K >= 1)")
    until = m.group(2) or "boundary"
    return {"keep": int(m.group(1)), "until": until if until == "boundary" else int(until)}


def _truncation(text: str) -> str:
    t = parse_truncation(text)
    if t is None:
        return "none"
    return f"keep{t['keep']}" + ("" if t["until"] == "boundary" else f"@{t['until']}")


def _method(text: str) -> str:
    """An acceleration method (``interventions.caches.Method``), e.g. ``first_block_cache:0.1``, ``steps:12``,
    ``truncation:3:steps=12``; stored as its canonical name."""
    from ..interventions.caches import Method, MethodError

    try:
        return Method.parse(text).name
    except MethodError as exc:
        raise StudyError(f"--set method: {exc}") from None


@dataclass(frozen=True)
class Setting:
    """How a known setting's values are parsed and shown in a job id."""

    parse: Any
    token: str  # format of its part of the job id; {v} is the value


SETTINGS: dict[str, Setting] = {  # the command line's settings, in job-id order
    "frames": Setting(_int("frames", 1), "frames{v}"),
    "steps": Setting(_int("steps", 1), "steps{v}"),
    "guidance": Setting(_float("guidance"), "cfg{v}"),
    "shift": Setting(_float("shift"), "shift{v}"),
    "truncation": Setting(_truncation, "{v}"),
    "method": Setting(_method, "{v}"),
}


def parse_setting(text: str, known: Mapping[str, Setting] | None = SETTINGS) -> tuple[str, list]:
    """``"steps=20,30"`` → ``("steps", [20, 30])``; ``known=None`` takes any name (ints, floats, else text)."""
    name, sep, values = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise StudyError(f"--set {text!r}: expected NAME=V1,V2,... (e.g. steps=20,30)")
    if known is not None and name not in known:
        raise StudyError(f"--set {name}: unknown setting; choose from {', '.join(known)}")
    parts = [v.strip() for v in values.split(",")]
    if not all(parts):
        raise StudyError(f"--set {name}: an empty value in {values!r}")
    parse = known[name].parse if known is not None else _guess
    out = [parse(v) for v in parts]
    if len(set(out)) != len(out):
        raise StudyError(f"--set {name}: a value is given twice")
    return name, out


def _guess(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _token(name: str, value: Any) -> str:
    shown = format(value, "g") if isinstance(value, float) else str(value)
    if name == "truncation":
        shown = "notrunc" if value == "none" else shown.replace("@", "to")
    fmt = SETTINGS[name].token if name in SETTINGS else name + "{v}"
    return re.sub(r"[^A-Za-z0-9.+_-]", "_", fmt.format(v=shown))


def _ordered(names: Iterable[str]) -> list[str]:
    """Known settings in SETTINGS order, then the others alphabetically: ids do not depend on --set order."""
    names = list(names)
    return [n for n in SETTINGS if n in names] + sorted(n for n in names if n not in SETTINGS)


def parse_seeds(text: str) -> list[int]:
    """``"0,1,5-7"`` → ``[0, 1, 5, 6, 7]`` (ranges inclusive; seeds >= 0, each once)."""
    seeds: list[int] = []
    for part in (p.strip() for p in str(text).split(",")):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise StudyError(f"--seeds {text!r}: expected e.g. 0,1,2 or 0-3 (non-negative integers)")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo or hi - lo > 100_000:
            raise StudyError(f"--seeds {part!r}: not a range from low to high")
        seeds.extend(range(lo, hi + 1))
    if len(set(seeds)) != len(seeds):
        raise StudyError(f"--seeds {text!r}: a seed is given twice")
    return seeds


# ----------------------------------------------------------------------------- prompts
@dataclass(frozen=True)
class Prompt:
    """One prompt: ``id`` (names its jobs), ``text``, ``image`` as written (I2V) and ``image_file`` resolved."""

    id: str
    text: str
    image: str | None = None
    image_file: str | None = field(default=None, compare=False)


def _prompt(where: str, index: int, raw: Mapping[str, Any], folder: str) -> Prompt:
    unknown = sorted(set(raw) - set(PROMPT_KEYS))
    if unknown:
        raise StudyError(f"{where}: unknown field {unknown[0]!r} (expected {', '.join(PROMPT_KEYS)})")
    text = raw.get("prompt")
    if not isinstance(text, str) or not text.strip():
        raise StudyError(f"{where}: no prompt text")
    pid = raw.get("id")
    pid = f"p{index:03d}" if pid is None or pid == "" else str(pid)
    if not _ID.match(pid):
        raise StudyError(f"{where}: prompt id {pid!r} must be letters, digits, '_', '-', '.' (at most 64)")
    image = raw.get("image") or None
    if image is not None and not isinstance(image, str):
        raise StudyError(f"{where}: image must be a path")
    if "\x00" in text or (image and "\x00" in image):
        raise StudyError(f"{where}: a NUL character")
    image_file = None if image is None else os.path.normpath(os.path.join(folder, os.path.expanduser(image)))
    return Prompt(pid, text.strip(), image, image_file)


def read_prompts(path: str | os.PathLike) -> list[Prompt]:
    """Prompts of a file: ``.csv`` (columns prompt, optional id, image), ``.json`` (a list of such objects or of
    strings), anything else text (one prompt a line; blank lines and ``#`` comments skipped). Ids default to
    ``p001, p002, ...`` in file order; relative image paths are relative to the file."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    ext = os.path.splitext(path)[1].lower()
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            content = fh.read()
    except UnicodeDecodeError:
        raise StudyError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise StudyError(f"{path}: {exc.strerror or exc}") from None
    if ext == ".csv":
        rows = csv.DictReader(content.splitlines())
        if not rows.fieldnames or "prompt" not in rows.fieldnames:
            raise StudyError(f"{path}: no 'prompt' column in the header line")
        items = [(f"{path}: line {rows.line_num}", dict(r)) for r in rows if any((v or "").strip() for v in r.values())]
        if any(None in raw for _, raw in items):
            raise StudyError(f"{path}: a row has more cells than the header")
    elif ext == ".json":
        try:
            data = json.loads(content)
        except ValueError as exc:
            raise StudyError(f"{path}: not JSON ({exc})") from None
        if not isinstance(data, list):
            raise StudyError(f"{path}: expected a JSON list of prompts (objects with 'prompt', or strings)")
        items = []
        for i, item in enumerate(data):
            item = {"prompt": item} if isinstance(item, str) else item
            if not isinstance(item, dict):
                raise StudyError(f"{path}: item {i}: expected an object or a string")
            items.append((f"{path}: item {i}", item))
    else:
        items = [(f"{path}: line {n}", {"prompt": line}) for n, line in enumerate(content.splitlines(), 1)
                 if line.strip() and not line.lstrip().startswith("#")]
    prompts = [_prompt(where, i, raw, folder) for i, (where, raw) in enumerate(items, 1)]
    if not prompts:
        raise StudyError(f"{path}: no prompt in it")
    seen: set[str] = set()
    for p in prompts:
        if p.id in seen:
            raise StudyError(f"{path}: prompt id {p.id!r} is used twice")
        seen.add(p.id)
    return prompts


# ----------------------------------------------------------------------------- suites and jobs
@dataclass(frozen=True)
class Job:
    """One generation of a suite: a prompt, a seed and one value per setting."""

    index: int
    id: str
    prompt: Prompt
    seed: int
    settings: dict[str, int | float | str]

    @property
    def prompt_id(self) -> str:
        return self.prompt.id

    def attrs(self, study: str) -> dict[str, Any]:
        """The run file's root attributes that say which job it is (the contract readers rely on)."""
        out: dict[str, Any] = {"study": study, "job_id": self.id, "prompt_id": self.prompt.id,
                               "prompt": self.prompt.text, "seed": int(self.seed)}
        if self.prompt.image is not None:
            out["prompt_image"] = self.prompt.image
        out.update({ATTR_PREFIX + k: v for k, v in self.settings.items()})
        return out

    def describe(self) -> dict[str, Any]:
        """The job's manifest entry."""
        return {"index": self.index, "job_id": self.id, "prompt_id": self.prompt.id, "seed": self.seed,
                "settings": dict(self.settings), "path": f"runs/{self.id}.h5"}


def job_id(prompt: Prompt, seed: int, settings: Mapping[str, Any]) -> str:
    key = json.dumps({"prompt_id": prompt.id, "prompt": prompt.text, "image": prompt.image, "seed": int(seed),
                      "settings": dict(settings)}, sort_keys=True, ensure_ascii=False)
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:8]
    tokens = [_token(n, settings[n]) for n in _ordered(settings)]
    return "-".join([prompt.id, f"s{seed}", *tokens, digest])


@dataclass
class Suite:
    """Prompts × seeds × every combination of the ``grid``'s values; ``fixed`` holds what all jobs share
    (model, task, size, ...): kept in the manifest, and a rerun into the same folder must not change it."""

    name: str
    prompts: Sequence[Prompt]
    seeds: Sequence[int] = (0,)
    grid: Mapping[str, Sequence[int | float | str]] = field(default_factory=dict)
    fixed: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip() or "\x00" in self.name:
            raise StudyError("a suite needs a name (non-empty text)")
        self.prompts = [p if isinstance(p, Prompt) else Prompt(f"p{i:03d}", str(p)) for i, p in
                        enumerate(self.prompts, 1)]
        if not self.prompts:
            raise StudyError("a suite needs at least one prompt")
        if len({p.id for p in self.prompts}) != len(self.prompts):
            raise StudyError("two prompts share an id")
        self.seeds = [int(s) for s in self.seeds]
        if not self.seeds or min(self.seeds) < 0 or len(set(self.seeds)) != len(self.seeds):
            raise StudyError("seeds must be non-negative, given once each, at least one")
        self.grid = {str(k): list(v) for k, v in self.grid.items()}
        for name, values in self.grid.items():
            if not _NAME.match(name):
                raise StudyError(f"setting name {name!r}: lower-case letters, digits and '_'")
            bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float, str))]
            if not values or bad or len(set(values)) != len(values):
                raise StudyError(f"setting {name}: values must be distinct ints, floats or strings, at least one")

    def jobs(self) -> list[Job]:
        """Every job, prompt-major: prompt, then seed, then the grid in its order."""
        names = list(self.grid)
        combos = list(itertools.product(*(self.grid[n] for n in names)))
        out: list[Job] = []
        for prompt, seed, combo in itertools.product(self.prompts, self.seeds, combos):
            settings = dict(zip(names, combo))
            out.append(Job(len(out), job_id(prompt, seed, settings), prompt, seed, settings))
        return out

    def describe(self) -> dict[str, Any]:
        """The suite definition as stored in the manifest."""
        return {"name": self.name,
                "prompts": [{"id": p.id, "prompt": p.text, **({"image": p.image} if p.image else {})}
                            for p in self.prompts],
                "seeds": list(self.seeds), "grid": {k: list(v) for k, v in self.grid.items()},
                "fixed": dict(self.fixed)}
