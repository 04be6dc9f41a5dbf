"""The frontier scripts on organism v2: v1's grid unchanged, v2's grid as declared, a quick run + MagCache
calibration + scoring end to end on a tiny random organism v2 (CPU), and --max-seconds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))

import frontier_run  # noqa: E402

V1_NAMES = [
    "baseline_s20", "fewer_steps_s16", "fewer_steps_s12", "fewer_steps_s8",
    "truncation_s20_k3uboundary", "truncation_s20_k5uboundary", "truncation_s20_k7uboundary",
    "truncation_s20_k11uboundary", "truncation_s20_k7u3", "truncation_s20_k5u6",
    "first_block_cache_s20_t0.05", "first_block_cache_s20_t0.1", "first_block_cache_s20_t0.2",
    "first_block_cache_s20_t0.3", "truncation+fewer_steps_s16_k7uboundary", "truncation+fewer_steps_s12_k7uboundary",
    "truncation+fewer_steps_s12_k11uboundary", "baseline_s20_repeat1", "mag_cache_s20_t0.02", "mag_cache_s20_t0.06",
    "mag_cache_s20_t0.12", "mag_cache_s20_t0.25", "taylorseer_s20_n2", "taylorseer_s20_n3", "taylorseer_s20_n4",
    "pab_s20_n2", "pab_s20_n3", "pab_s20_n4", "truncation_variant_s20_k3uboundary_renoise",
    "truncation_variant_s20_k3uboundary_motion", "truncation_variant_s20_k3uboundary_x0",
    "truncation_variant_s20_k3uboundary_grow3-7-11", "truncation_variant_s20_k5uboundary_grow5-11",
]


def test_v1_grid_names_are_unchanged():
    assert [frontier_run.setting_name(s) for s in frontier_run.settings(False)] == V1_NAMES
    scored = {s["setting"] for s in json.loads(Path("docs/data/frontier_organism.json").read_text())["settings"]}
    assert scored <= set(V1_NAMES) and len(scored) >= 20           # docs/data names are grid names


def test_v2_grid_holds_the_declared_settings_and_scales_with_base_steps():
    names = [frontier_run.setting_name(s) for s in frontier_run.settings_v2(False)]
    assert len(names) == len(set(names))
    for n in ("baseline_s40", "fewer_steps_s30", "fewer_steps_s24", "fewer_steps_s16", "truncation_s40_k7uboundary",
              "truncation+fewer_steps_s24_k11uboundary", "baseline_s40_repeat1", "mag_cache_s40_t0.06",
              "truncation_s40_k3u13", "truncation_variant_s40_k7uboundary_grow7-11-15"):
        assert n in names
    import frontier_measure_v2

    assert [p[2:] for p in frontier_measure_v2.primary(40)] == [
        ("truncation_s40_k7uboundary", "fewer_steps_s24"), ("truncation_s40_k7uboundary", "fewer_steps_s24"),
        ("truncation+fewer_steps_s24_k11uboundary", "fewer_steps_s16"), ("truncation_s40_k7uboundary", "baseline_s40")]
    small = [frontier_run.setting_name(s) for s in frontier_run.settings_v2(True, base=8)]
    assert small[:2] == ["baseline_s8", "fewer_steps_s5"]


@pytest.fixture
def tiny_v2(monkeypatch):
    """organism v2 "small" shrunk (2 DiT blocks, a narrow VAE): the real pipeline and shapes, seconds a clip."""
    from latent_probe.organism import model_v2, random_organism_v2

    monkeypatch.setitem(model_v2.SIZES, "small", dict(num_layers=2, num_attention_heads=2, attention_head_dim=8,
                                                       ffn_dim=16))

    def build(organism, device, weights=None, sha256=None, random_weights=False):
        assert organism == "small" and random_weights
        return random_organism_v2("small", device=device, vae_config={"base_dim": 8})

    monkeypatch.setattr(frontier_run, "build_organism", build)
    return build


@pytest.mark.slow   # ≈2 min on a 2-core CPU: ≈70 VAE passes of 81 frames dominate
def test_quick_run_calibrate_and_measure_on_a_tiny_v2(tmp_path, tiny_v2, monkeypatch):
    import frontier_magcache
    import frontier_measure_v2

    monkeypatch.setattr(frontier_magcache, "build_organism", tiny_v2)
    monkeypatch.setattr(frontier_measure_v2, "build_organism", tiny_v2)
    common = ["--organism", "small", "--random-weights", "--prompts", "2"]
    mag = tmp_path / "mag.json"
    assert frontier_magcache.main([*common, "--steps", "8", "--seeds", "3", "--out", str(mag)]) == 0
    with pytest.raises(SystemExit):                     # evaluation seeds are refused for calibration
        frontier_magcache.main([*common, "--seeds", "1", "--out", str(mag)])
    run, lat = tmp_path / "run.json", tmp_path / "lat"
    assert frontier_run.main([*common, "--seeds", "2", "--quick", "--base-steps", "8", "--out", str(run),
                              "--latents", str(lat), "--mag-ratios", str(mag)]) == 0
    data = json.loads(run.read_text())
    want = [frontier_run.setting_name(s) for s in frontier_run.settings_v2(True, 8)]
    assert list(data["settings"]) == want
    assert data["organism"] == {"size": "small", "weights": None, "sha256": None, "random_weights": True,
                                "base_steps": 8}
    for name in want:
        rows = data["settings"][name]["rows"]
        assert [(r["prompt_index"], r["seed"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
        z = torch.load(lat / f"{name}.pt")
        assert z.dtype == torch.float16 and z.shape == (4, 16, 21, 16, 16)
    base, trunc = data["settings"]["baseline_s8"], data["settings"]["truncation_s8_k7uboundary"]
    assert trunc["rows"][0]["token_steps"] < base["rows"][0]["token_steps"]
    assert torch.equal(torch.load(lat / "baseline_s8.pt"), torch.load(lat / "baseline_s8_repeat1.pt"))

    out_json = tmp_path / "scored.json"
    assert frontier_measure_v2.main(["--run", str(run), "--latents", str(lat), "--csv", str(tmp_path / "s.csv"),
                                     "--json", str(out_json), "--train-per-class", "1", "--held-out-per-class", "2",
                                     "--resamples", "200"]) == 0
    scored = json.loads(out_json.read_text())
    assert {s["setting"] for s in scored["settings"]} == set(want) - {"baseline_s8_repeat1"}
    assert scored["baseline_repeat"]["bit_identical"] is True and scored["trained"] is False
    assert {"seed_psnr", "train_psnr", "train_motion_pass", "train_nn_latent"} <= set(scored["floors"])
    b = next(s for s in scored["settings"] if s["setting"] == "baseline_s8")
    assert b["nn_latent"] > 0 and b["saving_token_steps"] == 0
    prim = {p["id"]: p for p in scored["primary"]}
    assert set(prim) == {"P1", "P2", "P3", "P4"}                  # every declared pair was in the quick grid
    for p in prim.values():                    # random weights: motion undefined where the object is lost
        assert p["n_clips"] + p["n_dropped"] == 4 and p["holm_m"] == 4 and "p_holm" not in p
    # PSNR and pass rate are always defined, but 2 prompts are under the 3 a declared comparison needs
    assert prim["P2"]["status"] == prim["P4"]["status"] == "too few prompts" and prim["P2"]["n_clips"] == 4


def test_max_seconds_stops_after_the_crossing_setting_and_resumes(tmp_path, tiny_v2, capsys):
    run, lat = tmp_path / "run.json", tmp_path / "lat"
    args = ["--organism", "small", "--random-weights", "--prompts", "1", "--seeds", "1", "--base-steps", "4",
            "--quick", "--out", str(run), "--latents", str(lat),
            "--only", "baseline_s4,fewer_steps_s2,truncation_s4_k7uboundary"]
    assert frontier_run.main([*args, "--max-seconds", "0"]) == 0
    assert list(json.loads(run.read_text())["settings"]) == ["baseline_s4"]
    assert "stopping after baseline_s4" in capsys.readouterr().out
    assert frontier_run.main(args) == 0                   # the same --out resumes with what is left
    assert list(json.loads(run.read_text())["settings"]) == ["baseline_s4", "fewer_steps_s2",
                                                             "truncation_s4_k7uboundary"]


def test_v2_run_skips_mag_cache_without_ratios_and_v1_refuses_v2_flags(tmp_path, tiny_v2, capsys):
    run, lat = tmp_path / "run.json", tmp_path / "lat"
    assert frontier_run.main(["--organism", "small", "--random-weights", "--prompts", "1", "--seeds", "1",
                              "--base-steps", "4", "--quick", "--out", str(run), "--latents", str(lat),
                              "--mag-ratios", str(tmp_path / "none.json"),
                              "--only", "baseline_s4,mag_cache_s4_t0.06"]) == 0
    assert "skipping ['mag_cache_s4_t0.06']" in capsys.readouterr().out
    assert list(json.loads(run.read_text())["settings"]) == ["baseline_s4"]
    with pytest.raises(SystemExit):
        frontier_run.main(["--out", str(tmp_path / "v1.json"), "--latents", str(lat), "--weights", "w"])
