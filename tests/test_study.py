"""Studies (latent_probe.study, ``latent-probe study``): job ids, prompt files, manifest, resume after SIGKILL,
data parallel and all-ranks-together under torchrun (gloo, CPU)."""

from __future__ import annotations

import json
import os
import time
import re
import runpy
import signal
import subprocess
import sys

import pytest

from latent_probe import open_run
from latent_probe.app import cli
from latent_probe.study import (Prompt, StudyError, Suite, job_status, parse_seeds, parse_setting, read_prompts,
                                run_path, run_study)

HERE = os.path.dirname(__file__)
STANDIN = os.path.join(HERE, "wan_standin")
ROOT = os.path.dirname(HERE)

# A worker run in subprocesses (plain Python, or torchrun): a tiny flow-matching denoiser and Euler scheduler,
# no diffusers import, so each process starts fast. Every generate call appends the job id to a log file.
WORKER = r'''
import os, signal, sys, time
import torch
from latent_probe.parameterization import SchedulerRule, register_scheduler
from latent_probe.study import Prompt, StudyError, Suite, run_path, run_study

RANK = int(os.environ.get("RANK", "0"))


class FlowEuler:
    config = {"prediction_type": "flow_prediction", "use_flow_sigmas": True}

    def set_timesteps(self, n):
        self.sigmas = torch.linspace(1.0, 0.0, n + 1)
        self.timesteps = self.sigmas[:-1] * 1000
        self.step_index = 0

    def step(self, model_output, timestep, sample, return_dict=False):
        i = self.step_index
        self.step_index += 1
        return (sample + (self.sigmas[i + 1] - self.sigmas[i]) * model_output,)


register_scheduler(FlowEuler, SchedulerRule())  # a hand-written flow Euler: its σ convention declared


class Denoiser(torch.nn.Module):
    def forward(self, x, t):
        return x * 0.5 - t.view(-1, 1, 1, 1, 1) / 1000


def suite(name="resume"):
    prompts = [Prompt(f"p{i}", f"prompt number {i}") for i in range(4)]
    return Suite(name, prompts, seeds=[0, 1, 2], grid={"steps": [2, 3]})  # 4 x 3 x 2 = 24 jobs


model, sched = Denoiser(), FlowEuler()


def make_generate(out, log, kill_at=-1, fail_rank=None):
    def generate(job):
        with open(log, "a") as fh:
            fh.write(job.id + "\n")
        if fail_rank == RANK:
            raise RuntimeError(f"boom on rank {RANK}")
        sched.set_timesteps(job.settings["steps"])
        x = torch.randn(1, 4, 3, 4, 4, generator=torch.Generator().manual_seed(job.seed))
        for i, t in enumerate(sched.timesteps):
            x = sched.step(model(x, t.expand(1)), t, x)[0]
            if job.index == kill_at and i == 0:  # killed mid-job, once its first step is committed
                deadline = time.time() + 20
                while not os.path.exists(run_path(out, job.id)) and time.time() < deadline:
                    time.sleep(0.01)
                os.kill(os.getpid(), signal.SIGKILL)
    return generate


MODE = sys.argv[1] if __name__ == "__main__" else "library"  # runpy.run_path(...) in the test: definitions only
if MODE != "library":
    OUT, LOGS = sys.argv[2], sys.argv[3]
    torch.set_num_threads(1)
if MODE == "serial":
    run_study(suite(), make_generate(OUT, os.path.join(LOGS, "serial.log"), int(sys.argv[4])), (model, sched), OUT)
    print("finished", flush=True)
elif MODE == "torchrun":
    # A: data parallel, one process per job share
    r = run_study(suite(), make_generate(OUT, os.path.join(LOGS, f"dp-rank{RANK}.log")), (model, sched), OUT)
    assert r.world_size == 2 and not r.failed, r
    # C: rank 1 fails at once (on_error="raise"); rank 0 must stop waiting for it, not hang
    t0 = time.time()
    try:
        run_study(suite("failing"), make_generate(OUT + "-fail", os.path.join(LOGS, f"fail-rank{RANK}.log"),
                                                  fail_rank=1), (model, sched), OUT + "-fail", on_error="raise",
                  log=None)
    except RuntimeError as exc:
        assert RANK == 1 and "boom on rank 1" in str(exc), exc
    except StudyError as exc:
        assert RANK == 0 and "rank 1: RuntimeError: boom on rank 1" in str(exc), exc
    else:
        raise AssertionError("the failure went unnoticed")
    print(f"rank {RANK} failure seen after {time.time() - t0:.1f} s", flush=True)
    # B: all ranks run each job together (a process group, as Wan2.2 FSDP / Ulysses has); rank 0 records
    import torch.distributed as dist
    sys.path.insert(0, sys.argv[4])
    import wan
    from wan.configs import tiny_t2v_config
    dist.init_process_group("gloo")
    t2v = wan.WanT2V(tiny_t2v_config())
    glog = os.path.join(LOGS, f"group-rank{RANK}.log")

    def generate(job):
        with open(glog, "a") as fh:
            fh.write(job.id + "\n")
        t2v.generate(job.prompt.text, size=(64, 64), frame_num=9, sampling_steps=job.settings["steps"],
                     seed=job.seed, offload_model=False)  # ends with dist.barrier(), as the real one

    g = Suite("group", [Prompt("fox", "a fox")], seeds=[0, 1], grid={"steps": [2]})
    r = run_study(g, generate, t2v, OUT + "-group", mode="group")
    assert not r.failed and (r.done if RANK == 0 else not r.done), r
    dist.destroy_process_group()
    # D: the command line, data parallel (demo backend)
    from latent_probe.app import cli
    code = cli.main(["study", os.path.join(LOGS, "prompts.txt"), "--out", OUT + "-cli", "--backend", "demo",
                     "--seeds", "0-1", "--set", "steps=2", "--set", "frames=2"])
    assert code == 0, code
    print(f"rank {RANK} ok", flush=True)
'''


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    path = tmp_path_factory.mktemp("worker") / "study_worker.py"
    path.write_text(WORKER)
    return str(path)


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _log(path) -> list[str]:
    return path.read_text().split() if path.exists() else []


