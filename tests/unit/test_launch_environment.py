"""The cluster environment comes from serve_config.yaml (what `serve run` reads), and a cluster this
project starts gets HAProxy side ports of its own; processes the cluster leaves behind are ended."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from serve_app.engines.flite import LATER_PIECE_SECONDS
from serve_app.launch import (
    DEFAULT_CONFIG,
    HAPROXY_PORT_VARIABLES,
    apply_cluster_environment,
    cluster_environment,
    load_config,
    own_side_ports,
)


def test_serve_run_reads_ray_serves_fastest_ingress_path_from_the_config() -> None:
    env = cluster_environment()
    assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    # HAProxy passes a streamed body on in pieces of at most its buffer: the engines' later audio
    # pieces (`LATER_PIECE_SECONDS`) at OpenAI's 24 kHz `pcm` must pass whole, not as 16 KB chunks to parse.
    later_piece = int(LATER_PIECE_SECONDS * 24000 * 2)
    assert int(env["RAY_SERVE_HAPROXY_TUNE_BUFSIZE"]) >= later_piece
    # The same block is what Serve's controller is started with (controller_options).
    config = load_config(DEFAULT_CONFIG)
    assert config.controller_options.runtime_env == {"env_vars": env}


def test_a_cluster_started_here_gets_side_ports_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in HAPROXY_PORT_VARIABLES:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RAY_SERVE_HAPROXY_STATS_PORT", "18404")  # an operator's choice is kept
    with own_side_ports():
        assert os.environ["RAY_SERVE_HAPROXY_STATS_PORT"] == "18404"
        ports = [int(os.environ[key]) for key in HAPROXY_PORT_VARIABLES[1:]]
        assert len(set(ports)) == len(ports) and all(port not in (9101, 8500, 9500) for port in ports)
    # Afterwards a cluster started by a child process (a test's launcher) picks its own again.
    assert [key for key in HAPROXY_PORT_VARIABLES if key in os.environ] == ["RAY_SERVE_HAPROXY_STATS_PORT"]


def test_the_config_environment_is_set_unless_the_operator_set_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in cluster_environment():
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "0")
    apply_cluster_environment()
    assert os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "0"


def test_an_orphaned_grandchild_is_adopted_and_ended() -> None:
    # A child that starts a long-lived process and exits at once: the process is orphaned, as
    # HAProxy is when the actor that started it is killed.
    script = (
        "import subprocess, sys; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
        " stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); print(p.pid)"
    )
    code = (
        "import subprocess, sys, os, time\n"
        "from serve_app.launch import adopt_orphans, end_orphans\n"
        "adopt_orphans()\n"
        f"out = subprocess.run([sys.executable, '-c', {script!r}], capture_output=True, text=True).stdout\n"
        "pid = int(out)\n"
        "time.sleep(0.2)\n"
        "os.kill(pid, 0)\n"  # still running, adopted by this process
        "end_orphans(grace_s=2.0)\n"
        "try:\n"
        "    os.kill(pid, 0)\n"
        "except ProcessLookupError:\n"
        "    print('ended')\n"
    )
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.stdout.strip() == "ended", result.stderr
    assert time.monotonic() - started < 30


def test_free_ports_come_from_below_the_ephemeral_range() -> None:
    # A port from the ephemeral range can be the source port of one of the many connections a
    # starting cluster opens, and then HAProxy cannot bind it.
    from serve_app.launch import _ephemeral_start, free_port

    ports = {free_port() for _ in range(20)}
    assert all(20000 <= port < _ephemeral_start() for port in ports), ports
    assert len(ports) > 1  # random, so two clusters started at once rarely pick the same one


def test_a_port_is_never_handed_out_twice_by_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    # A Ray node is given nine ports before any is bound; two of them once came out equal and
    # `ray start` refused them ("metrics_export is trying to use a port number ... used by other
    # components"). The draw is made the same every time here, so only the record keeps them apart.
    import serve_app.launch as launch

    monkeypatch.setattr(launch.random, "sample", lambda population, k: list(population)[:k])
    ports = [launch.free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports), ports


def test_a_proxy_replaced_while_serve_starts_does_not_end_the_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    # Serve's controller kills a proxy that is slow to become ready and starts another; serve_start
    # then raises the first proxy's death. Asking again connects to the controller that is running.
    import ray.exceptions
    from ray.serve._private import api as serve_api

    from serve_app.launch import load_config, start_serve

    calls: list[dict[str, object]] = []
    client = object()

    def serve_start(**options: object) -> object:
        calls.append(options)
        if len(calls) == 1:
            raise ray.exceptions.ActorDiedError()
        return client

    monkeypatch.setattr(serve_api, "serve_start", serve_start)
    config = load_config("serve_config.yaml")
    assert start_serve(config) is client
    assert len(calls) == 2 and calls[0] == calls[1]
    assert calls[0]["controller_options"] == config.controller_options

    calls.clear()

    def always_dies(**options: object) -> object:
        calls.append(options)
        raise ray.exceptions.ActorDiedError()

    monkeypatch.setattr(serve_api, "serve_start", always_dies)
    with pytest.raises(ray.exceptions.ActorDiedError):
        start_serve(config)
    assert len(calls) == 2  # once more, not forever
