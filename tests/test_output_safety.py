"""Output for spreadsheets and terminals is safe (issue 8, item 6).

A run whose expert names and attributes are hostile: CSV cells never start a spreadsheet formula (numbers,
negative ones too, stay numbers), and the CLI never prints a raw control character.
"""

from __future__ import annotations

import csv
import io
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from latent_probe.app import cli

EXPERTS = ['=HYPERLINK("http://evil","x")', "+1", "-cmd", "@SUM(A1)", "\tTAB", "\rCR",
           "\x1b[31mred\x1b[0m", "a\x07b\x9bc\x7fd", "two\nlines", "ok\r=EVIL()"]
PROMPT = "\x1b[31mred\x1b[0m a\x07b =cmd"
DANGEROUS = ("=", "+", "-", "@", "\t", "\r")
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")  # any control character except the newline


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    """A run of one step per hostile expert name, with a hostile prompt."""
    from diffusers import UniPCMultistepScheduler

    from latent_probe.demo import AnalyticDenoiser, moving_pattern_video
    from latent_probe.probe import LatentProbe

    path = tmp_path_factory.mktemp("hostile") / "run.h5"
    clean = moving_pattern_video(frames=5, channels=4, height=8, width=8)
    experts = {name: AnalyticDenoiser(clean, seed=i + 1) for i, name in enumerate(EXPERTS)}
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0,
                                        num_train_timesteps=1000)
    scheduler.set_timesteps(len(EXPERTS))
    x = torch.randn(clean.shape, generator=torch.Generator().manual_seed(2))
    probe = LatentProbe((experts, scheduler), path, overwrite=True, attrs={"prompt": PROMPT, "label": "=1+2"})
    with probe, torch.no_grad():
        for name, t in zip(EXPERTS, scheduler.timesteps):
            x = scheduler.step(experts[name](x, t.expand(1)), t, x, return_dict=False)[0]
    probe.run.close()
    return str(path)


def run_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_terminal_safe(text: str) -> None:
    raw = RAW_CONTROL.findall(text)
    assert not raw, f"raw control characters {raw!r} in {text!r}"


def assert_csv_safe(text: str, numeric: set[str]) -> list[dict[str, str]]:
    """No text cell starts a formula; the ``numeric`` columns parse as floats. Returns the rows."""
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert rows
    for row in rows:
        assert None not in row and None not in row.values()  # every row has the header's columns
        for column, cell in row.items():
            if column in numeric:
                float(cell)  # a number stays a number (e.g. -0.5, not '-0.5)
            else:
                assert not cell.startswith(DANGEROUS), f"{column}={cell!r} starts a spreadsheet formula"
    return rows


# ----------------------------------------------------------------------------- CSV
CSV_NUMERIC = {"step", "batch", "pair", "value", "timestep", "sigma"}


def test_metrics_csv_file_neutralises_expert_names(capsys, hostile_run, tmp_path):
    out = tmp_path / "m.csv"
    code, _, err = run_cli(capsys, "metrics", hostile_run, "--csv", "-o", out)
    assert code == 0, err
    with open(out, encoding="utf-8", newline="") as fh:
        rows = assert_csv_safe(fh.read(), CSV_NUMERIC)
    assert len(rows) == 4 * len(EXPERTS) * 4  # metrics × steps × frame pairs: a CR in a name adds no row
    experts = list(dict.fromkeys(r["expert"] for r in rows))
    assert len(experts) == len(EXPERTS)
    for name, cell in zip(EXPERTS, experts):
        if name.startswith(DANGEROUS):
            assert cell == "'" + name  # neutralised with a leading quote, otherwise unchanged
        else:
            assert cell == name  # a file keeps the data as it is


def test_metrics_csv_stdout_is_csv_and_terminal_safe(capsys, hostile_run):
    code, out, err = run_cli(capsys, "metrics", hostile_run, "--csv")
    assert code == 0, err
    assert_terminal_safe(out)
    assert "\\x1b[31mred" in out
    assert len(assert_csv_safe(out, CSV_NUMERIC)) == 4 * len(EXPERTS) * 4


def test_metrics_csv_negative_numbers_stay_numbers():
    from latent_probe.views.report import metrics_csv

    S, B, P = 2, 1, 2
    neg = np.full((S, B, P), -0.5)
    fake = SimpleNamespace(
        metrics=lambda space: SimpleNamespace(l2=neg, cos=neg, one_minus_cos=neg, norm_ratio=neg),
        timesteps=np.array([-1.0, -2.0]), sigmas=np.array([-0.25, -0.125]), experts=["-x", "=y"])
    rows = assert_csv_safe(metrics_csv(fake, "-space"), CSV_NUMERIC)
    assert {r["value"] for r in rows} == {"-0.5"}
    assert {r["timestep"] for r in rows} == {"-1.0", "-2.0"}
    assert {r["sigma"] for r in rows} == {"-0.25", "-0.125"}
    assert {r["expert"] for r in rows} == {"'-x", "'=y"}
    assert {r["space"] for r in rows} == {"'-space"}


