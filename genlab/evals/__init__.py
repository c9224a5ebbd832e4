"""genlab's eval runner: every model sampled on equal terms, measured, written as a report.

The code lives here, inside the ``genlab`` package (so an installed genlab claims no generic
top-level name); the project's ``evals/`` folder holds the suites (*.toml), the committed reports
(``evals/reports``) and the runs (``evals/runs``).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "GENLAB_EVALS_DIR"


def evals_dir() -> Path:
    """The project's evals/ folder: ``$GENLAB_EVALS_DIR``, else the one beside the genlab package
    (a checkout or an editable install), else ./evals."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    beside = Path(__file__).resolve().parents[2] / "evals"
    return beside if beside.is_dir() else Path.cwd() / "evals"