# ----------------------------------------------------------------------------- ids, prompts, settings
def test_job_ids_are_stable_readable_and_change_with_the_job():
    p = [Prompt("p003", "a fox"), Prompt("cat", "a cat")]
    a = Suite("s", p, seeds=[2, 5], grid={"steps": [30, 40], "truncation": ["none", "keep3"]}).jobs()
    b = Suite("other name", p, seeds=[2, 5], grid={"truncation": ["none", "keep3"], "steps": [30, 40]}).jobs()
    assert len(a) == 2 * 2 * 2 * 2 and len({j.id for j in a}) == len(a)
    assert {j.id for j in a} == {j.id for j in b}  # same jobs → same ids (--set order and suite name aside)
    one = next(j for j in a if j.prompt_id == "p003" and j.seed == 2 and j.settings == {"steps": 30,
                                                                                      "truncation": "keep3"})
    assert re.fullmatch(r"p003-s2-steps30-keep3-[0-9a-f]{8}", one.id), one.id
    changed = Suite("s", p, seeds=[2], grid={"steps": [31], "truncation": ["keep3"]}).jobs()[0]
    assert changed.id.startswith("p003-s2-steps31-keep3-") and changed.id[-8:] != one.id[-8:]
    reworded = Suite("s", [Prompt("p003", "a red fox")], seeds=[2], grid={"steps": [30], "truncation": ["keep3"]})
    assert reworded.jobs()[0].id != one.id  # the prompt's text is part of the hash
    attrs = one.attrs("s")
    assert attrs == {"study": "s", "job_id": one.id, "prompt_id": "p003", "prompt": "a fox", "seed": 2,
                     "setting_steps": 30, "setting_truncation": "keep3"}


