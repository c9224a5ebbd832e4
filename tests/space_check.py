"""Start ``app.py`` the way Hugging Face Spaces does and call it: the check behind `make space-check`
and tests/test_spaces.py.

    python tests/space_check.py REPO_FOLDER [--python PYTHON] [--port PORT]

Runs ``PYTHON app.py`` inside REPO_FOLDER with GRADIO_SERVER_NAME / GRADIO_SERVER_PORT set (as the
Spaces runtime sets them) and PYTHONPATH cleared, waits until it answers, then asks gradio_client
for the loaded plugins and one VAE sample. Exits non-zero, saying why, when anything is missing.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

IN_TREE_MODELS = {"vae", "ddpm", "ldm", "ldm-autoencoder", "flow", "flow-reflow"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check(repo: Path, python: str, port: int, timeout: float = 240, warm_up: bool = False) -> dict:
    """Start the Space in ``repo`` with ``python``; return what it answered (raises on failure)."""
    from gradio_client import Client

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False",
               HF_HUB_OFFLINE="1", GENLAB_APP_WARMUP="1" if warm_up else "0")
    log = repo / "space.log"
    with open(log, "w") as out:
        server = subprocess.Popen([python, "app.py"], cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        client = None
        while client is None:
            if server.poll() is not None:
                raise RuntimeError(f"app.py exited with {server.returncode}:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"app.py did not answer on port {port} within {timeout:.0f} s")
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False, analytics_enabled=False)
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(1)
        plugins = client.predict(api_name="/plugins")
        gallery, caption = client.predict(seed=0, count=2, api_name="/sample_vae")
        report = client.predict("reports/bundled", api_name="/report") if (repo / "evals/reports/bundled").is_dir() else None
        return {"plugins": plugins, "gallery": gallery, "caption": caption, "report": report, "log": log.read_text()}
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", type=Path)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    answer = check(args.repo.resolve(), args.python, args.port or free_port())
    models = {row[1] for row in answer["plugins"]["loaded"]}
    if not IN_TREE_MODELS <= models or answer["plugins"]["failed"]:
        raise SystemExit(f"space-check: in-tree models missing or plugins failed: {answer['plugins']}")
    if answer["report"] is not None and "genlab eval" not in answer["report"]:
        raise SystemExit("space-check: the Report tab did not find the committed report evals/reports/bundled")
    print(f"space-check: OK: models {', '.join(sorted(models))}; {answer['caption'].splitlines()[0]}")


if __name__ == "__main__":
    main()
