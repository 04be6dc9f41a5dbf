"""``latent-probe`` end to end: demo, info, metrics, dashboard, analyze (Wan2.2 stand-in and a tiny diffusers
pipeline saved to a folder); exit status 0 / 1 / 2 and one-line errors."""

from __future__ import annotations

import json
import os
import sys

import h5py
import numpy as np
import pytest

from latent_probe import open_run
from latent_probe.app import cli
from latent_probe.views import static as static_mod
from latent_probe.app.analyze import BASELINE, AnalyzeOptions, Variant, run_analysis

HERE = os.path.dirname(__file__)
STANDIN = os.path.join(HERE, "wan_standin")
TINY_WAN = ["analyze", "--backend", "wan", "--wan_repo", STANDIN, "--wan_config", "tiny", "--size", "64*64",
            "--num_frames", "17", "--no-png"]


def run_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str, command: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"latent-probe {command}: error: "), err


@pytest.fixture
def no_static(monkeypatch):
    """Neither kaleido nor matplotlib: static images must degrade to a one-line note."""
    monkeypatch.setattr(static_mod, "kaleido_available", lambda: False)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    mp = pytest.MonkeyPatch()
    mp.setattr(static_mod, "kaleido_available", lambda: False)
    mp.setitem(sys.modules, "matplotlib", None)
    try:
        import io
        from contextlib import redirect_stderr, redirect_stdout

        so, se = io.StringIO(), io.StringIO()
        with redirect_stdout(so), redirect_stderr(se):
            code = cli.main(["demo", "--simulated", "--out", str(out), "--steps", "10", "--frames", "8"])
    finally:
        mp.undo()
    return out, code, so.getvalue(), se.getvalue()


def test_demo(demo_dir):
    out, code, stdout, stderr = demo_dir
    assert code == 0, stderr
    for ext in ("h5", "html", "npz"):
        assert (out / f"temporal_continuity_demo.{ext}").exists()
    assert not (out / "temporal_continuity_demo.png").exists()
    assert "latent-probe demo: note: no static image written" in stderr and len(stderr.strip().splitlines()) == 1
    assert stdout.startswith("latent-probe demo: SIMULATED data")
    assert "Temporal Continuity Statistics" in stdout and "Normalized L2 Distance:" in stdout
    html = (out / "temporal_continuity_demo.html").read_text()
    assert "SIMULATED DATA" in html and 'id="videos"' not in html  # --simulated: no model, no video section
    assert not (out / "temporal_continuity_demo_truncated.h5").exists()


def test_help_everywhere(capsys):
    commands = cli.build_parser()._subparsers._group_actions[0].choices
    assert {"demo", "info", "metrics", "dashboard", "analyze"} <= set(commands)
    for cmd in [[]] + [[c] for c in commands]:
        code, out, _ = run_cli(capsys, *cmd, "--help")
        assert code == 0 and out.startswith("usage: latent-probe"), cmd
    # every command, argument and option says what it is for
    for name, parser in [("latent-probe", cli.build_parser())] + list(commands.items()):
        for action in parser._actions:
            assert action.help, (name, action.option_strings or action.dest)
    for action in cli.build_parser()._subparsers._group_actions[0]._choices_actions:
        assert action.help, action.dest
    _, out, _ = run_cli(capsys, "analyze", "--help")
    for flag in ("--model_path", "--prompt", "--output_dir", "--num_frames", "--num_inference_steps",
                 "--use_epsilon", "--task", "--size", "--seed", "--backend", "--wan_repo"):
        assert flag in out


def test_usage_errors_exit_2(capsys, demo_dir):
    h5 = demo_dir[0] / "temporal_continuity_demo.h5"
    cases = [
        ([], "latent-probe"),
        (["bogus"], "latent-probe"),
        (["metrics"], "latent-probe metrics"),
        (["metrics", h5, "--json", "--csv"], "latent-probe metrics"),
        (["metrics", h5, "--phases", "early"], "latent-probe metrics"),
        (["dashboard", h5, "--labels", "a,b"], "latent-probe dashboard"),
        (["analyze", "--size", "big"], "latent-probe analyze"),
        (["analyze", "--num_frames", "1"], "latent-probe analyze"),
        (["analyze", "--task", "t2v-9000"], "latent-probe analyze"),
        (["analyze", "--guide_scale", "1", "2", "3"], "latent-probe analyze"),
    ]
    for argv, prog in cases:
        code, _, err = run_cli(capsys, *argv)
        assert code == 2, (argv, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), (argv, err)