def test_settings_and_seeds_parse_or_refuse_in_one_line():
    assert parse_setting("steps=20,30,40") == ("steps", [20, 30, 40])
    assert parse_setting("guidance=3.5, 5") == ("guidance", [3.5, 5.0])
    assert parse_setting("truncation=none,keep3,keep2@boundary,keep3@10") == (
        "truncation", ["none", "keep3", "keep2", "keep3@10"])
    assert parse_seeds("0,2,5-7") == [0, 2, 5, 6, 7]
    for bad in ("steps", "colour=red", "steps=a", "steps=2,,3", "steps=3,3", "truncation=half", "truncation=keep0"):
        with pytest.raises(StudyError) as e:
            parse_setting(bad)
        assert "\n" not in str(e.value)
    for bad in ("x", "3-1", "1,1", "-2"):
        with pytest.raises(StudyError):
            parse_seeds(bad)
    ids = [j.id for j in Suite("s", ["a"], grid={"truncation": ["none", "keep3@10"]}).jobs()]
    assert ids[0].startswith("p001-s0-notrunc-") and ids[1].startswith("p001-s0-keep3to10-")


def test_prompt_files_text_csv_json_and_bad_ones(tmp_path):
    (tmp_path / "p.txt").write_text("# prompts\na red fox\n\n  a blue cat  \n")
    assert [(p.id, p.text) for p in read_prompts(tmp_path / "p.txt")] == [("p001", "a red fox"), ("p002", "a blue cat")]
    (tmp_path / "p.csv").write_text('id,prompt,image\nfox,"a fox, running",frames/fox.png\n,a cat,\n')
    fox, cat = read_prompts(tmp_path / "p.csv")
    assert (fox.id, fox.text, fox.image) == ("fox", "a fox, running", "frames/fox.png")
    assert fox.image_file == str(tmp_path / "frames" / "fox.png") and (cat.id, cat.image) == ("p002", None)
    (tmp_path / "p.json").write_text(json.dumps([{"id": "a", "prompt": "x", "image": "i.png"}, "y"]))
    assert [(p.id, p.text, p.image) for p in read_prompts(tmp_path / "p.json")] == [("a", "x", "i.png"),
                                                                                  ("p002", "y", None)]
    bad = {
        "empty.txt": ("# nothing\n\n", "no prompt"),
        "nocol.csv": ("id,text\na,b\n", "no 'prompt' column"),
        "typo.csv": ("id,prompt,imgae\na,b,c\n", "unknown field 'imgae'"),
        "dup.csv": ("id,prompt\na,x\na,y\n", "used twice"),
        "badid.csv": ("id,prompt\na/b,x\n", "prompt id 'a/b'"),
        "blank.csv": ("id,prompt\na,\n", "line 2: no prompt text"),
        "obj.json": ('{"prompt": "x"}', "expected a JSON list"),
        "broken.json": ("[{", "not JSON"),
        "item.json": ("[3]", "item 0"),
    }
    for name, (content, message) in bad.items():
        (tmp_path / name).write_text(content)
        with pytest.raises(StudyError, match=re.escape(message)) as e:
            read_prompts(tmp_path / name)
        assert "\n" not in str(e.value), name
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(StudyError, match="not UTF-8"):
        read_prompts(tmp_path / "latin1.txt")
    with pytest.raises(StudyError, match="No such file"):
        read_prompts(tmp_path / "missing.txt")


