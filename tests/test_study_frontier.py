"""The frontier in two commands (issue 19, item 7): ``latent-probe study --backend organism`` records each job's
costs and final latent (``outputs/<job id>.safetensors``), ``latent-probe suite STUDY --frontier`` scores and
summarises them. Checked against independent computations: savings from the sidecars read with safetensors
directly, scores from the fidelity modules applied to the saved latents, latents against plain generations."""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pytest
import torch

from conftest import manifest_jobs, read_job_sidecar
from latent_probe.app import cli

PROMPTS = ("a red square moving right", "a blue disc moving left")
STEPS = 6
METHODS = "baseline,steps:4,truncation:2"
DECLARED = [{"id": "P1", "measure": "psnr", "a": "method=truncation:2", "b": "method=steps:4"},
            {"id": "P2", "measure": "motion_error", "a": "method=truncation:2", "b": "method=steps:4"}]


@pytest.fixture(scope="module")
def study(tmp_path_factory, weights):
    folder = tmp_path_factory.mktemp("frontier")
    prompts = folder / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = str(folder / "st")
    threads = torch.get_num_threads()
    assert cli.main(["study", str(prompts), "--out", out, "--backend", "organism", "--model_path", weights,
                     "--seeds", "0,1", "--set", f"steps={STEPS}", "--set", f"method={METHODS}",
                     "--capture", "none", "--metrics", "x0"]) == 0
    assert torch.get_num_threads() == threads            # one torch thread during each job only
    frontier = str(folder / "frontier.json")
    declared = folder / "declared.json"
    declared.write_text(json.dumps(DECLARED))
    assert cli.main(["suite", out, "--frontier", "--frontier_out", frontier, "-o", str(folder / "suite.html"),
                     "--resamples", "300", "--declared", str(declared)]) == 0
    return {"out": out, "frontier": json.load(open(frontier)), "prompts": str(prompts), "html": folder / "suite.html",
            "declared": str(declared)}