def test_failures_exit_1(capsys, demo_dir, tmp_path):
    h5 = demo_dir[0] / "temporal_continuity_demo.h5"
    text = tmp_path / "not.h5"
    text.write_text("hello")
    cases = [
        (["info", tmp_path / "missing.h5"], "info", "no such file"),
        (["info", text], "info", "not an HDF5 file"),
        (["metrics", h5, "--space", "pred_cond"], "metrics", "not captured"),
        (["dashboard", h5, tmp_path / "missing.h5", "-o", tmp_path / "r.html"], "dashboard", "no such file"),
        (["analyze", "--backend", "diffusers", "--output_dir", tmp_path / "a"], "analyze", "--model_path"),
        (["analyze", "--backend", "diffusers", "--model_path", tmp_path / "nope"], "analyze", "no such folder"),
        (["analyze", "--backend", "wan", "--wan_repo", STANDIN, "--output_dir", tmp_path / "b"], "analyze",
         "--model_path"),
        (["analyze", "--backend", "wan", "--wan_repo", tmp_path], "analyze", "no 'wan' package"),
    ]
    for argv, command, words in cases:
        code, _, err = run_cli(capsys, *argv)
        assert code == 1, (argv, err)
        one_line_error(err, command)
        assert words in err, (argv, err)


