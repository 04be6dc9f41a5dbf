"""``latent-probe study --mag_calibrate SEEDS`` (issue 19, item 7): MagCache in the one-command frontier. The
calibration it runs first equals the two-step path (a ``--record_residuals`` study at those seeds, then
``latent-probe calibrate``) file for file; its mag_cache jobs equal a study given those files with
``--mag_config``; a rerun reuses it without generating; an interrupted one leaves nothing that reads as complete;
a calibration made from other inputs, or edited since, is refused in one line. A tiny random-weight organism."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import manifest_jobs, read_job_sidecar
from latent_probe.app import cli

PROMPTS = ("a red square moving right", "a blue disc moving left")
STEPS = 4
THRESHOLD = 0.5            # on the tiny organism this skips blocks (checked below: a test that cannot fail is a defect)


def _study(prompts, out, weights, *extra, methods=f"baseline,mag_cache:{THRESHOLD}"):
    return ["study", str(prompts), "--out", str(out), "--backend", "organism", "--model_path", weights,
            "--seeds", "0", "--set", f"steps={STEPS}", "--set", f"method={methods}", "--capture", "none",
            "--metrics", "x0", "--name", "st", *extra]


class Counter:
    """Counts the organism's generations (OrganismBackend.generate), optionally failing the n-th one."""

    def __init__(self, fail_at: int | None = None):
        from latent_probe.app.backends import OrganismBackend

        self.calls, self.fail_at, self.real = 0, fail_at, OrganismBackend.generate

    def __call__(self, backend, *args, **kw):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise RuntimeError("killed for the test")
        return self.real(backend, *args, **kw)


def _counting(fail_at=None):
    mp = pytest.MonkeyPatch()
    counter = Counter(fail_at)
    mp.setattr("latent_probe.app.backends.OrganismBackend.generate",
               lambda backend, *a, **kw: counter(backend, *a, **kw))    # a function: bound as a method
    return mp, counter


@pytest.fixture(scope="module")
def auto(tmp_path_factory, weights):
    """A study calibrated in one command, after a first attempt killed during its third calibration clip."""
    folder = tmp_path_factory.mktemp("magcal")
    prompts = folder / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = folder / "st"
    mp, counter = _counting(fail_at=3)
    try:
        assert cli.main(_study(prompts, out, weights, "--mag_calibrate", "100-101")) == 1
    finally:
        mp.undo()
    cal = out / "calibration"
    interrupted = {"record": (cal / "calibration.json").exists(), "configs": glob.glob(str(cal / "magcache-*")),
                   "main_jobs": (out / "manifest.json").exists(), "calls": counter.calls}
    mp, counter = _counting()
    try:
        assert cli.main(_study(prompts, out, weights, "--mag_calibrate", "100-101")) == 0
    finally:
        mp.undo()
    return {"out": str(out), "cal": str(cal), "prompts": prompts, "folder": folder, "interrupted": interrupted,
            "calls": counter.calls}


@pytest.fixture(scope="module")
def two_step(auto, weights):
    """The same calibration by hand: a --record_residuals study at the calibration seeds, then calibrate."""
    folder = auto["folder"]
    cal = folder / "by_hand"
    assert cli.main(["study", str(auto["prompts"]), "--out", str(cal), "--backend", "organism", "--model_path",
                     weights, "--seeds", "100-101", "--set", f"steps={STEPS}", "--record_residuals",
                     "--capture", "none", "--metrics", "x0"]) == 0
    mag = folder / "mag.json"
    assert cli.main(["calibrate", str(cal), "--method", "magcache", "-o", str(mag),
                     "--setting", f"steps={STEPS}"]) == 0
    return {e: str(folder / f"mag.{e}.json") for e in ("transformer", "transformer_2", "report")}


def test_an_interrupted_calibration_leaves_nothing_that_reads_complete_and_is_finished_on_the_rerun(auto):
    seen = auto["interrupted"]
    assert seen["calls"] == 4        # 4 calibration clips attempted (the third failed), no study job ran
    assert not seen["record"] and not seen["configs"] and not seen["main_jobs"]
    # the rerun: the failed calibration clip, then the study's 4 jobs; the 3 complete clips were not redone
    assert auto["calls"] == 1 + 4
    jobs = manifest_jobs(auto["out"])
    assert len(jobs) == 4 and all(j["seed"] == 0 for j in jobs)       # the calibration clips are not the study's
    assert len(manifest_jobs(auto["cal"])) == 4 and {j["seed"] for j in manifest_jobs(auto["cal"])} == {100, 101}