def test_every_job_records_its_costs_and_the_plain_generations_final_latent(study, weights):
    from latent_probe.organism import load_organism

    org = load_organism(path=weights)
    tokens_per_call = org.config.latent_frames * (org.config.latent_size // 2) ** 2    # patch (1, 2, 2)
    for job in manifest_jobs(study["out"]):
        rec, latent = read_job_sidecar(study["out"], job["job_id"])
        cost = rec["cost"]
        assert rec["job_id"] == job["job_id"] and cost["threads"] == 1 and cost["dit_clock"] == "thread_cpu"
        assert 0 < cost["dit_s"] < cost["thread_cpu_s"] and cost["wall_s"] > 0
        steps = rec["steps_run"]
        assert steps == (4 if job["settings"]["method"] == "steps:4" else STEPS)
        assert cost["dit_calls"] == 2 * steps                                    # CFG: cond and uncond
        if job["settings"]["method"] == "truncation:2":
            keys = rec["intervention"]["keys_used"]
            assert keys == [0, org.config.latent_frames - 1] and cost["token_steps"] < 2 * steps * tokens_per_call
            continue
        assert cost["token_steps"] == 2 * steps * tokens_per_call
        prompt = PROMPTS[int(job["prompt_id"][1:]) - 1]
        plain = org.generate(prompt, seed=job["seed"], num_inference_steps=steps)
        assert latent.dtype == plain.dtype and torch.equal(latent, plain)         # bit for bit


def test_frontier_savings_and_scores_equal_independent_computations(study):
    from latent_probe.organism import fidelity, videos
    from latent_probe.study.inference import cluster_bootstrap

    doc = study["frontier"]
    assert doc["baseline"] == "method=baseline" and doc["saving_axis"] == "saving_thread_cpu_s"
    assert doc["organism"] == "v1" and doc["n_clips"] == 4
    jobs = {j["job_id"]: j for j in manifest_jobs(study["out"])}
    side = {jid: read_job_sidecar(study["out"], jid) for jid in jobs}
    base = {(j["prompt_id"], j["seed"]): jid for jid, j in jobs.items() if j["settings"]["method"] == "baseline"}
    rows = doc["clips"]
    assert len(rows) == 12 and {r["job_id"] for r in rows} == set(jobs)
    for r in rows:
        j = jobs[r["job_id"]]
        bid = base[(j["prompt_id"], j["seed"])]
        (rec, z), (brec, bz) = side[r["job_id"]], side[bid]
        for col in ("wall_s", "thread_cpu_s", "dit_s", "token_steps"):
            want = 1.0 - rec["cost"][col] / brec["cost"][col]
            assert r[f"saving_{col}"] == pytest.approx(want, rel=0, abs=1e-12), col
        label = videos.PROMPTS.index(PROMPTS[int(j["prompt_id"][1:]) - 1])
        keys = rec["intervention"].get("keys_used")
        want = fidelity.score_clip(videos.to_rgb(z[0].float()), videos.to_rgb(bz[0].float()), label, keys)
        for m in ("psnr", "ssim", "motion_error", "residual", "visible", "flicker", "jitter"):
            got, exp = r.get(m), want[m]
            if exp is None or not math.isfinite(exp):
                assert got is None, (m, got, exp)                       # inf / NaN: null in strict JSON
            else:
                assert got == pytest.approx(exp, rel=1e-12, abs=1e-12), (m, r["setting"])
        if keys is not None:
            assert r["key_psnr"] == pytest.approx(want["key_psnr"], rel=1e-12)
    # the floor: baseline clips of one prompt at the two seeds
    pairs = [(base[(p, 0)], base[(p, 1)]) for p in ("p001", "p002")]
    psnrs = [fidelity.psnr(videos.to_rgb(side[a][1][0]), videos.to_rgb(side[b][1][0])) for a, b in pairs]
    assert doc["floors"]["seed_psnr"]["mean"] == pytest.approx(np.mean(psnrs), rel=1e-12)
    assert doc["floors"]["seed_psnr"]["n"] == 2
    # per setting: mean saving and its CI by prompt, as cluster_bootstrap gives them from the per-clip savings
    for s in doc["settings"]:
        clips = [r for r in rows if r["setting"] == s["setting"]]
        v = [r["saving_thread_cpu_s"] for r in clips]
        ci = cluster_bootstrap(v, [r["prompt"] for r in clips], n_resamples=300, seed=0)
        assert (s["saving_thread_cpu_s"], s["saving_thread_cpu_s_low"], s["saving_thread_cpu_s_high"]) == \
            pytest.approx((ci.mean, ci.low, ci.high), abs=1e-12)
    assert {s["method"] for s in doc["settings"]} == {"baseline", "fewer_steps", "truncation"}
    assert "Speed" in study["html"].read_text(encoding="utf-8")       # the frontier figure is on the page


def test_declared_comparisons_are_paired_differences_by_prompt_with_holm(study, tmp_path, capsys):
    """The 2-prompt study is below the 3 prompts a declared comparison needs: reported with its counts, untested;
    the tested path (CI, sign-flip p, Holm) is checked on the library function in tests/test_inference.py."""
    rows = study["frontier"]["clips"]
    got = study["frontier"]["declared"]
    assert [r["id"] for r in got] == ["P1", "P2"]
    for r, d in zip(got, DECLARED):
        by = {(c["prompt"], c["seed"]): c.get(d["measure"]) for c in rows if c["setting"] == d["a"]}
        other = {(c["prompt"], c["seed"]): c.get(d["measure"]) for c in rows if c["setting"] == d["b"]}
        diffs = [(k, by[k] - other[k]) for k in sorted(by) if by[k] is not None and other[k] is not None]
        assert r["n_clips"] == len(diffs) and r["n_dropped"] == 4 - len(diffs)
        assert r["status"] == ("too few prompts" if diffs else "no finite pair") and "p_value" not in r
        assert r["holm_m"] == 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "P9", "measure": "psnr", "a": "method=steps:3", "b": "method=steps:4"}]))
    assert cli.main(["suite", study["out"], "--frontier", "--declared", str(bad), "-o", str(tmp_path / "s.html")]) == 1
    assert "declared comparison P9: the study has no setting 'method=steps:3'" in capsys.readouterr().err
    assert not (tmp_path / "s.html").exists()
    assert cli.main(["suite", study["out"], "--declared", study["declared"], "-o", str(tmp_path / "s.html")]) == 1
    assert "--declared need --frontier" in capsys.readouterr().err and not (tmp_path / "s.html").exists()


