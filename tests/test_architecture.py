"""The house rules that keep the package readable (issue 10): dependencies point one way, one error base."""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib
import pkgutil

import numpy as np
import pytest

import latent_probe
from latent_probe.errors import LatentProbeError

ROOT = pathlib.Path(latent_probe.__file__).parent


def _resolve(node: ast.ImportFrom | ast.Import, package: str) -> set[str]:
    """The latent_probe modules one import statement names (a package's submodule when it is one)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name.startswith("latent_probe")}
    if node.level:
        base = package.split(".")[: len(package.split(".")) - node.level + 1]
        mod = ".".join(base + ([node.module] if node.module else []))
    else:
        mod = node.module or ""
    out: set[str] = set()
    if mod.startswith("latent_probe"):
        for alias in node.names:
            sub = f"{mod}.{alias.name}"
            out.add(sub if (ROOT.parent / (sub.replace(".", "/") + ".py")).exists()
                    or (ROOT.parent / sub.replace(".", "/")).is_dir() else mod)
    return out


def module_imports(path: pathlib.Path, name: str, *, inside_functions: bool = False) -> set[str]:
    """latent_probe modules ``path`` imports: at module level (TYPE_CHECKING blocks skipped), and with
    ``inside_functions`` also those imported lazily inside functions and methods."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()

    def visit(body):
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for h in getattr(node, "handlers", []):
                    visit(h.body)
            elif isinstance(node, (ast.ImportFrom, ast.Import)):
                out.update(_resolve(node, package))

    visit(tree.body)
    if inside_functions:
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, (ast.ImportFrom, ast.Import)):
                        out.update(_resolve(node, package))
    return out


def graph(*, inside_functions: bool = False) -> dict[str, set[str]]:
    g = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        g[name] = module_imports(path, name, inside_functions=inside_functions)
    return g


# The layer table (docs/architecture.md draws it): for each room of the house, the rooms it may import, top-level
# or inside a function. A room is a subpackage or a top-level module; its own modules are always allowed.
GROUND = {"errors", "_version"}
LAYERS: dict[str, set[str]] = {
    "errors": set(), "_version": set(),
    "parameterization": GROUND, "latent_steps": GROUND, "hooks": GROUND, "organism": GROUND,
    "frames": GROUND,     # key frames and fills: tensor maths used by adapters, interventions and metrics
    "adapters": GROUND | {"hooks", "frames"},
    # the generation recorder: a generation's lifecycle (writers through a factory, events); hooks for its calls
    "recorder": GROUND | {"hooks"},
    "interventions": GROUND | {"adapters", "hooks", "frames", "recorder"},
    "store": GROUND | {"parameterization"},
    "capture": GROUND | {"adapters", "hooks", "latent_steps", "parameterization", "recorder", "store"},
    # the probe ties capture together; the only metrics it uses are the pure online reductions
    "probe": GROUND | {"adapters", "capture", "block_probe", "hooks", "latent_steps", "parameterization", "store",
                       "metrics", "interventions", "storage_options", "recorder"},
    # the probe's storage options, checked once (capture's names, the online metrics' spaces, the store's dtypes)
    "storage_options": GROUND | {"capture", "latent_steps", "metrics", "store"},
    # block probes are listeners beside capture (the same registry), reducing with the pure metrics kernels
    "block_probe": GROUND | {"adapters", "capture", "hooks", "latent_steps", "metrics", "recorder"},
    "metrics": GROUND | {"parameterization", "store", "frames"},
    "views": GROUND | {"metrics", "store", "study", "parameterization"},
    "study": GROUND | {"probe", "store", "metrics", "interventions", "adapters", "parameterization", "hooks"},
    "testing": GROUND | {"adapters"},
    "demo": GROUND | {"probe", "interventions", "organism", "metrics", "store", "views"},
    "app": None,          # the application layer may import every room
    "__main__": {"app"},
    # the package root: about a dozen names from the rooms below; never the application layer
    "root": GROUND | {"adapters", "capture", "interventions", "metrics", "parameterization", "probe", "store",
                      "study", "views"},
}
# Known arrows against the table, each with the issue that removes it. The list may only shrink.
KNOWN_EXCEPTIONS: set[tuple[str, str]] = set()