def test_the_study_folder_lists_its_own_runs_not_the_calibration_clips(auto):
    from latent_probe.study.recompute import expand_paths

    mine = {os.path.join(auto["out"], "runs", f"{j['job_id']}.h5") for j in manifest_jobs(auto["out"])}
    for spelling in (auto["out"], auto["out"] + os.sep):
        assert set(expand_paths(spelling)) == mine and len(mine) == 4
    cal = {os.path.join(auto["cal"], "runs", f"{j['job_id']}.h5") for j in manifest_jobs(auto["cal"])}
    assert set(expand_paths(auto["cal"])) == cal and len(cal) == 4
    assert set(expand_paths(os.path.dirname(auto["out"]))) >= mine | cal     # a folder of studies: all of them


def test_auto_calibration_equals_the_two_step_path_bit_for_bit(auto, two_step):
    cal = auto["cal"]
    for name in ("transformer", "transformer_2", "report"):
        mine = json.load(open(os.path.join(cal, f"magcache-steps{STEPS}.{name}.json")))
        theirs = json.load(open(two_step[name]))
        assert mine == theirs, name                       # every float equal, after the JSON round trip
    cfg = json.load(open(two_step["transformer_2"]))
    from diffusers.hooks import MagCacheConfig

    assert MagCacheConfig(**cfg).num_inference_steps == cfg["num_inference_steps"] and len(cfg["mag_ratios"]) > 1
    record = json.load(open(os.path.join(cal, "calibration.json")))
    assert record["inputs"]["seeds"] == [100, 101] and record["inputs"]["settings"] == [{"steps": STEPS}]
    assert record["inputs"]["prompts"] == [["p001", PROMPTS[0]], ["p002", PROMPTS[1]]]


def test_mag_cache_jobs_equal_a_study_given_the_files_with_mag_config(auto, two_step, weights):
    out = auto["folder"] / "given"
    assert cli.main(_study(auto["prompts"], out, weights, "--mag_config", f"transformer={two_step['transformer']}",
                           "--mag_config", f"transformer_2={two_step['transformer_2']}",
                           methods=f"mag_cache:{THRESHOLD}")) == 0
    given = {(j["prompt_id"], j["seed"]): j["job_id"] for j in manifest_jobs(out)}
    mine = [j for j in manifest_jobs(auto["out"]) if j["settings"]["method"].startswith("mag_cache")]
    assert len(mine) == 2
    for j in mine:
        rec, z = read_job_sidecar(auto["out"], j["job_id"])
        grec, gz = read_job_sidecar(str(out), given[(j["prompt_id"], j["seed"])])
        assert torch.equal(z, gz)                                              # bit for bit
        counts = {k: v for k, v in rec["skips"].items() if k != "dit_s"}          # what was computed, not timed
        assert counts == {k: v for k, v in grec["skips"].items() if k != "dit_s"}
        assert counts["units_skipped"] > 0                                        # and it did skip
        base = next(b for b in manifest_jobs(auto["out"]) if b["settings"]["method"] == "baseline"
                    and b["prompt_id"] == j["prompt_id"])
        assert not torch.equal(z, read_job_sidecar(auto["out"], base["job_id"])[1])


def _mtimes(folder):
    return {p: os.stat(p).st_mtime_ns for p in glob.glob(os.path.join(folder, "**", "*"), recursive=True)}


def test_a_rerun_reuses_the_calibration_without_generating(auto, weights):
    out = auto["folder"] / "rerun"
    shutil.copytree(auto["out"], out)
    before = _mtimes(out / "calibration")
    mp, counter = _counting()
    try:   # one more mag_cache setting: its 2 jobs run, with the calibration as it is
        assert cli.main(_study(auto["prompts"], out, weights, "--mag_calibrate", "100-101",
                               methods=f"baseline,mag_cache:{THRESHOLD},mag_cache:0.8")) == 0
    finally:
        mp.undo()
    assert counter.calls == 2 and _mtimes(out / "calibration") == before
    # a record lost after the configs were written (killed at the last step): recomputed from the clips, unchanged
    config = out / "calibration" / f"magcache-steps{STEPS}.transformer.json"
    text = config.read_bytes()
    os.unlink(out / "calibration" / "calibration.json")
    mp, counter = _counting()
    try:
        assert cli.main(_study(auto["prompts"], out, weights, "--mag_calibrate", "100-101")) == 0
    finally:
        mp.undo()
    assert counter.calls == 0 and (out / "calibration" / "calibration.json").exists()
    assert config.read_bytes() == text


