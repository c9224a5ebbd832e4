"""First-click latency of a fresh app with the bundled models, against a warm click.

    python -m benchmarks.app_first_click --endpoint /sample_ddpm --clicks 3

Starts ``python app.py`` in a subprocess (port from --port), waits until it answers, then waits for
the background warm-up to finish when the app reports one (``/status``), and times the same call
``--clicks`` times with the endpoint's default inputs. Printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default="/sample_ddpm")
    parser.add_argument("--clicks", type=int, default=3)
    parser.add_argument("--port", type=int, default=7871)
    parser.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]),
                        help="the repository folder whose app.py to start")
    parser.add_argument("--no-wait-ready", action="store_true",
                        help="click as soon as the server answers, without waiting for the warm-up")
    args = parser.parse_args()

    from gradio_client import Client

    env = {**os.environ, "GRADIO_SERVER_PORT": str(args.port), "GRADIO_SERVER_NAME": "127.0.0.1"}
    start = time.perf_counter()
    server = subprocess.Popen([sys.executable, "app.py"], cwd=args.repo, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = None
        while client is None:
            if server.poll() is not None:
                raise SystemExit(f"app.py exited with {server.returncode}")
            try:
                client = Client(f"http://127.0.0.1:{args.port}/", verbose=False, analytics_enabled=False)
            except Exception:
                time.sleep(0.5)
        up = time.perf_counter() - start
        print(f"server answers after {up:.1f} s")
        endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
        if "/status" in endpoints and not args.no_wait_ready:
            while not str(client.predict(api_name="/status")).startswith("Ready"):
                time.sleep(0.5)
            print(f"warm-up finished after {time.perf_counter() - start:.1f} s")
        for click in range(1, args.clicks + 1):
            t0 = time.perf_counter()
            client.predict(api_name=args.endpoint)
            print(f"click {click} on {args.endpoint}: {time.perf_counter() - t0:.2f} s")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
