"""``python -m latent_probe ...``: the ``latent-probe`` command line (``latent_probe.app.cli``)."""

import sys

from .app.cli import main

if __name__ == "__main__":
    sys.exit(main())
