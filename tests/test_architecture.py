"""The house rules that keep the package readable (issue 10): dependencies point one way, one error base."""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib
import pkgutil

import numpy as np

import latent_probe
from latent_probe.errors import LatentProbeError

ROOT = pathlib.Path(latent_probe.__file__).parent


def module_imports(path: pathlib.Path, name: str) -> set[str]:
    """latent_probe modules ``path`` imports at module level (TYPE_CHECKING blocks and function bodies skipped)."""
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
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                if mod.startswith("latent_probe"):
                    for alias in node.names:
                        sub = f"{mod}.{alias.name}"
                        out.add(sub if (ROOT.parent / (sub.replace(".", "/") + ".py")).exists()
                                or (ROOT.parent / sub.replace(".", "/")).is_dir() else mod)
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names if a.name.startswith("latent_probe"))

    visit(tree.body)
    return out


def graph() -> dict[str, set[str]]:
    g = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        g[name] = module_imports(path, name)
    return g


def test_store_imports_nothing_from_metrics_or_above():
    g = graph()
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
        assert run.summary("x0") is not None and run.eps_gap() is run.metrics.eps_gap()  # promoted
        run.refresh()
        assert not run.metrics.cache
    with open_run(path) as run:  # the file kept the cache (written while it was open r+)
        assert "metrics" in run.file
        np.testing.assert_array_equal(run.metrics("x0").l2, a.l2)


def test_star_import_needs_no_plotly_and_the_package_is_typed():
    import subprocess
    import sys

    code = ("import sys; sys.modules['plotly'] = None; from latent_probe import *; "
            "assert LatentProbe and LatentProbeError and open_run; print('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]
    assert (ROOT / "py.typed").exists()
