"""Open hostile run files under supervision (for tests/test_store_hostile.py).

    python hostile_open.py MANIFEST.json [--limit 5] [--mem-mb 1024] [--max-hangs 3] [--lanes 2]

MANIFEST.json: {"scratch": DIR, "cases": [{"name", "family", "path", "truncate"?: N, "flip"?: BIT}, ...]}.
A case with "truncate" and/or "flip" is materialised from the bytes of "path" (cut to N bytes, then bit BIT
— byte BIT // 8, bit BIT % 8 — inverted) into a fresh file under DIR just before it is opened.

This process imports latent_probe once, then forks --lanes supervisors; each forks a worker that runs
its share of the cases one after another. Per case the worker calls ``latent_probe.open_run(path)``
and, for a Run, reads everything a user reads (``num_steps``, ``sigmas``, ``experts``, ``attrs``,
``complete``, ``latents(q)[i]`` for every quantity and committed step (a one-line RunFileError there — a row that
fails its checksum — is an "error", i.e. detected), ``metrics("x0")``, which must
finish: an exception from it is noted in the message, not judged). The supervisor gives each case
``--limit`` seconds: a worker that overruns is killed (outcome "hang"), one that dies is reported with
its signal (outcome "crash"), and a fresh worker (fork) carries on with the next case. A worker also
restarts after any case that is not clean, so one case cannot spoil the next. Workers run under
RLIMIT_AS = (address space at start) + 2 × --mem-mb, and a case whose peak resident memory grew by more
than --mem-mb is "bad".

One JSON line per case on stdout: {"name", "family", "outcome", "seconds", "peak_mb", "message"} where
outcome is "error" (one-line RunFileError), "run" (a Run on which every read worked), "bad" (anything
else raised, a multi-line message, a failed read, memory growth), "hang", "crash", "not_run" (the
family already had --max-hangs hangs: it is not run further so that the suite stays bounded), or
"harness" (the case file could not be built).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import signal
import sys
import time

MSG_CHARS = 400  # messages are cut to this length in the report (the newline check uses the full text)


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def _first_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= MSG_CHARS else text[:MSG_CHARS] + "…"


def exercise(path: str) -> tuple[str, str]:
    """Open one file and read all of it the way a user would; (outcome, message)."""
    import numpy as np

    import latent_probe

    try:
        run = latent_probe.open_run(path)
    except latent_probe.RunFileError as exc:
        msg = str(exc)
        if "\n" in msg or "\r" in msg:
            return "bad", "multi-line RunFileError: " + repr(msg)[:MSG_CHARS]
        return "error", msg[:MSG_CHARS]
    except BaseException as exc:  # noqa: BLE001 - any other exception type is the finding
        return "bad", "open_run raised " + _first_line(exc)
    if not isinstance(run, latent_probe.Run):
        return "bad", f"open_run returned {type(run).__name__}, not a Run"
    where = "num_steps"
    try:
        n = run.num_steps
        if not isinstance(n, (int, np.integer)) or n < 0:
            return "bad", f"num_steps is {n!r}"
        n = int(n)
        where = "sigmas"
        sigmas = run.sigmas
        if len(sigmas) != n:
            return "bad", f"len(run.sigmas) = {len(sigmas)} for num_steps = {n}"
        where = "experts"
        experts = run.experts
        if len(experts) != n:
            return "bad", f"len(run.experts) = {len(experts)} for num_steps = {n}"
        where = "attrs"
        try:  # root attributes are read on first use: a damaged one is refused then, in one line
            attrs = run.attrs
        except latent_probe.RunFileError as exc:
            run.close()
            msg = str(exc)
            if "\n" in msg or "\r" in msg:
                return "bad", "multi-line RunFileError from run.attrs: " + repr(msg)[:MSG_CHARS]
            return "error", "run.attrs: " + msg[:MSG_CHARS]
        if not isinstance(attrs, dict):
            return "bad", f"run.attrs is a {type(attrs).__name__}, not a dict"
        where = "complete"
        bool(run.complete)
        where = "quantities"
        quantities = list(run.quantities)
        for q in quantities:
            where = f"latents({q!r})"
            view = run.latents(q)
            for i in range(n):
                where = f"latents({q!r})[{i}]"
                try:
                    step = view[i]
                except latent_probe.RunFileError as exc:  # a row that fails its checksum: detected, in one line
                    run.close()
                    msg = str(exc)
                    if "\n" in msg or "\r" in msg:
                        return "bad", f"multi-line RunFileError from {where}: " + repr(msg)[:MSG_CHARS]
                    return "error", f"{where}: " + msg[:MSG_CHARS]
                if not isinstance(step, np.ndarray):
                    return "bad", f"{where} returned {type(step).__name__}, not an ndarray"
        note = ""
        if "x0" in quantities:
            where = 'metrics("x0")'
            try:
                run.metrics("x0")
            except MemoryError:
                raise
            except Exception as exc:  # noqa: BLE001 - metrics must finish; how is reported, not judged
                note = f"; metrics('x0') raised {_first_line(exc)}"
        where = "close"
        run.close()
        return "run", f"Run with {n} steps, quantities {quantities}{note}"[:MSG_CHARS]
    except BaseException as exc:  # noqa: BLE001
        try:
            run.close()
        except BaseException:  # noqa: BLE001
            pass
        return "bad", f"{where} raised {_first_line(exc)}"


def _materialise(case: dict, scratch: str, cache: dict) -> str:
    if "truncate" not in case and "flip" not in case:
        return case["path"]
    src = case["path"]
    if src not in cache:
        with open(src, "rb") as fh:
            cache.clear()
            cache[src] = fh.read()
    data = cache[src]
    if "truncate" in case:
        data = data[: case["truncate"]]
    if "flip" in case:
        bit = case["flip"]
        buf = bytearray(data)
        buf[bit // 8] ^= 1 << (bit % 8)
        data = bytes(buf)
    out = os.path.join(scratch, f"case{case['_pos']}.h5")
    with open(out, "wb") as fh:
        fh.write(data)
    return out


def _worker(cases: list, start: int, skip: set, wfd: int, scratch: str, mem_mb: int) -> None:
    soft = _status_kb("VmSize") * 1024 + 2 * mem_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (soft, resource.RLIM_INFINITY))
    cache: dict = {}

    def send(text: str) -> None:
        data = (text + "\n").encode()
        while data:
            data = data[os.write(wfd, data):]

    for idx in range(start, len(cases)):
        case = cases[idx]
        if case["family"] in skip:
            send("R " + json.dumps({"i": idx, "outcome": "not_run", "seconds": 0.0, "peak_mb": 0.0,
                                    "message": f"not run: family {case['family']!r} already hung too often"}))
            continue
        try:
            path = _materialise(case, scratch, cache)
        except OSError as exc:  # the harness's own failure (a source file gone): say so, not "crash"
            send("R " + json.dumps({"i": idx, "outcome": "harness", "seconds": 0.0, "peak_mb": 0.0,
                                    "message": f"could not build the case file: {exc}"}))
            continue
        exact = _reset_peak()
        before = _status_kb("VmRSS")
        maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        send(f"S {idx}")
        t0 = time.perf_counter()
        outcome, message = exercise(path)
        seconds = time.perf_counter() - t0
        peak = _status_kb("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        growth_mb = max(0, peak - (before if exact else maxrss_before)) / 1024
        if outcome in ("error", "run") and growth_mb > mem_mb:
            outcome, message = "bad", f"peak memory grew by {growth_mb:.0f} MB ({outcome}: {message})"
        if path != case["path"]:
            os.unlink(path)
        send("R " + json.dumps({"i": idx, "outcome": outcome, "seconds": round(seconds, 4),
                                "peak_mb": round(growth_mb, 1), "message": message}))
        if outcome not in ("error", "run"):
            break  # a fresh worker for the next case
    os._exit(0)


def _warm_up() -> None:
    """Load torch's CPU kernels once, before any fork (one thread: no OpenMP pool exists to fork)."""
    import torch

    import latent_probe
    import latent_probe.metrics
    import latent_probe.metrics.run_metrics  # noqa: F401

    torch.set_num_threads(1)
    latent_probe.metrics.adjacent_frame_metrics(torch.randn(1, 16, 5, 24, 32))