def _refused(capsys, argv, *needles):
    mp, counter = _counting()
    try:
        code = cli.main(argv)
    finally:
        mp.undo()
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code in (1, 2) and len(lines) == 1 and counter.calls == 0, (code, err)
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_a_mismatched_or_edited_calibration_is_refused_before_anything_runs(auto, weights, capsys):
    folder = auto["folder"]
    # another study folder holding this calibration, asked for other calibration seeds
    other = folder / "other"
    shutil.copytree(auto["cal"], other / "calibration")
    _refused(capsys, _study(auto["prompts"], other, weights, "--mag_calibrate", "102-103"),
             "calibrated with seeds=[100, 101]", "[102, 103]")
    # the same folder, another step count for the mag_cache jobs
    _refused(capsys, ["study", str(auto["prompts"]), "--out", str(other), "--backend", "organism", "--model_path",
                      weights, "--seeds", "0", "--set", "steps=3", "--set", "method=mag_cache:0.5",
                      "--mag_calibrate", "100-101", "--capture", "none", "--metrics", "x0"],
             "calibrated with settings=")
    # one prompt fewer
    one = folder / "one.txt"
    one.write_text(PROMPTS[0] + "\n")
    _refused(capsys, _study(one, other, weights, "--mag_calibrate", "100-101"), "calibrated with prompts=")
    # a config edited after the calibration wrote it
    edited = folder / "edited"
    shutil.copytree(auto["out"], edited)
    path = edited / "calibration" / f"magcache-steps{STEPS}.transformer.json"
    doc = json.loads(path.read_text())
    doc["mag_ratios"][1] *= 1.01
    path.write_text(json.dumps(doc, indent=1))
    _refused(capsys, _study(auto["prompts"], edited, weights, "--mag_calibrate", "100-101"), "SHA-256")
    _refused(capsys, _study(auto["prompts"], edited, weights, "--mag_calibrate", "100-101", "--dry_run"), "SHA-256")


def test_entry_refusals(weights, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text(PROMPTS[0] + "\n")
    out = tmp_path / "x"
    _refused(capsys, _study(prompts, out, weights, "--mag_calibrate", "0-1"), "share seed 0")
    _refused(capsys, _study(prompts, out, weights), "--mag_calibrate SEEDS", "--mag_config")
    _refused(capsys, _study(prompts, out, weights, "--mag_calibrate", "5", methods="baseline,steps:2"),
             "none is set")
    _refused(capsys, _study(prompts, out, weights, "--mag_calibrate", "5", "--mag_config", "transformer=a.json"),
             "give one of them")
    _refused(capsys, _study(prompts, out, weights, "--mag_calibrate", "five"), "--mag_calibrate 'five'")
    _refused(capsys, _study(prompts, out, weights, "--mag_calibrate", "5", "--shard", "0/2"), "without --shard")
    _refused(capsys, ["study", str(prompts), "--out", str(out), "--backend", "demo", "--mag_calibrate", "5"],
             "organism backend")
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="torchrun test uses gloo on linux")
def test_torchrun_two_ranks_calibrate_once_and_agree(auto, weights, tmp_path):
    out = tmp_path / "st"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(cli.__file__))))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "latent_probe", *_study(auto["prompts"], out, weights, "--mag_calibrate", "100-101")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for name in ("transformer", "transformer_2", "report"):
        file = f"magcache-steps{STEPS}.{name}.json"
        assert json.load(open(out / "calibration" / file)) == json.load(open(os.path.join(auto["cal"], file)))
    done = [ln for ln in res.stdout.splitlines() if "-s10" in ln and " done" in ln]
    assert len(done) == 4 and {ln.split()[1] for ln in done} == {"0", "1"}, res.stdout   # each clip once
    mine = {j["job_id"] for j in manifest_jobs(str(out))}
    for j in mine:
        assert torch.equal(read_job_sidecar(str(out), j)[1], read_job_sidecar(auto["out"], j)[1])