# ----------------------------------------------------------------------------- resume after SIGKILL
def test_killed_study_resumes_exactly_the_missing_jobs(tmp_path, worker):
    out, logs = tmp_path / "out", tmp_path / "logs"
    logs.mkdir()
    w = runpy.run_path(worker)  # the worker's definitions, in this process
    jobs = w["suite"]().jobs()
    ids = [j.id for j in jobs]
    kill_at = 9  # a steps=3 job: it dies after its first step is committed
    res = subprocess.run([sys.executable, worker, "serial", str(out), str(logs), str(kill_at)],
                         capture_output=True, text=True, timeout=120, env=_env())
    assert res.returncode == -signal.SIGKILL, res.stdout[-2000:] + res.stderr[-2000:]
    assert _log(logs / "serial.log") == ids[:kill_at + 1]
    states = [job_status(run_path(out, i), i).state for i in ids]
    assert states == ["complete"] * kill_at + ["incomplete"] + ["missing"] * (len(ids) - kill_at - 1)
    with open_run(run_path(out, ids[kill_at])) as run:
        assert 1 <= run.num_steps < 3 and not run.complete and not run.recording
    manifest = json.loads((out / "manifest.json").read_text())
    assert [j["job_id"] for j in manifest["jobs"]] == ids and manifest["suite"]["seeds"] == [0, 1, 2]
    assert manifest["jobs"][5]["settings"] == jobs[5].settings and manifest["jobs"][5]["prompt_id"] == "p0"
    assert not [n for n in os.listdir(out) if n.startswith(".manifest")]  # no temp file left
    # an unreadable file (garbage where a run was) is redone too
    (out / "runs" / f"{ids[3]}.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"garbage" * 100)
    before = {i: (open(run_path(out, i), "rb").read(), os.stat(run_path(out, i)).st_mtime_ns)
              for i in ids[:kill_at] if i != ids[3]}
    (logs / "serial.log").unlink()
    stale = out / "runs" / f".{ids[12]}.h5.0123456789ab.partial.h5"  # what a job killed before its first step leaves
    stale.write_bytes(b"")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))  # left by a run killed an hour ago
    lines: list[str] = []  # the rerun, in this process
    result = run_study(w["suite"](), w["make_generate"](str(out), str(logs / "serial.log")), (w["model"], w["sched"]),
                       out, log=lines.append)
    assert result.ok and len(result.skipped) == kill_at - 1 and len(result.done) == 24 - kill_at + 1
    redone = _log(logs / "serial.log")
    assert redone == [ids[3]] + ids[kill_at:], "exactly the unreadable, incomplete and missing jobs, once each"
    for i, (data, mtime) in before.items():  # complete files untouched, bit for bit
        assert open(run_path(out, i), "rb").read() == data and os.stat(run_path(out, i)).st_mtime_ns == mtime
    assert all(job_status(run_path(out, i), i).done for i in ids)
    stdout = "\n".join(lines)
    assert sum("skipped (complete)" in ln for ln in lines) == kill_at - 1
    assert any(ids[kill_at] in ln and "redone (incomplete" in ln for ln in lines)
    assert any(ids[3] in ln and "redone (unreadable" in ln for ln in lines)
    assert re.search(rf"\[11/24\] {ids[10]}  \d+\.\d s  done", stdout)
    assert "24 of 24 jobs complete" in stdout
    with open_run(run_path(out, ids[kill_at])) as run:
        a = run.attrs
        assert run.complete and run.num_steps == 3
        assert (a["study"], a["job_id"], a["prompt_id"], a["seed"], a["setting_steps"]) == (
            "resume", ids[kill_at], jobs[kill_at].prompt_id, jobs[kill_at].seed, 3)
    assert not stale.exists() and not [n for n in os.listdir(out / "runs") if n.startswith(".")]
    # a third run has nothing to do
    result = run_study(w["suite"](), lambda job: pytest.fail("a complete job was run again"), None, out, log=None)
    assert result.ok and len(result.skipped) == 24 and not result.done


