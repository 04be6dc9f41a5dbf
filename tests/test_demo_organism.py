"""``latent-probe demo`` on the model organism: baseline + frame-truncated runs, the dashboard's video section,
``views.video``, and the fallback to the simulated run when the organism cannot be loaded.

That the organism's generations have learned temporal structure (their metrics differ from the same
architecture with random weights) is checked in tests/test_organism.py
(test_trained_samples_have_the_training_clips_temporal_structure).
"""

from __future__ import annotations

import io
import sys
import zlib
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest
import torch

from latent_probe import open_run
from latent_probe.app import cli
from latent_probe.views import static as static_mod
from latent_probe.views.video import (frame_strip, png_bytes, strip_indices, strip_png, video_figure,
                                      video_section)

STEPS = 4  # two high-noise steps (σ ≥ 0.875) are truncated, two low-noise steps are not
DESCRIPTION = "a small video DiT trained on synthetic videos (the latent_probe organism), not Wan2.2"
TRUNCATED = "truncated (keep 3, until boundary)"


def _run_cli(*argv) -> tuple[int, str, str]:
    so, se = io.StringIO(), io.StringIO()
    with redirect_stdout(so), redirect_stderr(se):
        code = cli.main([str(a) for a in argv])
    return code, so.getvalue(), se.getvalue()


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: on a loaded 2-core machine two OpenMP threads spin against each other (~50× slower
    small matmuls); results are the same."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def organism_demo(tmp_path_factory, one_thread):
    pytest.importorskip("diffusers")
    pytest.importorskip("safetensors")
    out = tmp_path_factory.mktemp("demo_organism")
    code, stdout, stderr = _run_cli("demo", "--out", out, "--steps", STEPS, "--no-png")
    return out, code, stdout, stderr


def test_demo_runs_the_organism_and_writes_the_files(organism_demo):
    out, code, stdout, stderr = organism_demo
    assert code == 0, stderr
    assert stderr.strip() == ""
    for ext in (".h5", "_truncated.h5", "_seed1.h5", ".html", ".npz", "_frames.png"):
        assert (out / f"temporal_continuity_demo{ext}").stat().st_size > 0, ext
    assert not (out / "temporal_continuity_demo.png").exists()  # --no-png
    lines = stdout.splitlines()
    assert lines[0] == f"latent-probe demo: {DESCRIPTION}" and "SIMULATED" not in stdout
    assert "Temporal Continuity Statistics" in stdout and "Verdict (the same at the top of the dashboard)" in stdout
    # the step counter printed plain lines although stdout is not a terminal
    assert f"  baseline: 1 of {STEPS} steps (" in stdout and f"  {TRUNCATED}: {STEPS} of {STEPS} steps (" in stdout
    assert stdout.rstrip().endswith(f"(The numbers above are from {DESCRIPTION}.)")

    with open_run(out / "temporal_continuity_demo.h5") as base, \
            open_run(out / "temporal_continuity_demo_truncated.h5") as trunc:
        assert base.num_steps == trunc.num_steps == STEPS
        assert base.attrs["model"] == trunc.attrs["model"] == DESCRIPTION
        assert base.attrs["prompt"] == "a red square moving right" and not base.attrs.get("simulated", False)
        assert base.latents("x0").shape[-4:] == (16, 21, 16, 16)
        assert len(set(base.experts.tolist())) == 2  # both experts ran
        # the same noise: the first step's x_t agree; the truncated high-noise steps change the result
        np.testing.assert_array_equal(np.asarray(base.latents("x_t")[0]), np.asarray(trunc.latents("x_t")[0]))
        assert not np.allclose(np.asarray(base.latents("x0")[-1]), np.asarray(trunc.latents("x0")[-1]))

    npz = np.load(out / "temporal_continuity_demo.npz")
    assert str(npz["label"]) == "baseline" and npz["cos_mean"].shape == (STEPS,)

    png = (out / "temporal_continuity_demo_frames.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    # 7 frames a row: baseline, truncated, seed 1; a column naming each row, a row numbering the frames
    assert (width, height) == (230 + 7 * 128 + 6 * 4, 18 + 3 * 128 + 2 * 4)


def test_dashboard_shows_both_videos_at_the_top(organism_demo):
    out = organism_demo[0]
    html = (out / "temporal_continuity_demo.html").read_text(encoding="utf-8")
    assert DESCRIPTION in html
    top, rest = html.split('<h2 id="videos">', 1)
    section = rest.split('<p class="note">Metrics in', 1)[0]
    assert "<script" in section and "plotly" in section.lower()  # plotly.js inlined in the first figure
    assert "<script src=" not in html.replace(" ", "") and 'src="http' not in html  # self-contained
    assert "cdn.plot.ly/plotly" not in html
    assert "baseline" in section and TRUNCATED in section
    assert section.count('<img class="strip"') == 3  # the static strips (no JavaScript needed)
    assert section.count('"traces":[0,1,2]') == 21  # 21 animation frames, each updating the three videos
    assert html.index('id="videos"') < html.index('id="fig0"')  # above the metric figures
    assert len(html) < 6_000_000


def test_video_figure_has_one_animation_frame_per_video_frame():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (9, 16, 24, 3), dtype=np.uint8)
    b = torch.from_numpy(rng.integers(0, 256, (9, 16, 24, 3), dtype=np.uint8))
    fig = video_figure({"base<line>": a, "truncated": b})
    assert len(fig.frames) == 9 and all(len(f.data) == 2 for f in fig.frames)
    assert len(fig.layout.sliders[0].steps) == 9 and [s.label for s in fig.layout.sliders[0].steps] == \
        [str(i) for i in range(9)]
    assert [t.type for t in fig.data] == ["image", "image"]
    titles = [ann.text for ann in fig.layout.annotations]
    assert titles == ["base&lt;line&gt;", "truncated"]  # labels are HTML-escaped for plotly
    # the frames are the arrays given, losslessly (PNG data URIs)
    import base64

    uri = fig.frames[5].data[0].source
    assert uri.startswith("data:image/png;base64,") and _decode_png(base64.b64decode(uri.split(",", 1)[1])).tolist() \
        == a[5].tolist()
    with pytest.raises(ValueError, match="uint8"):
        video_figure({"x": a.astype(np.float32)})
    with pytest.raises(ValueError, match=r"\[F, H, W, 3\]"):
        video_figure({"x": a[..., :2]})