def test_the_json_reads_back_into_the_same_figure(study, tmp_path):
    from latent_probe.views.frontier import frontier_from_document, frontier_from_json

    path = tmp_path / "f.json"
    path.write_text(json.dumps(study["frontier"]))
    a, b = frontier_from_json(path), frontier_from_document(study["frontier"])
    assert a.to_json() == b.to_json()
    assert [t.name for t in a.data if t.showlegend] == ["baseline", "fewer_steps", "truncation"]
    assert cli.main(["suite", study["out"], "--frontier", str(path), "-o", str(tmp_path / "s.html")]) == 0


def _copy(study, tmp_path):
    out = str(tmp_path / "st")
    shutil.copytree(study["out"], out)
    return out


def _rerun(study, out, weights):
    return cli.main(["study", study["prompts"], "--out", out, "--backend", "organism", "--model_path", weights,
                     "--seeds", "0,1", "--set", f"steps={STEPS}", "--set", f"method={METHODS}",
                     "--capture", "none", "--metrics", "x0"])


def test_a_missing_or_half_written_sidecar_leaves_its_job_incomplete_and_is_redone(study, weights, tmp_path, capsys):
    from latent_probe.study import job_status, run_path

    out = _copy(study, tmp_path)
    jobs = [j["job_id"] for j in manifest_jobs(out)]
    cut, gone = jobs[1], jobs[4]
    path = os.path.join(out, "outputs", f"{cut}.safetensors")
    original = open(path, "rb").read()
    latent = read_job_sidecar(out, cut)[1]
    with open(path, "wb") as fh:                    # as a non-atomic writer killed mid-file would leave it
        fh.write(original[: len(original) // 2])
    os.unlink(os.path.join(out, "outputs", f"{gone}.safetensors"))
    # a killed atomic write leaves only its temporary file, which counts for nothing
    with open(os.path.join(out, "outputs", f".{gone}.x1y2.tmp"), "wb") as fh:
        fh.write(original[:100])
    for jid in (cut, gone):
        st = job_status(run_path(out, jid), jid, out)
        assert st.state == "incomplete" and "sidecar" in st.detail, st
    assert job_status(run_path(out, jobs[0]), jobs[0], out).done
    capsys.readouterr()
    assert cli.main(["suite", out, "--frontier", "-o", str(tmp_path / "x.html")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "2 of 12 jobs" in err and "recorded time and final latent" in err
    before = {j: os.stat(run_path(out, j)).st_mtime_ns for j in jobs}
    assert _rerun(study, out, weights) == 0
    redone = [j for j in jobs if os.stat(run_path(out, j)).st_mtime_ns != before[j]]
    assert sorted(redone) == sorted([cut, gone])                      # only those two
    assert torch.equal(read_job_sidecar(out, cut)[1], latent)                  # deterministic: the same latent again
    assert all(job_status(run_path(out, j), j, out).done for j in jobs)


KILLED_JOB = """
import os, sys
from latent_probe.organism import load_organism
from latent_probe.study import Suite, run_study
from latent_probe.study import outputs
org = load_organism(path=sys.argv[1])
suite = Suite("k", ["a red square moving right"], seeds=[0], grid={"steps": [3]})
if sys.argv[3] == "during":   # killed inside the write: after the temporary file is written, before its rename
    real = os.replace
    os.replace = lambda a, b: os._exit(137) if str(b).endswith(".safetensors") else real(a, b)
def generate(job):
    z = org.generate(job.prompt.text, seed=job.seed, num_inference_steps=3)
    if sys.argv[3] == "before":   # killed after the generation, before the sidecar
        os._exit(137)
    outputs.write_job_outputs(sys.argv[2], job.id, z, {"cost": {}})
run_study(suite, generate, org.pipe, sys.argv[2], job_outputs=True, log=None)
"""


@pytest.mark.parametrize("when", ["before", "during"])
def test_a_job_killed_before_or_while_writing_its_sidecar_is_not_complete(weights, tmp_path, when):
    import subprocess
    import sys

    from latent_probe.study import Suite, job_status, run_path
    from latent_probe.study.outputs import outputs_status

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", KILLED_JOB, weights, str(tmp_path), when], env=env, timeout=300)
    assert done.returncode == 137
    job = Suite("k", [PROMPTS[0]], seeds=[0], grid={"steps": [3]}).jobs()[0]
    left = os.listdir(tmp_path / "outputs") if (tmp_path / "outputs").exists() else []
    assert (len(left) == 1 and left[0].endswith(".tmp")) if when == "during" else not left   # no sidecar
    assert "missing" in outputs_status(tmp_path, job.id)
    # the probe publishes the run file when the pipeline returns: complete, but the job is not
    assert job_status(run_path(tmp_path, job.id), job.id).done
    st = job_status(run_path(tmp_path, job.id), job.id, str(tmp_path))
    assert st.state == "incomplete" and "sidecar" in st.detail


def test_write_is_atomic_when_interrupted(tmp_path, monkeypatch):
    from latent_probe.study import outputs

    def boom(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs.os, "fsync", boom)
    with pytest.raises(KeyboardInterrupt):
        outputs.write_job_outputs(tmp_path, "j1", torch.ones(2, 3), {"cost": {}})
    assert os.listdir(tmp_path / "outputs") == []                         # no half file, no temporary file
    assert "missing" in outputs.outputs_status(tmp_path, "j1")


def test_studies_that_cannot_give_a_frontier_are_refused_in_one_line(study, weights, tmp_path, capsys):
    def refused(args, *words):
        capsys.readouterr()
        assert cli.main(args) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and all(w in err for w in words), err

    prompts = tmp_path / "p.txt"
    prompts.write_text(PROMPTS[0] + "\n")
    demo = str(tmp_path / "demo")
    assert cli.main(["study", str(prompts), "--out", demo, "--backend", "demo", "--set", "steps=3"]) == 0
    refused(["suite", demo, "--frontier", "-o", str(tmp_path / "a.html")], "demo backend", "no job times")
    nobase = str(tmp_path / "nobase")
    assert cli.main(["study", str(prompts), "--out", nobase, "--backend", "organism", "--model_path", weights,
                     "--set", "method=steps:3,truncation:2:steps=3", "--capture", "none", "--metrics", "x0"]) == 0
    refused(["suite", nobase, "--frontier", "-o", str(tmp_path / "b.html")], "no setting", "baseline")
    two = str(tmp_path / "two")
    assert cli.main(["study", str(prompts), "--out", two, "--backend", "organism", "--model_path", weights,
                     "--set", "steps=3", "--set", "guidance=3,4", "--capture", "none", "--metrics", "x0"]) == 0
    refused(["suite", two, "--frontier", "-o", str(tmp_path / "c.html")], "both qualify as the baseline")
    refused(["suite", study["out"], demo, "--frontier", "-o", str(tmp_path / "d.html")], "one study folder")
    runs = os.path.join(study["out"], "runs")
    refused(["suite", runs, "--frontier", "-o", str(tmp_path / "e.html")], "no manifest.json")
    # a study recorded before job outputs existed: its run files are complete, its sidecars absent
    old = _copy(study, tmp_path)
    shutil.rmtree(os.path.join(old, "outputs"))
    refused(["suite", old, "--frontier", "-o", str(tmp_path / "f.html")], "12 of 12 jobs",
            "run the same latent-probe study command again")
    capsys.readouterr()
    assert cli.main(["study", str(prompts), "--out", str(tmp_path / "v"), "--backend", "organism",
                     "--sha256", "ab"]) == 2
    assert "--organism small or large" in capsys.readouterr().err
    assert cli.main(["study", str(prompts), "--out", str(tmp_path / "v"), "--backend", "demo",
                     "--organism", "small"]) == 2


@pytest.fixture
def tiny_v2(monkeypatch):
    """Organism v2 "small" shrunk (2 DiT blocks, 6 latent frames, a narrow VAE), random weights: the real pipeline
    and VAE decode; chosen for the study and the frontier through the app's one organism loader."""
    from latent_probe.app import backends
    from latent_probe.organism import model_v2, random_organism_v2

    monkeypatch.setitem(model_v2.SIZES, "small", dict(num_layers=2, num_attention_heads=2, attention_head_dim=8,
                                                       ffn_dim=16, latent_frames=6))     # 21 frames, not 81
    calls = []

    def load(size="v1", path=None, sha256=None, device="cpu", dtype=None):
        calls.append((size, path, sha256))
        assert size == "small"
        return random_organism_v2("small", device=device, vae_config={"base_dim": 8})

    monkeypatch.setattr(backends, "load_organism_model", load)
    return calls


def test_organism_v2_study_and_frontier_score_with_fidelity_v2(tiny_v2, tmp_path):
    from latent_probe.organism import fidelity, fidelity_v2, motion_v2, random_organism_v2, videos_v2

    prompts = tmp_path / "p.txt"
    chosen = (videos_v2.PROMPTS[0], videos_v2.PROMPTS[1])
    prompts.write_text("\n".join(chosen) + "\n")
    out = str(tmp_path / "v2")
    assert cli.main(["study", str(prompts), "--out", out, "--backend", "organism", "--organism", "small",
                     "--seeds", "0,1", "--set", "method=baseline,truncation:3:steps=3", "--capture", "none",
                     "--metrics", "x0"]) == 0
    fixed = json.load(open(os.path.join(out, "manifest.json")))["suite"]["fixed"]
    assert fixed["organism"] == "small" and fixed["sha256"] is None
    frontier = tmp_path / "f.json"
    assert cli.main(["suite", out, "--frontier", "--frontier_out", str(frontier), "-o", str(tmp_path / "s.html"),
                     "--resamples", "200"]) == 0
    assert [c[0] for c in tiny_v2] == ["small", "small"]          # the study's organism, then the scorer's VAE
    doc = json.load(open(frontier))
    assert doc["organism"] == "small" and doc["baseline"] == "method=baseline"
    org = random_organism_v2("small", vae_config={"base_dim": 8})      # the same weights, built independently
    jobs = {j["job_id"]: j for j in manifest_jobs(out)}
    side = {jid: read_job_sidecar(out, jid) for jid in jobs}
    base = {(j["prompt_id"], j["seed"]): jid for jid, j in jobs.items() if j["settings"]["method"] == "baseline"}
    assert {side[b][0]["steps_run"] for b in base.values()} == {40}    # v2's default steps
    rgb = {jid: org.decode(side[jid][1]).permute(3, 0, 1, 2).float() / 255 for jid in jobs}
    for r in doc["clips"]:
        j = jobs[r["job_id"]]
        b = base[(j["prompt_id"], j["seed"])]
        label = videos_v2.PROMPTS.index(chosen[int(j["prompt_id"][1:]) - 1])
        want = fidelity_v2.score_clip(rgb[r["job_id"]], rgb[b], label, motion_v2.measure(rgb[b], label))
        for m in ("psnr", "ssim", "motion_error", "motion_pass", "flicker", "jitter"):
            if not math.isfinite(want[m]):
                assert r.get(m) is None, (m, r.get(m))
            else:
                assert r[m] == pytest.approx(want[m], rel=1e-12, abs=1e-12), m
        if j["settings"]["method"] == "baseline":
            plain = org.generate(chosen[int(j["prompt_id"][1:]) - 1], seed=j["seed"], num_inference_steps=40)
            assert torch.equal(side[r["job_id"]][1], plain)
    pairs = [(base[(p, 0)], base[(p, 1)]) for p in ("p001", "p002")]
    assert doc["floors"]["seed_psnr"]["mean"] == pytest.approx(np.mean([fidelity.psnr(rgb[a], rgb[b])
                                                                        for a, b in pairs]), rel=1e-12)
    assert doc["drawn"][:3] == ["psnr", "motion_error", "motion_pass"]


def test_an_empty_declared_or_frontier_out_name_is_refused_not_ignored(tmp_path, capsys):
    """`--declared ""` used to switch the comparisons off silently (exit 0); refused before any run is read."""
    for opt in ("--declared", "--frontier_out"):
        assert cli.main(["suite", str(tmp_path), "--frontier", opt, "", "-o", str(tmp_path / "s.html")]) == 1
        assert f"{opt} needs a file name" in capsys.readouterr().err and not (tmp_path / "s.html").exists()
