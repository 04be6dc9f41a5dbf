"""Truncated runs say so: which steps an intervention changed, read back from the run (issue 12 item 5)."""

import subprocess
import sys

import numpy as np
import torch

from latent_probe import FrameTruncation, LatentProbe, open_run
from latent_probe.testing import tiny_prompt_embeds, tiny_wan_pipeline
from latent_probe.views.intervention import changed_steps, describe_intervention

EXPERTS = ["transformer"] * 3 + ["transformer_2"] * 5


def _ft(**kw):
    return {"intervention": {"kind": "frame_truncation", "keep": 3, "keyframes": None, "fill": "linear",
                             "positions": "true", **kw}}


def test_changed_steps_follow_until():
    assert changed_steps(_ft(until="boundary"), EXPERTS).tolist() == [True] * 3 + [False] * 5
    assert changed_steps(_ft(until=5), EXPERTS).tolist() == [True] * 5 + [False] * 3
    assert changed_steps(_ft(until=0), EXPERTS).sum() == 0
    assert changed_steps(_ft(until=99), EXPERTS).all()
    assert not changed_steps({}, EXPERTS).any()                                  # a plain run
    assert not changed_steps(_ft(until="boundary"), ["transformer"] * 8).any()   # one expert: nothing truncated
    assert describe_intervention({}, EXPERTS) == ""
    line = describe_intervention(_ft(until="boundary", keyframes=[0, 4]), EXPERTS)
    assert "key frames [0, 4]" in line and "changed steps 0–2 of 8" in line and "fills" in line


def test_info_names_the_intervention_and_its_steps(tmp_path):
    pipe = tiny_wan_pipeline()
    path = tmp_path / "t.h5"
    with LatentProbe(pipe, path, capture=("x0",), intervene=FrameTruncation(keep=2, until=2)):
        pipe(prompt_embeds=tiny_prompt_embeds("a"), negative_prompt_embeds=tiny_prompt_embeds(""), height=32,
             width=32, num_frames=9, num_inference_steps=4, output_type="latent",
             generator=torch.Generator().manual_seed(0))
    run = open_run(path)
    assert np.array_equal(changed_steps(run.attrs, list(run.experts)), [True, True, False, False])
    run.close()
    out = subprocess.run([sys.executable, "-m", "latent_probe", "info", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    line = [ln for ln in out.stdout.splitlines() if ln.strip().startswith("intervened")]
    assert line and "2 key frames, until 2" in line[0] and "changed steps 0–1 of 4" in line[0]


def test_dashboard_marks_truncated_steps_as_fills(tmp_path):
    from latent_probe.views.dashboard import build_figures, collect_series

    pipe = tiny_wan_pipeline()
    paths = []
    for name, iv in (("base.h5", None), ("trunc.h5", FrameTruncation(keep=2, until=2))):
        paths.append(tmp_path / name)
        with LatentProbe(pipe, paths[-1], capture=("x_t", "x0"), intervene=iv):
            pipe(prompt_embeds=tiny_prompt_embeds("a"), negative_prompt_embeds=tiny_prompt_embeds(""), height=32,
                 width=32, num_frames=9, num_inference_steps=4, output_type="latent",
                 generator=torch.Generator().manual_seed(0))
    series = collect_series([str(p) for p in paths], labels=["baseline", "truncated"])
    assert series[0].intervention == "" and not series[0].changed_steps.any()
    assert series[1].changed_steps.tolist() == [True, True, False, False]
    figs = build_figures(series)
    cont = figs[0]
    bands = [sh for sh in cont.layout.shapes if (sh.name or "").startswith("intervened:")]
    assert bands and all(sh.name == "intervened: truncated" for sh in bands)
    assert {(sh.x0, sh.x1) for sh in bands} == {(-0.5, 1.5)}          # steps 0 and 1, per subplot
    texts = " ".join([cont.layout.title.text] + [a.text for a in cont.layout.annotations])  # label and caption
    texts = texts.replace("</sup><br><sup>", " ")  # caption lines are wrapped to fit 800 px
    assert "truncated: truncated (fills)" in texts and "changed steps 0–1 of 4" in texts