def test_frame_strip_and_section():
    frames = np.stack([np.full((4, 5, 3), i, np.uint8) for i in range(21)])
    assert strip_indices(21) == [0, 3, 7, 10, 13, 17, 20] and strip_indices(4) == [0, 1, 2, 3]
    strip = frame_strip(frames, gap=1)
    assert strip.shape == (4, 7 * 5 + 6, 3) and strip[0, 6, 0] == 3 and strip[0, 5, 0] == 255
    img = _decode_png(strip_png({"a": frames, "b": frames[:4]}, gap=1))
    assert img.shape == (9, 41, 3) and img[5, 16, 0] == 2 and img[5, 40, 0] == 255  # short row padded white
    sec = video_section({"a": frames})
    assert sec.figure is not None and len(sec.figure.frames) == 21
    assert "frames 0, 3, 7, 10, 13, 17, 20" in sec.static_html


def test_fallback_to_the_simulated_run_when_the_weights_are_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(static_mod, "kaleido_available", lambda: False)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    missing = tmp_path / "nowhere" / "organism.safetensors"
    code, stdout, stderr = _run_cli("demo", "--out", tmp_path / "out", "--weights", missing, "--steps", 3, "--no-png")
    assert code == 0, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("latent-probe demo: note: the model organism could not be loaded (")
    assert "organism weights not found" in lines[0] and lines[0].endswith("running the simulated demo instead")
    assert stdout.startswith("latent-probe demo: SIMULATED data")
    html = (tmp_path / "out" / "temporal_continuity_demo.html").read_text()
    assert "SIMULATED DATA" in html and 'id="videos"' not in html
    assert not (tmp_path / "out" / "temporal_continuity_demo_truncated.h5").exists()


def test_organism_unavailable_without_diffusers(monkeypatch):
    pytest.importorskip("safetensors")
    from latent_probe.demo import OrganismUnavailable, load_demo_organism

    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(OrganismUnavailable, match=r"^diffusers is not installed \(pip install"):
        load_demo_organism()


def test_frames_needs_simulated(tmp_path):
    code, _, stderr = _run_cli("demo", "--out", tmp_path, "--frames", 5)
    assert code == 2 and stderr.startswith("latent-probe demo: error: --frames") and len(stderr.splitlines()) == 1


