"""The application layer: the ``latent-probe`` command line, ``analyze`` and model loading per backend.

Orchestration only: it may import every other part of ``latent_probe``; nothing in the package imports it except
the package root, which re-exports its Python entry points (``compare_truncation``).

Modules: cli (the parser, ``main``, one function per command) → analyze (``run_analysis``: record one
generation per sweep point and write the views) → backends (load a model per backend: the Wan2.2
repository, a diffusers-format folder, the tiny test pipelines); truncation_cmd (``latent-probe truncation``);
compare (``compare_truncation``: baseline vs truncated generation, timed).
"""