def _supervise(cases: list, order: list[int], scratch: str, args: argparse.Namespace) -> None:
    """Run cases[order] in forked workers, one at a time, and print one JSON line per case."""
    hangs: dict[str, int] = {}
    skip: set[str] = set()
    mine = [cases[i] for i in order]

    def emit(idx: int, outcome: str, seconds: float, message: str, peak_mb: float = 0.0) -> None:
        case = mine[idx]
        if outcome == "hang":
            hangs[case["family"]] = hangs.get(case["family"], 0) + 1
            if hangs[case["family"]] >= args.max_hangs:
                skip.add(case["family"])
        line = json.dumps({"name": case["name"], "family": case["family"], "outcome": outcome,
                           "seconds": seconds, "peak_mb": peak_mb, "message": message}) + "\n"
        os.write(1, line.encode())  # one write per line: lanes share stdout

    idx = 0
    while idx < len(mine):
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # worker
            os.close(rfd)
            try:
                _worker(mine, idx, skip, wfd, scratch, args.mem_mb)
            except BaseException:  # noqa: BLE001 - the harness itself failed: say where
                import traceback

                traceback.print_exc()
            os._exit(70)
        os.close(wfd)
        current, started, buf, last_done = None, time.monotonic(), b"", idx - 1
        while True:
            budget = args.limit if current is not None else 60.0  # the worker's own start-up: generous
            left = budget - (time.monotonic() - started)
            ready = select.select([rfd], [], [], max(0.0, left))[0] if left > 0 else []
            if not ready:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                if current is None:
                    emit(last_done + 1, "hang", round(time.monotonic() - started, 3),
                         "worker stalled between cases")
                    idx = last_done + 2
                else:
                    emit(current, "hang", round(time.monotonic() - started, 3),
                         f"no result within {args.limit:g} s (killed)")
                    idx = current + 1
                break
            data = os.read(rfd, 1 << 16)
            if not data:  # the worker exited
                _, status = os.waitpid(pid, 0)
                if current is not None:
                    how = (f"killed by signal {signal.Signals(os.WTERMSIG(status)).name}" if os.WIFSIGNALED(status)
                           else f"exited with status {os.WEXITSTATUS(status)}")
                    emit(current, "crash", round(time.monotonic() - started, 3), f"worker {how} during the case")
                    idx = current + 1
                elif last_done + 1 == idx and mine[idx]["family"] not in skip:
                    # died before starting its first case: report it rather than retrying forever
                    emit(idx, "crash", 0.0, f"worker died before the case started (status {status})")
                    idx += 1
                else:
                    idx = last_done + 1
                break
            buf += data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                kind, _, rest = line.decode().partition(" ")
                if kind == "S":
                    current, started = int(rest), time.monotonic()
                elif kind == "R":
                    res = json.loads(rest)
                    emit(res["i"], res["outcome"], res["seconds"], res["message"], res["peak_mb"])
                    current, started, last_done = None, time.monotonic(), res["i"]
        os.close(rfd)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("manifest")
    ap.add_argument("--limit", type=float, default=5.0, help="seconds per case")
    ap.add_argument("--mem-mb", type=int, default=1024, help="allowed peak memory growth per case")
    ap.add_argument("--max-hangs", type=int, default=3, help="hangs per family and lane before it is abandoned")
    ap.add_argument("--lanes", type=int, default=2, help="cases run this many at a time")
    args = ap.parse_args()
    with open(args.manifest) as fh:
        manifest = json.load(fh)
    cases, scratch = manifest["cases"], manifest["scratch"]
    for pos, case in enumerate(cases):
        case["_pos"] = pos
    os.makedirs(scratch, exist_ok=True)
    _warm_up()  # imports latent_probe once, before any fork
    lanes = []
    for lane in range(max(1, args.lanes)):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _supervise(cases, list(range(lane, len(cases), max(1, args.lanes))), scratch, args)
            except BaseException:  # noqa: BLE001
                import traceback

                traceback.print_exc()
                code = 1
            os._exit(code)
        lanes.append(pid)
    failed = 0
    for pid in lanes:
        _, status = os.waitpid(pid, 0)
        failed |= status != 0
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