def _decode_png(data: bytes) -> np.ndarray:
    """Minimal decoder of the PNGs png_bytes writes (8-bit RGB, filter 0), independent of the encoder."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, size = 8, b"", None
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        tag, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        assert zlib.crc32(tag + body) & 0xFFFFFFFF == int.from_bytes(data[pos + 8 + n:pos + 12 + n], "big")
        if tag == b"IHDR":
            size = (int.from_bytes(body[4:8], "big"), int.from_bytes(body[0:4], "big"))
            assert body[8:10] == bytes([8, 2])
        elif tag == b"IDAT":
            idat += body
        pos += 12 + n
    h, w = size
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + 3 * w)
    assert (raw[:, 0] == 0).all()
    return raw[:, 1:].reshape(h, w, 3)


def test_png_bytes_roundtrip():
    img = np.random.default_rng(1).integers(0, 256, (7, 11, 3), dtype=np.uint8)
    assert np.array_equal(_decode_png(png_bytes(img)), img)


def test_the_dashboard_opens_with_its_verdict_computed_from_the_runs(organism_demo):
    out = organism_demo[0]
    html = (out / "temporal_continuity_demo.html").read_text(encoding="utf-8")
    assert html.index('id="verdict"') < html.index('id="videos"') < html.index('id="fig0"')
    box = html.split('id="verdict">', 1)[1].split("</div>", 1)[0]
    with open_run(out / "temporal_continuity_demo.h5") as base, \
            open_run(out / "temporal_continuity_demo_truncated.h5") as trunc, \
            open_run(out / "temporal_continuity_demo_seed1.h5") as other:
        b, t, o = (np.asarray(r.latents("x0")[-1], dtype=np.float64) for r in (base, trunc, other))
        high = int((np.asarray(trunc.experts) == trunc.experts[0]).sum())  # until="boundary": the first expert
        frames = trunc.num_frames
    dist = np.linalg.norm(t - b) / np.linalg.norm(b)   # independent float64 reference
    floor = np.linalg.norm(o - b) / np.linalg.norm(b)
    skipped = high * (frames - 3) / (STEPS * frames)
    assert f"{dist:.1%} from the baseline" in box and f"are {floor:.1%} apart" in box
    assert f"Token-steps skipped {skipped:.0%}" in box or f"Token-steps skipped {skipped:.1%}" in box
    assert "measured generation time" in box and "Verdict:" in box
    supports = "supports truncating here" in box
    assert supports == (dist < 0.5 * floor and "time saved" in box)
    assert ("do not support" in box or "cannot be decided" in box) != supports


def test_every_step_range_the_demo_shows_is_0_based(organism_demo, tmp_path):
    """Grep every user-facing output of the demo run (stdout, the page, metrics text/JSON/CSV, info, npz) for
    step ranges; each must lie within the run's steps 0 … S−1 and the phases must start at step 0."""
    import json
    import re

    out, _, stdout, _ = organism_demo
    run = out / "temporal_continuity_demo.h5"
    page = (out / "temporal_continuity_demo.html").read_text(encoding="utf-8")
    page = re.sub(r"<script[^>]*>.*?</script>", lambda m: "" if len(m.group(0)) > 1_000_000 else m.group(0), page,
                  flags=re.S)  # the inlined plotly.js library itself; the figures' own scripts stay
    texts = {"stdout": stdout, "page": page}
    for fmt in ([], ["--json"], ["--csv"]):
        texts["metrics " + " ".join(fmt)] = _run_cli("metrics", run, *fmt)[1]
    texts["info"] = _run_cli("info", run)[1]
    doc = json.loads(texts["metrics --json"])
    texts["json labels"] = " ".join(r["label"] for r in doc["summary"]["rows"])
    ranges = re.compile(r"(?:\(|\b(?:steps?|early|middle|late|phase) )(\d+)\s*[-–]\s*(\d+)\b", re.I)
    found = 0
    for where, text in texts.items():
        for m in ranges.finditer(text):
            a, b = int(m.group(1)), int(m.group(2))
            assert 0 <= a <= b <= STEPS - 1, f"{where}: {m.group(0)!r} is not a 0-based range of {STEPS} steps"
            found += 1
    assert found >= 10
    rows = [r for r in doc["summary"]["rows"] if r["kind"] == "steps"]
    assert rows[0]["start"] == 0 and rows[0]["label"].endswith("(0-1)") and rows[-1]["stop"] == STEPS
    assert "Early steps (0-1)" in stdout and "Early steps (0-1)" in texts["metrics "]


def test_the_verdict_follows_its_rule_and_says_what_it_cannot_judge(organism_demo):
    """The rule on the demo's own runs with other timings: slower → "slower by" and no support; without the seed
    floor → cannot be decided; supported only when faster and closer than half the floor."""
    import dataclasses

    from latent_probe.views.dashboard import collect_series
    from latent_probe.views.verdict import verdict

    out = organism_demo[0]
    base, trunc, other = collect_series([out / "temporal_continuity_demo.h5", out / "temporal_continuity_demo_truncated.h5",
                                         out / "temporal_continuity_demo_seed1.h5"], labels=["b", "t", "o"])
    slower = verdict([base, trunc, other], seconds={"b": 10.0, "t": 12.39, "o": 10.0})
    [c] = slower.comparisons
    assert c.time_saved == pytest.approx(1 - 12.39 / 10.0) and c.supports is False
    assert any("slower by 24%" in s for s in slower.sentences) and "do not support" in slower.headline
    assert not any("saved -" in s or "saved −" in s for s in slower.sentences)
    no_floor = verdict([base, trunc], seconds={"b": 10.0, "t": 5.0})
    assert no_floor.comparisons[0].supports is None and "cannot decide" in no_floor.headline
    assert any("no floor" in s for s in no_floor.sentences)
    # a truncated run that lands on the baseline itself (distance 0 < half the floor) and was faster: supported
    same = dataclasses.replace(trunc, final_x0=base.final_x0)
    ok = verdict([base, same, other], seconds={"b": 10.0, "t": 5.0, "o": 10.0})
    assert ok.comparisons[0].supports is True and ok.headline.startswith("These runs support truncating")
    assert "one seed" in ok.headline  # a hint, not evidence
    assert verdict([base, other]).comparisons == []  # nothing truncated: nothing to conclude