# ----------------------------------------------------------------------------- torchrun
@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="torchrun test uses gloo on linux")
def test_torchrun_data_parallel_each_job_once_and_group_mode(tmp_path, worker):
    out, logs = tmp_path / "out", tmp_path / "logs"
    logs.mkdir()
    w = runpy.run_path(worker)
    ids = [j.id for j in w["suite"]().jobs()]
    # five jobs done beforehand, in this process: the launch must leave them alone
    gen = w["make_generate"](str(out), str(tmp_path / "pre.log"))
    pre = run_study(w["suite"](), gen, (w["model"], w["sched"]), out, shard=(0, 5), log=None)
    assert pre.done == ids[::5]
    mtimes = {i: os.stat(run_path(out, i)).st_mtime_ns for i in pre.done}
    (logs / "prompts.txt").write_text("a fox\na cat\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", worker,
           "torchrun", str(out), str(logs), STANDIN]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=_env())
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "rank 0 ok" in res.stdout and "rank 1 ok" in res.stdout
    r0, r1 = _log(logs / "dp-rank0.log"), _log(logs / "dp-rank1.log")
    assert r0 and r1 and len(set(r0)) == len(r0) and len(set(r1)) == len(r1), "a job ran twice on one rank"
    assert not set(r0) & set(r1), "a job ran on both ranks"
    assert set(r0) | set(r1) == set(ids) - set(ids[::5]), "every pending job once, the complete ones never"
    assert all(job_status(run_path(out, i), i).done for i in ids)
    assert {i: os.stat(run_path(out, i)).st_mtime_ns for i in pre.done} == mtimes
    with open_run(run_path(out, r1[0])) as run:  # rank 1 wrote its own files
        assert run.complete and run.attrs["job_id"] == r1[0]
    assert len(json.loads((out / "manifest.json").read_text())["jobs"]) == 24
    # a failing rank: the other one stopped waiting (see the worker), quickly
    seen = [float(m) for m in re.findall(r"rank \d failure seen after ([\d.]+) s", res.stdout)]
    assert len(seen) == 2 and max(seen) < 60, res.stdout
    # group mode: both ranks ran every job, in the same order; rank 0 alone wrote the files
    g0, g1 = _log(logs / "group-rank0.log"), _log(logs / "group-rank1.log")
    assert g0 == g1 and len(g0) == 2
    # the command line under torchrun: each job on one rank, every file complete, progress lines per rank
    cli_jobs = [j["job_id"] for j in json.loads((tmp_path / "out-cli" / "manifest.json").read_text())["jobs"]]
    ran = re.findall(r"rank (\d) \[\d/4\] (\S+)  \d+\.\d s  done", res.stdout)
    assert sorted(i for _, i in ran) == sorted(cli_jobs) and {r for r, _ in ran} == {"0", "1"}, res.stdout
    assert "4 of 4 jobs complete" in res.stdout
    group_dir = tmp_path / "out-group" / "runs"
    assert sorted(os.listdir(group_dir)) == sorted(f"{i}.h5" for i in g0)
    for i in g0:
        with open_run(group_dir / f"{i}.h5") as run:
            assert run.complete and run.num_steps == 2 and run.attrs["study"] == "group"


# ----------------------------------------------------------------------------- the command line
def _cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("latent-probe study: error: "), err
    return lines[0]


def test_cli_demo_suite_resume_dry_run_and_refusals(capsys, tmp_path):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("id,prompt\nfox,a fox\ncat,a cat\n")
    out = tmp_path / "suite"
    base = ["study", prompts, "--out", out, "--backend", "demo", "--seeds", "0,1", "--set", "steps=2,3",
            "--set", "frames=2"]
    code, stdout, err = _cli(capsys, *base)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    ids = [j["job_id"] for j in manifest["jobs"]]
    assert len(ids) == 8 and manifest["suite"]["name"] == "suite" and manifest["suite"]["fixed"]["backend"] == "demo"
    assert re.search(rf"\[1/8\] {ids[0]}  \d+\.\d s  done", stdout) and "8 of 8 jobs complete" in stdout
    with open_run(run_path(out, ids[-1])) as run:
        a = run.attrs
        assert run.complete and run.num_steps == 3 and a["simulated"]
        assert (a["study"], a["prompt_id"], a["prompt"], a["seed"], a["setting_steps"], a["setting_frames"]) == (
            "suite", "cat", "a cat", 1, 3, 2)
        assert run.latents("x0").shape[3] == 2
    code, stdout, err = _cli(capsys, *base)
    assert code == 0 and stdout.count("skipped (complete)") == 8 and " done" not in stdout.replace("8 jobs", "")
    os.unlink(run_path(out, ids[2]))
    code, stdout, err = _cli(capsys, *base, "--dry_run")
    assert code == 0 and f"{ids[2]}  missing" in stdout and stdout.count("  complete") == 7
    assert not os.path.exists(run_path(out, ids[2]))  # a dry run generates nothing
    # a rerun with another fixed option into the same folder is refused: its files would be taken as done
    code, stdout, err = _cli(capsys, *base, "--store_dtype", "float32")
    assert code == 1 and "store_dtype='float16'" in _one_line(err)
    usage = [(["--set", "colour=red"], "unknown setting"), (["--set", "guidance=3"], "demo backend takes"),
             (["--set", "steps=4"], "given twice"), (["--seeds", "x"], "--seeds"), (["--shard", "3/2"], "--shard"),
             (["--ulysses_size", "2"], "wan backend")]
    for extra, message in usage:
        code, _, err = _cli(capsys, *base, *extra)
        assert code == 2 and message in _one_line(err), (extra, err)
    (tmp_path / "bad.json").write_text("{}")
    code, _, err = _cli(capsys, "study", tmp_path / "bad.json", "--out", out, "--backend", "demo")
    assert code == 1 and "expected a JSON list" in _one_line(err)