def test_info_metrics_dashboard(capsys, demo_dir, tmp_path, no_static):
    h5 = demo_dir[0] / "temporal_continuity_demo.h5"
    code, out, _ = run_cli(capsys, "info", h5)
    assert code == 0 and "SIMULATED" in out and "steps       10" in out
    code, out, _ = run_cli(capsys, "metrics", h5)
    assert code == 0 and "SIMULATED" in out.splitlines()[0] and "Early steps (0-3):" in out
    code, out, _ = run_cli(capsys, "metrics", h5, "--phases", "original", "--space", "eps")
    # 10 steps: the original's 1-5, 6-10, 11-20 are scaled to the run and the table says so (steps 0-based)
    assert code == 0 and "Early steps (0-2):" in out and "Late steps (5-9):" in out and "Late steps (10-9)" not in out
    assert "Note: phases 'original'" in out and "scaled to this 10-step run" in out
    code, out, _ = run_cli(capsys, "metrics", h5, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["space"] == "x0" and len(doc["per_step"]["cos_mean"]) == 10
    code, _, _ = run_cli(capsys, "metrics", h5, "--csv", "-o", tmp_path / "m.csv")
    assert code == 0 and (tmp_path / "m.csv").read_text().count("\n") == 1 + 4 * 10 * 7
    # writable with --cache: the metrics land in the file
    copy = tmp_path / "copy.h5"
    copy.write_bytes(h5.read_bytes())
    assert run_cli(capsys, "metrics", copy, "--cache")[0] == 0
    with h5py.File(copy, "r") as f:
        assert "metrics/x0/adjacent" in f

    report = tmp_path / "sub" / "report.html"
    code, out, err = run_cli(capsys, "dashboard", h5, copy, "-o", report, "--labels", "first,second", "--png")
    assert code == 0, err
    page = report.read_text()
    assert "first" in page and "second" in page and page.count("Plotly.newPlot") >= 5
    assert "latent-probe dashboard: note: static export needs kaleido" in err and len(err.strip().splitlines()) == 1


def test_analyze_wan_standin(capsys, tmp_path):
    out = tmp_path / "wan"
    code, stdout, err = run_cli(capsys, *TINY_WAN, "--num_inference_steps", "6", "--output_dir", out,
                                "--cfg_branches", "--use_epsilon", "--prompt", "a <b>cat</b> on a skateboard")
    assert code == 0, err
    for name in ("run.h5", "dashboard.html", "statistics.txt", "statistics.json", "temporal_continuity.npz"):
        assert (out / name).exists(), name
    with open_run(out / "run.h5") as run:
        assert run.num_steps == 6 and run.attrs["prompt"] == "a <b>cat</b> on a skateboard"
        assert set(run.experts) == {"high_noise_model", "low_noise_model"}
        assert {"pred_cond", "pred_uncond"} <= set(run.quantities)
        assert run.attrs["family"] == "wan_repo" and run.latents("x0").shape[3] == 5  # 17 frames → 5 latent
    assert json.loads((out / "statistics.json").read_text())["space"] == "eps"
    assert "Temporal Continuity Statistics" in stdout and "(space: eps, 6 steps)" in stdout
    assert "<b>cat</b>" not in (out / "dashboard.html").read_text()


def test_analyze_sweep(capsys, tmp_path):
    out = tmp_path / "sweep"
    code, stdout, err = run_cli(capsys, *TINY_WAN, "--task", "ti2v-5B", "--num_inference_steps", "3", "4",
                                "--output_dir", out)
    assert code == 0, err
    subs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert subs == ["steps3", "steps4"]
    for sub in subs:
        with open_run(out / sub / "run.h5") as run:
            assert run.num_steps == int(sub[5]) and set(run.experts) == {"model"}
    page = (out / "comparison.html").read_text()
    assert "steps=3" in page and "steps=4" in page


def test_run_analysis_variants(tmp_path):
    # Python API: every variant of every sweep point is recorded into its own subfolder and compared
    out = tmp_path / "variants"
    o = AnalyzeOptions(prompt="a fox", output_dir=str(out), task="ti2v-5B", backend="wan", wan_repo=STANDIN,
                       wan_config="tiny", size="64*64", num_frames=[17], num_inference_steps=[3, 4],
                       static_images=False, variants=[BASELINE, Variant("other", lambda point: None)])
    result = run_analysis(o, log=lambda text: None)
    subs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert subs == ["steps3_baseline", "steps3_other", "steps4_baseline", "steps4_other"]
    assert len(result.runs) == 4 and result.dashboard.endswith("comparison.html")
    for sub in subs:
        with open_run(out / sub / "run.h5") as run:
            assert run.num_steps == int(sub[5]) and set(run.experts) == {"model"}
    page = (out / "comparison.html").read_text()
    assert "steps=3 · baseline" in page and "steps=4 · other" in page


def test_analyze_diffusers_folder(capsys, tmp_path):
    pytest.importorskip("accelerate", reason="diffusers cannot load WanTransformer3DModel without accelerate")
    from latent_probe.testing import tiny_wan_pipeline

    folder = tmp_path / "tiny_pipe"
    tiny_wan_pipeline().save_pretrained(folder)
    out = tmp_path / "diff"
    code, stdout, err = run_cli(capsys, "analyze", "--backend", "diffusers", "--model_path", folder, "--size", "64*64",
                                "--num_frames", "17", "--num_inference_steps", "5", "--output_dir", out, "--no-png",
                                "--prompt", "a red ball rolls", "--guide_scale", "3", "4")
    assert code == 0, err
    with open_run(out / "run.h5") as run:
        assert run.num_steps == 5 and run.attrs["prompt"] == "a red ball rolls"
        assert run.attrs["family"] == "diffusers" and set(run.experts) == {"transformer", "transformer_2"}
        assert run.latents("x0").shape[2:4] == (16, 5)
        # --guide_scale LOW HIGH: the high-noise expert (transformer) ran with 4, the low-noise one with 3
        scales = dict(zip(run.experts, run.guidance_scales))
        assert scales == {"transformer": 4.0, "transformer_2": 3.0}
    assert (out / "dashboard.html").exists()
    # the default --size 1280*720 does not fit this tiny model's rotary table: refused before running, one line
    code, stdout, err = run_cli(capsys, "analyze", "--backend", "diffusers", "--model_path", folder,
                                "--num_frames", "17", "--num_inference_steps", "2", "--output_dir", tmp_path / "big",
                                "--no-png", "--prompt", "a red ball rolls")
    last = err.strip().splitlines()[-1]  # diffusers' own loading bar may come before it
    assert code == 1 and last.startswith("latent-probe analyze: error: --size") and err.count("error") == 1, err
    assert "--size 1280*720 with 17 frames is too large for this model" in err and "rope_max_seq_len" in err
    assert not (tmp_path / "big" / "run.h5").exists()
    code, stdout, err = run_cli(capsys, "analyze", "--backend", "diffusers", "--model_path", folder, "--size", "72*64",
                                "--num_frames", "17", "--output_dir", tmp_path / "odd", "--prompt", "x")
    assert code == 1 and "multiple of 16" in err


def test_analyze_enable_half_frame(capsys, tmp_path):
    """Baseline and truncated with the same seed; token-steps skipped as counted by hand; one dashboard."""
    out = tmp_path / "half"
    code, stdout, err = run_cli(capsys, *TINY_WAN, "--num_inference_steps", "8", "--output_dir", out,
                                "--prompt", "a fox", "--enable_half_frame", "--keep", "2")
    assert code == 0, err
    with open_run(out / "baseline" / "run.h5") as base, open_run(out / "half_frame" / "run.h5") as trunc:
        assert "intervention" not in base.attrs and trunc.attrs["intervention"]["keep"] == 2
        assert base.num_steps == trunc.num_steps == 8
        high = int((base.experts == "high_noise_model").sum())
        assert 0 < high < 8
        # the scheduler integrated full-size latents in both runs
        assert base.latents("x_t").shape == trunc.latents("x_t").shape
        # before the boundary the runs differ, with the same seed the first step's input is identical
        np.testing.assert_array_equal(base.latents("x_t")[0], trunc.latents("x_t")[0])
        assert not np.array_equal(base.latents("x0")[-1], trunc.latents("x0")[-1])
    # 5 latent frames, 2 kept while the high-noise expert runs, CFG: token-steps run / full = 1 - skipped
    skipped = 1 - (high * 2 + (8 - high) * 5) / (8 * 5)
    report = (out / "truncation_comparison.txt").read_text()
    assert f"{skipped * 100:.1f}%" in report, report
    assert (out / "comparison.html").exists()
    assert "Temporal Continuity Statistics" in stdout
    # each statistics table is labelled with its run; a slower truncated run says so, never "-x% saved"
    tables = stdout.split("Temporal Continuity Statistics")
    assert len(tables) == 3 and tables[0].rstrip().endswith("· baseline:") and tables[1].rstrip().endswith(
        "· half_frame:")
    assert "-" not in "".join(line.split("(")[-1] for line in report.splitlines() if "saved" in line)
    from latent_probe.views.truncation_text import _saved

    assert _saved(10.0, 12.39) == "slower by 23.9%" and _saved(10.0, 7.61) == "23.9% saved"



def _imported_modules(path, package: str) -> set[str]:
    """Absolute names of every module (and imported name) of ``path``, a module of ``package``."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]) if node.level else ""
            mod = ".".join(p for p in (base, node.module or "") if p)
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)
    return found


ROOT_REEXPORTS_FROM_APP: set[str] = set()  # the root imports nothing of app (issue 22)


def test_layers_application_on_top():
    """Nothing outside ``latent_probe.app`` imports it (but the root's re-exports), and ``views/`` loads no model (no backend, no pipeline)."""
    import pathlib

    import latent_probe

    root = pathlib.Path(latent_probe.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if rel.parts[0] == "app" or rel.as_posix() == "__main__.py":
            continue
        names = _imported_modules(path, ".".join(("latent_probe",) + rel.parts[:-1]))
        if rel.as_posix() == "__init__.py":  # the root may re-export app's Python entry points, nothing else
            names = {n for n in names if not any(n == m or n.startswith(m + ".") for m in ROOT_REEXPORTS_FROM_APP)}
        if any(n == "latent_probe.app" or n.startswith("latent_probe.app.") for n in names):
            offenders.append((rel.as_posix(), "imports latent_probe.app"))
        if rel.parts[0] == "views" and any(n.split(".")[0] in ("diffusers", "wan") or n.startswith(
                ("latent_probe.testing", "latent_probe.probe", "latent_probe.demo")) for n in names):
            offenders.append((rel.as_posix(), "loads or runs a model"))
    assert not offenders, offenders
    assert "latent_probe.app.cli" in _imported_modules(root / "__main__.py", "latent_probe")
