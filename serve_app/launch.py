"""Deploy `serve_config.yaml` programmatically, exactly as `serve run serve_config.yaml` does.

Tests and benchmarks use this instead of `serve.run(build_app())` so that they exercise the real
configuration (fractional CPUs, autoscaling, health checks) rather than code defaults, on a port
of their choosing. `python -m serve_app.launch` starts a private cluster and prints the URL.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "serve_config.yaml"


def load_config(path: str | Path = DEFAULT_CONFIG, *, port: int | None = None, host: str | None = None) -> Any:
    """The validated Serve deploy schema from `path`, with the HTTP port/host overridden."""
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load(Path(path).read_text())
    http = raw.setdefault("http_options", {})
    if port is not None:
        http["port"] = port
    if host is not None:
        http["host"] = host
    return ServeDeploySchema.model_validate(raw)


def deploy_config(config: Any, *, timeout_s: float = 180.0) -> str:
    """Start Serve with the config's HTTP options, deploy its applications, wait until RUNNING."""
    from ray.serve._private import api as serve_api

    client = serve_api.serve_start(
        http_options=config.http_options.model_dump(),
        proxy_location=config.proxy_location,
    )
    client.deploy_apps(config, _blocking=False)
    names = [app.name for app in config.applications]
    wait_running(names, timeout_s=timeout_s)
    host = config.http_options.host
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{host}:{config.http_options.port}"


def wait_running(app_names: list[str], *, timeout_s: float = 180.0) -> None:
    """Block until every named application is RUNNING; raise with Serve's message if one fails."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while True:
        statuses = serve.status().applications
        states = {name: statuses[name].status if name in statuses else "NOT_STARTED" for name in app_names}
        failed = {n: statuses[n].message for n, s in states.items() if s in ("DEPLOY_FAILED", "UNHEALTHY")}
        if failed:
            raise RuntimeError(f"Serve application failed: {failed}")
        if all(s == "RUNNING" for s in states.values()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"Serve applications not running after {timeout_s:.0f}s: {states}")
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Start a private Ray cluster and deploy the Serve config.")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--num-cpus", type=int, default=None)
    args = parser.parse_args(argv)
    import socket

    import ray

    port = args.port
    if port == 0:
        with socket.socket() as s:
            s.bind((args.host, 0))
            port = int(s.getsockname()[1])
    os.makedirs("data", exist_ok=True)
    ray.init(num_cpus=args.num_cpus, include_dashboard=False)
    url = deploy_config(load_config(args.config, port=port, host=args.host))
    print(f"SERVE_URL={url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
