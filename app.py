"""Hugging Face Spaces entry point (README front matter: app_file: app.py): the app `make demo` serves.

Listens where Spaces says (GRADIO_SERVER_NAME, GRADIO_SERVER_PORT) and on 127.0.0.1:7860 otherwise.
"""

import os

from genlab.app import build_app, launch

demo = build_app()

if __name__ == "__main__":
    launch(demo, host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
           port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")), block=True)