def _room(module: str) -> str:
    parts = module.split(".")
    return "root" if len(parts) == 1 else parts[1]


def test_every_import_follows_the_layer_table_including_imports_inside_functions():
    bad, used_exceptions = [], set()
    for mod, deps in graph(inside_functions=True).items():
        room = _room(mod)
        assert room in LAYERS, f"{mod}: room {room!r} is not in the layer table (add it, and to docs/architecture.md)"
        allowed = LAYERS[room]
        if allowed is None:
            continue
        for dep in deps:
            target = _room(dep)
            if target == room or target in allowed:
                continue
            if (room, target) in KNOWN_EXCEPTIONS:
                used_exceptions.add((room, target))
                continue
            bad.append(f"{mod} imports {dep} ({room} may import {sorted(allowed) or 'nothing'})")
    assert not bad, "\n".join(bad)
    stale = KNOWN_EXCEPTIONS - used_exceptions
    assert not stale, f"these known exceptions are gone: remove them from KNOWN_EXCEPTIONS: {stale}"


def test_the_layer_table_catches_a_lazy_import_against_it(tmp_path):
    """The walker sees an import inside a method (the rule would be blind to it otherwise)."""
    src = tmp_path / "m.py"
    src.write_text("class A:\n    def f(self):\n        from ..app import cli\n        return cli\n")
    assert module_imports(src, "latent_probe.store.m", inside_functions=True) == {"latent_probe.app.cli"}
    assert module_imports(src, "latent_probe.store.m") == set()


def test_store_imports_nothing_from_metrics_or_above():
    g = graph(inside_functions=True)
    for mod, deps in g.items():
        if mod.startswith("latent_probe.store"):
            bad = {d for d in deps if d.startswith(("latent_probe.metrics", "latent_probe.views",
                                                     "latent_probe.app", "latent_probe.interventions"))}
            assert not bad, f"{mod} imports {bad}"


def test_no_import_cycle_between_modules():
    g = graph()
    state: dict[str, int] = {}

    def walk(node, stack):
        state[node] = 1
        for dep in g.get(node, ()):
            if dep == node or dep not in g:
                continue
            if dep == "latent_probe" or (g.get(dep) is not None and dep + "." in node + "."):
                continue  # a module importing its own package (the package imports it back by design)
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack + [dep]))
            if not state.get(dep):
                walk(dep, stack + [dep])
        state[node] = 2

    for mod in sorted(g):
        if mod != "latent_probe" and not state.get(mod):
            walk(mod, [mod])


def test_every_error_derives_from_one_base():
    seen = []
    for info in pkgutil.walk_packages(latent_probe.__path__, "latent_probe."):
        mod = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(mod, inspect.isclass):
            if cls.__module__ == info.name and issubclass(cls, BaseException):
                seen.append(cls)
                assert issubclass(cls, LatentProbeError), f"{cls.__module__}.{cls.__name__} is not a LatentProbeError"
    assert len(seen) >= 6


def test_metrics_accessor_caches_and_refresh_forgets(tmp_path):
    from latent_probe import open_run
    from latent_probe.demo import run_demo_generation

    path = tmp_path / "r.h5"
    run_demo_generation(path, steps=4, frames=5)[1].close()
    with open_run(path, "r+") as run:
        assert not run.metrics.cache
        a = run.metrics("x0")
        assert run.metrics("x0").l2 is a.l2 and "x0/adjacent" in run.metrics.cache
        assert run.metrics.summary("x0") is not None and run.metrics.eps_gap() is run.metrics.eps_gap()
        run.refresh()
        assert not run.metrics.cache
    with open_run(path) as run:  # the file kept the cache (written while it was open r+)
        assert "metrics" in run.file
        np.testing.assert_array_equal(run.metrics("x0").l2, a.l2)


