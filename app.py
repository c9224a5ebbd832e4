"""Hugging Face Spaces entry point (README front matter: app_file: app.py): the app `make demo` serves.

Spaces installs requirements.txt (genlab's dependencies) and runs this file from the repository
folder without installing genlab itself, so the folder and its plugins/ go on sys.path here; the
in-tree plugins then register through the same entry-point loop as any installed plugin (their
entry points are read from pyproject.toml, see genlab.plugins.source_tree_entry_points), and the
Report tab finds the committed reports in evals/. Listens where Spaces says (GRADIO_SERVER_NAME,
GRADIO_SERVER_PORT) and on 127.0.0.1:7860 otherwise.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
for folder in (ROOT / "plugins", ROOT):  # the repository's own code first, before anything installed
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from genlab.app import build_app, launch  # noqa: E402

demo = build_app()

if __name__ == "__main__":
    launch(demo, host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
           port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")), block=True)