def test_csv_cell():
    from latent_probe.views.safe_text import csv_cell, csv_row

    for name in EXPERTS[:6] + ["-1", "-0.5", "+3"]:
        assert csv_cell(name) == "'" + name
    for value in (-0.5, -1, 0, 2.5, float("-inf"), np.float32(-0.25), np.int64(-3), True, None):
        assert csv_cell(value) is value
    assert csv_cell("red") == "red" and csv_cell("a=b") == "a=b" and csv_cell("") == ""
    assert csv_cell(b"=x") == "'=x"
    buf = io.StringIO()
    csv.writer(buf).writerow(csv_row([-0.5, "-0.5", "=1+2", "ok"]))
    assert next(csv.reader(io.StringIO(buf.getvalue()))) == ["-0.5", "'-0.5", "'=1+2", "ok"]


def test_csv_writer_quotes_carriage_returns():
    from latent_probe.views.safe_text import csv_writer

    buf = io.StringIO()
    w = csv_writer(buf)
    w.writerow(["step", "expert"])
    w.writerows([[-1, "ok\r=EVIL()"], [2.5, "a\r\nb"]])
    assert buf.getvalue() == 'step,expert\n-1,"ok\r=EVIL()"\n2.5,"a\r\nb"\n'
    assert list(csv.reader(io.StringIO(buf.getvalue(), newline=""))) == [
        ["step", "expert"], ["-1", "ok\r=EVIL()"], ["2.5", "a\r\nb"]]


# ----------------------------------------------------------------------------- terminal
def test_terminal_escapes():
    from latent_probe.views.safe_text import terminal, terminal_lines

    assert terminal("\x1b[2J\x07\x00\x7f\x85\x9b") == "\\x1b[2J\\x07\\x00\\x7f\\x85\\x9b"
    assert terminal("a\nb\tc\rd") == "a\\nb\\tc\\rd"
    printable = "C:\\runs\\é ✓ → ×"
    assert terminal(printable) == printable  # printable text (backslashes too) is left as it is
    assert terminal(3) == "3"
    assert terminal_lines("a\x1b\nb\tc") == "a\\x1b\nb\\tc"


def test_info_escapes_control_characters(capsys, hostile_run):
    code, out, err = run_cli(capsys, "info", hostile_run)
    assert code == 0, err
    assert "\x1b" not in out and "\x07" not in out
    assert_terminal_safe(out)
    assert "\\x1b[31mred\\x1b[0m" in out and "a\\x07b\\x9bc\\x7fd" in out  # expert names
    assert "two\\nlines" in out and "\\tTAB" in out and "\\rCR" in out
    assert "\\x1b[31mred\\x1b[0m a\\x07b" in out.split("prompt", 1)[1].splitlines()[0]  # the prompt


@pytest.mark.parametrize("argv", [("metrics",), ("metrics", "--phases", "original"), ("truncation",)])
def test_text_reports_escape_control_characters(capsys, hostile_run, argv):
    code, out, err = run_cli(capsys, argv[0], hostile_run, *argv[1:])
    assert code == 0, err
    assert_terminal_safe(out)
    assert "\\x1b[31mred\\x1b[0m" in out and "a\\x07b\\x9bc\\x7fd" in out
    assert "two\\nlines" in out  # one value, one line


@pytest.mark.parametrize("flag", ["--json"])
def test_json_reports_are_escaped_by_json(capsys, hostile_run, flag):
    import json

    for command in ("metrics", "truncation"):
        code, out, err = run_cli(capsys, command, hostile_run, flag)
        assert code == 0, err
        assert_terminal_safe(out)
        assert json.loads(out)  # still valid JSON
        assert "\\u001b[31mred" in out


def test_dashboard_output_escapes_labels(capsys, hostile_run, tmp_path):
    report = tmp_path / "r\x1b[2J.html"
    code, out, err = run_cli(capsys, "dashboard", hostile_run, "-o", report, "--labels", "lab\x1b[2Jel")
    assert code == 0, err
    assert_terminal_safe(out + err)
    assert "r\\x1b[2J.html" in out


def test_statistics_txt_escapes_control_characters(hostile_run, tmp_path):
    from latent_probe.store.reader import open_run
    from latent_probe.views.report import write_statistics
    from latent_probe.views.series import collect

    with open_run(hostile_run) as run:
        s = collect(run, label="lab\x07el")
    txt, _ = write_statistics(s, tmp_path)
    text = open(txt, encoding="utf-8").read()
    assert_terminal_safe(text)
    assert "lab\\x07el" in text and "\\x1b[31mred\\x1b[0m" in text


def test_error_lines_escape_control_characters(capsys, tmp_path, hostile_run):
    code, out, err = run_cli(capsys, "info", tmp_path / "no\x1b[2Jsuch\x07.h5")
    assert code == 1
    assert_terminal_safe(out + err)
    assert "no\\x1b[2Jsuch\\x07.h5" in err and err.count("\n") == 1
    code, _, err = run_cli(capsys, "metrics", hostile_run, "--space", "\x1b[2J")  # a KeyError of the CLI
    assert code == 1
    assert_terminal_safe(err)
    code, _, err = run_cli(capsys, "info", hostile_run, "extra\x1b[2J")  # argparse usage error
    assert code == 2
    assert_terminal_safe(err)
    assert "extra\\x1b[2J" in err