def test_run_accessors_are_on_the_class_and_old_spellings_warn(tmp_path):
    """xarray's accessor pattern (issue 22): ``metrics`` and ``blocks`` are descriptors on Run, so ``dir(run)``
    shows them; the metric methods once promoted onto Run answer with a DeprecationWarning naming the one
    spelling and are not in ``dir()``; a misspelling is an AttributeError."""
    import warnings

    from latent_probe import Run, open_run
    from latent_probe.demo import run_demo_generation
    from latent_probe.metrics import RunMetrics
    from latent_probe.metrics.blocks import RunBlocks

    path = tmp_path / "r.h5"
    run_demo_generation(path, steps=4, frames=5)[1].close()
    assert Run.metrics is RunMetrics and Run.blocks is RunBlocks
    with open_run(path) as run:
        names = dir(run)
        assert "metrics" in names and "blocks" in names
        assert set(RunMetrics.moved_from_run) == {"lag_similarity", "frame_similarity", "step_change", "eps_gap",
                                                  "noise_floor", "phases", "summary"}
        assert not set(RunMetrics.moved_from_run) & set(names)
        assert run.metrics is run.metrics  # built once per run
        for name in RunMetrics.moved_from_run:
            with pytest.warns(DeprecationWarning, match=rf"run\.{name}\(\.\.\.\) is deprecated .* use "
                                                        rf"run\.metrics\.{name}\(\.\.\.\)"):
                old = getattr(run, name)
            assert old == getattr(run.metrics, name)  # the accessor's own bound method
        with pytest.warns(DeprecationWarning):
            assert run.eps_gap() is run.metrics.eps_gap()  # one cached result either way
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(AttributeError, match="no attribute 'sumary'"):
                run.sumary("x0")


def test_register_run_accessor_warns_on_a_clash_and_keeps_construction_errors_visible(tmp_path):
    """As xarray: shadowing an attribute of Run warns; an AttributeError raised while building the accessor is
    re-raised as RuntimeError (else ``run.<name>`` would read as 'Run has no attribute <name>')."""
    from latent_probe import Run, open_run
    from latent_probe.demo import run_demo_generation
    from latent_probe.store.accessors import register_run_accessor

    class Broken:
        def __init__(self, run):
            raise AttributeError("needs a field this run lacks")

    path = tmp_path / "r.h5"
    run_demo_generation(path, steps=2, frames=3)[1].close()
    saved = Run.__dict__["complete"]
    try:
        with pytest.warns(RuntimeWarning, match="'complete' .* overrides an attribute Run already has"):
            register_run_accessor("complete")(Broken)
        register_run_accessor("_test_broken")(Broken)
        with open_run(path) as run, pytest.raises(RuntimeError, match="error initializing the '_test_broken' "
                                                                       "accessor of Run: needs a field"):
            run._test_broken
    finally:
        Run.complete = saved
        del Run._test_broken
    with open_run(path) as run:
        assert run.complete is True


def test_star_import_needs_no_plotly_and_the_package_is_typed():
    import subprocess
    import sys

    code = ("import sys; sys.modules['plotly'] = None; from latent_probe import *; "
            "assert LatentProbe and LatentProbeError and open_run; print('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]
    assert (ROOT / "py.typed").exists()


def test_the_root_is_small_and_dir_shows_its_surface():
    """About a dozen names (issue 22); moved names still resolve with a warning that names their home."""
    import warnings

    assert len(latent_probe.__all__) <= 16
    assert set(latent_probe.__all__) <= set(dir(latent_probe))
    assert "open_runs" in dir(latent_probe) and "step_change" not in dir(latent_probe)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from latent_probe.metrics import step_change

        assert latent_probe.step_change is step_change
    assert any("latent_probe.metrics" in str(w.message) for w in caught)
    try:
        latent_probe.compare_truncation
    except AttributeError as e:
        assert "latent_probe.app.compare" in str(e)
    else:
        raise AssertionError("the root must not reach the application layer")