def test_cli_parallel_layouts():
    from latent_probe.app.cli import UsageError
    from latent_probe.app.study_cmd import check_parallel

    assert check_parallel(1, "demo", False, False, 1, False) == "data"
    assert check_parallel(8, "wan", False, False, 1, True) == "data"
    assert check_parallel(4, "wan", True, True, 4, False) == "group"
    assert check_parallel(2, "wan", True, False, 1, True) == "group"  # FSDP alone: truncation is fine
    for args, message in [((8, "wan", False, False, 4, False), "spans every rank"),
                          ((1, "wan", True, False, 1, False), "several processes"),
                          ((2, "diffusers", True, False, 1, False), "wan backend"),
                          ((2, "wan", False, False, 2, True), "truncation")]:
        with pytest.raises(UsageError, match=message):
            check_parallel(*args)


def test_cli_help_covers_every_option():
    parser = cli.build_parser()
    study = parser._subparsers._group_actions[0].choices["study"]
    missing = [a.dest for a in study._actions if not a.help]
    assert not missing, missing


def test_wan_standin_truncation_settings_and_a_failed_job(capsys, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a fox\n")
    out = tmp_path / "wan"
    code, stdout, err = _cli(capsys, "study", prompts, "--out", out, "--backend", "wan", "--wan_repo", STANDIN,
                             "--wan_config", "tiny", "--size", "64*64", "--set", "frames=9", "--set", "steps=3",
                             "--set", "truncation=none,keep2", "--set", "guidance=3")
    assert code == 0, err
    ids = [j["job_id"] for j in json.loads((out / "manifest.json").read_text())["jobs"]]
    assert [i.rsplit("-", 1)[0] for i in ids] == ["p001-s0-frames9-steps3-cfg3-notrunc",
                                                  "p001-s0-frames9-steps3-cfg3-keep2"]
    with open_run(run_path(out, ids[0])) as base, open_run(run_path(out, ids[1])) as trunc:
        assert "intervention" not in base.attrs and trunc.attrs["intervention"]["keep"] == 2
        assert trunc.attrs["setting_truncation"] == "keep2" and trunc.attrs["setting_guidance"] == 3.0
        assert set(base.guidance_scales) == {3.0} and base.attrs["task"] == "t2v-A14B"
    # Python API: a job that raises is noted, its file left incomplete, and the others go on
    calls = []
    from latent_probe.app.study_cmd import DemoModel

    demo = DemoModel()

    def demo_generate(job):
        calls.append(job.id)
        if job.seed == 1:
            raise RuntimeError("no memory")
        demo.generate(job, 2, 2)

    r = run_study(Suite("s", ["x"], seeds=[0, 1, 2]), demo_generate, demo.target, tmp_path / "fail", log=None)
    assert len(calls) == 3 and len(r.done) == 2 and [e for _, e in r.failed] == ["RuntimeError: no memory"]
    assert not r.ok and job_status(run_path(tmp_path / "fail", r.failed[0][0])).state in ("missing", "incomplete")
