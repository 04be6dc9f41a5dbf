"""No module outside adapters/ names a model family's expert attributes, DiT arguments or pipeline arguments
(issue 9). Checked on the code itself (names, attributes, string constants), not on comments or docstrings.

The application layer (``app/``: model loading per backend, the CLI's flags) necessarily names pipeline
arguments, and so do the test pipelines and the demo.
"""

from __future__ import annotations

import ast
import pathlib

import latent_probe

FAMILY_TOKENS = {
    "high_noise_model", "low_noise_model", "transformer_2", "seq_len", "boundary_ratio", "_pack_latents",
    "sampling_steps", "num_inference_steps", "prompt_embeds", "guide_scale", "wan_repo", "frame_num",
    "old_pred_original_sample", "invert_sigmas_unused_marker",
}
APPLICATION_LAYER = {"testing.py", "demo.py"}
# Not a model family's fact: diffusers' MagCacheConfig calls its per-expert call count num_inference_steps, and the
# calibration export and the cache methods must write that field by its name.
CACHE_CONFIG_FIELDS = {"interventions/caches.py": {"num_inference_steps"}, "study/calibrate.py": {"num_inference_steps"}}


def code_tokens(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.Attribute):
            found.add(node.attr)
        elif isinstance(node, ast.arg):
            found.add(node.arg)
        elif isinstance(node, ast.keyword) and node.arg:
            found.add(node.arg)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            found.update(node.value.replace("'", " ").replace('"', " ").split())
    return found


def test_family_facts_are_named_only_in_adapters():
    root = pathlib.Path(latent_probe.__file__).parent
    offenders = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(("adapters/", "app/", "organism/")) or rel in APPLICATION_LAYER:  # organism/: a model
            continue
        hits = (code_tokens(path) & FAMILY_TOKENS) - CACHE_CONFIG_FIELDS.get(rel, set())
        if hits:
            offenders[rel] = sorted(hits)
    assert not offenders, f"family facts outside adapters/: {offenders}"


def test_the_check_sees_what_it_looks_for():
    root = pathlib.Path(latent_probe.__file__).parent
    assert {"high_noise_model", "transformer_2"} <= code_tokens(root / "adapters" / "wan_repo.py") | \
        code_tokens(root / "adapters" / "diffusers_video.py")
