"""Ray nodes started with the `ray` CLI on this machine, each in a process session of its own.

A multi-node cluster on one machine, for tests that need what `ray.init` cannot give: a head and
worker nodes that join and leave, each with its own resources, temp dir and working directory.

Stopping is by session, never by `ray stop`: `ray stop` finds Ray's processes by name and would
end every Ray cluster on the machine (other test runs, other people's). `ray start` runs in a new
session here, and the GCS, raylet, agents and every worker the raylet starts stay in it, so killing
that session's processes stops exactly this node.

Each cluster has its own token (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN): the CLI and the nodes read it
from their environment, and REST calls to the dashboard send it; ~/.ray is never consulted.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from serve_app.launch import free_port

RAY = str(Path(sys.executable).with_name("ray"))
SERVE = str(Path(sys.executable).with_name("serve"))
# What a node's processes inherit from us; the rest of our environment (settings of other tests in
# this pytest process) stays out. Node-specific variables come on top.
INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER")


def session_pids(sid: int) -> list[int]:
    """Live processes whose session id is `sid` (field 6 of /proc/<pid>/stat; zombies left out)."""
    pids: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


@dataclass
class RayCluster:
    """The shared facts of one test cluster: its token, the head's GCS and dashboard addresses."""

    root: Path
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    gcs_address: str = ""
    dashboard_url: str = ""
    nodes: list[RayNode] = field(default_factory=list)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment for a node or a CLI call of this cluster."""
        env = {k: os.environ[k] for k in INHERITED if k in os.environ}
        env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token, "RAY_USAGE_STATS_ENABLED": "0"})
        env.update(extra or {})
        return env

    def start_head(self, *, num_cpus: float, env: dict[str, str] | None = None) -> RayNode:
        gcs_port, dashboard_port = free_port(), free_port()
        node = self._start(
            "head",
            [
                "--head",
                f"--port={gcs_port}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard_port}",
                f"--ray-client-server-port={free_port()}",
            ],
            num_cpus=num_cpus,
            env=env,
        )
        self.gcs_address = f"127.0.0.1:{gcs_port}"
        self.dashboard_url = f"http://127.0.0.1:{dashboard_port}"
        return node

    def start_worker(
        self, name: str, *, num_cpus: float, num_gpus: int = 0, env: dict[str, str] | None = None
    ) -> RayNode:
        assert self.gcs_address, "start the head first"
        return self._start(
            name, [f"--address={self.gcs_address}", f"--num-gpus={num_gpus}"], num_cpus=num_cpus, env=env
        )

    def _start(self, name: str, args: list[str], *, num_cpus: float, env: dict[str, str] | None) -> RayNode:
        workdir = self.root / name
        temp_dir = self.root / f"{name}-tmp"
        workdir.mkdir(parents=True)
        temp_dir.mkdir()
        command = [
            RAY,
            "start",
            *args,
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={num_cpus:g}",
            f"--temp-dir={temp_dir}",
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            "--object-store-memory=100000000",
            "--disable-usage-stats",
        ]
        log = (self.root / f"{name}-start.log").open("wb")
        # A session of its own: every process this node starts (raylet's workers too) stays in it.
        process = subprocess.Popen(
            command, cwd=workdir, env=self.env(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        node = RayNode(name, workdir, temp_dir, sid=process.pid)
        self.nodes.append(node)  # registered before waiting, so a failed start is still cleaned up
        try:
            code = process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            log.close()
        if code != 0:
            raise RuntimeError(f"`ray start` for {name} failed ({code}): {self.start_log(name)[-2000:]}")
        return node

    def start_log(self, name: str) -> str:
        return (self.root / f"{name}-start.log").read_text(errors="replace")

    def cli(self, *args: str, timeout: float = 120) -> str:
        """Run `ray`/`serve` (args[0]) against this cluster; its output, or RuntimeError with it."""
        tool = {"ray": RAY, "serve": SERVE}[args[0]]
        result = subprocess.run(
            [tool, *args[1:]], env=self.env(), capture_output=True, text=True, timeout=timeout, cwd=self.root
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {(result.stdout + result.stderr)[-2000:]}")
        return result.stdout

    def api(self, path: str) -> Any:
        """GET a dashboard REST path (JSON), with this cluster's token."""
        headers = {"Authorization": f"Bearer {self.token}"}
        response = httpx.get(f"{self.dashboard_url}{path}", headers=headers, timeout=30)
        response.raise_for_status()
        return response.json()

    def stop(self) -> None:
        """SIGKILL every process of every node (workers before their raylet notices), newest node first."""
        for node in reversed(self.nodes):
            node.kill()


@dataclass
class RayNode:
    name: str
    workdir: Path
    temp_dir: Path
    sid: int

    def pids(self) -> list[int]:
        return session_pids(self.sid)

    def kill(self, timeout_s: float = 30.0) -> None:
        """Kill this node's session until nothing of it is left (a dying raylet may still fork)."""
        deadline = time.monotonic() + timeout_s
        while pids := self.pids():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes of Ray node {self.name} survive SIGKILL: {pids}")
            time.sleep(0.1)
