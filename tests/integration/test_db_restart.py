"""PostgreSQL stopped and restarted under load: 503 then 200 on /health/db, nothing hangs, nothing lost.

A private cluster (initdb + pg_ctl on a free port in a temporary directory, run as the
`postgres` OS user when we are root) is stopped while workers create and finalize sessions
through the real app. Every request must end within a bound (answered 2xx or a fast 503), the
breaker must open and then close by itself once the server is back, and every session the
API acknowledged must be in the database afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.integration.test_sessions_api import db_settings
from tests.support import running_app

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
REQUEST_BOUND_S = 20.0  # far above any configured timeout: a request taking this long is hung


def _command(*args: str) -> list[str]:
    """Run PostgreSQL's tools as `postgres` when we are root (they refuse to run as root)."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)


@dataclass
class PrivatePostgres:
    data: Path
    port: int
    socket_dir: Path

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            _command(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.data.parent / "server.log"),
                     "-o", options, "-w", "-t", "60", "start"),
            check=True, capture_output=True, timeout=90,
        )

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(
            _command(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"),
            check=True, capture_output=True, timeout=90,
        )


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivatePostgres]:
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL binaries not found in {PG_BIN}")
    base = Path(tempfile.mkdtemp(prefix="tts-pg-", dir="/tmp"))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(base, user.pw_uid, user.pw_gid)
    base.chmod(0o700)
    cluster = PrivatePostgres(data=base / "data", port=free_port(), socket_dir=base)
    try:
        subprocess.run(
            _command(str(PG_BIN / "initdb"), "-D", str(cluster.data), "-U", "postgres", "-A", "trust",
                     "--no-sync", "-E", "UTF8"),
            check=True, capture_output=True, timeout=120,
        )
        cluster.start()
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            cluster.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


async def _bounded(coro: object) -> httpx.Response:
    return await asyncio.wait_for(coro, REQUEST_BOUND_S)  # type: ignore[arg-type]


async def _eventually(predicate: Callable[[], bool], limit_s: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def _until_status(client: httpx.AsyncClient, path: str, status: int, limit_s: float) -> list[int]:
    seen: list[int] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while loop.time() < deadline:
        seen.append((await _bounded(client.get(path))).status_code)
        if seen[-1] == status:
            return seen
        await asyncio.sleep(0.2)
    raise AssertionError(f"{path} never returned {status}; saw {Counter(seen)}")


async def test_database_restart_during_requests(private_postgres: PrivatePostgres) -> None:
    settings = db_settings(
        private_postgres.url,
        db_breaker_failures=2,
        db_breaker_reset_s=0.5,
        db_connect_timeout=2.0,
        db_pool_timeout=3.0,
        db_statement_timeout_ms=3000,
        db_pool_size=4,
        db_max_overflow=4,
    )
    async with running_app(settings) as (_, client):
        statuses: Counter[int] = Counter()
        hung: list[str] = []
        created: set[str] = set()
        finalized: set[str] = set()
        unfinalized: set[str] = set()
        stop = asyncio.Event()

        async def worker(n: int) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    r = await _bounded(client.post("/v1/sessions", json={"room": f"restart-{n}-{i}"}))
                    statuses[r.status_code] += 1
                    if r.status_code != 201:
                        await asyncio.sleep(0.05)
                        continue
                    sid = r.json()["id"]
                    created.add(sid)
                    r = await _bounded(client.patch(f"/v1/sessions/{sid}/finalize", json={}))
                    statuses[r.status_code] += 1
                    (finalized if r.status_code == 200 else unfinalized).add(sid)
                except TimeoutError:
                    hung.append(f"worker {n} request {i}")

        workers = [asyncio.create_task(worker(n)) for n in range(6)]
        try:
            await _eventually(lambda: len(finalized) >= 20, 60, "sessions finalized before the stop")
            assert (await client.get("/health/db")).status_code == 200

            await asyncio.to_thread(private_postgres.stop, "fast")
            down = await _until_status(client, "/health/db", 503, 30)
            body = (await client.get("/health/db")).json()
            assert body["ok"] is False and body["status"] == "unavailable" and "pool" in body
            failed_before = statuses[503]
            # Workers keep getting answers (fast 503s), not hangs, while the server is down.
            await _eventually(lambda: statuses[503] >= failed_before + 20, 60, "503s while down")
            assert (await client.get("/health/ready")).status_code == 503

            await asyncio.to_thread(private_postgres.start)
            up = await _until_status(client, "/health/db", 200, 60)
            recovered = len(finalized)
            await _eventually(lambda: len(finalized) >= recovered + 20, 60, "sessions finalized after restart")
        finally:
            stop.set()
            await asyncio.gather(*workers, return_exceptions=True)

        assert not hung, f"requests hung: {hung[:5]}"
        assert set(statuses) <= {200, 201, 503}, statuses
        assert statuses[503] > 0 and down[-1] == 503 and up[-1] == 200

        # The agent's retry path: sessions whose finalize got a 503 are finalized now.
        for sid in unfinalized - finalized:
            r = await _bounded(client.patch(f"/v1/sessions/{sid}/finalize", json={}))
            assert r.status_code == 200 and r.json()["status"] == "COMPLETED"
        # Nothing lost: every acknowledged session is there, and COMPLETED.
        listed = (await client.get("/v1/sessions", params={"limit": 500})).json()["data"]
        by_id = {s["id"]: s["status"] for s in listed}
        missing = created - by_id.keys()
        for sid in list(missing):  # beyond the first page
            r = await client.get(f"/v1/sessions/{sid}")
            if r.status_code == 200:
                by_id[sid] = r.json()["status"]
                missing.discard(sid)
        assert not missing, f"{len(missing)} acknowledged sessions lost"
        assert {by_id[sid] for sid in created} == {"COMPLETED"}
        health = (await client.get("/health/db")).json()
        assert health["ok"] is True and health["breaker"]["state"] == "closed"
        assert health["pool"]["checked_out"] == 0
        assert health["pool"]["events"]["invalidate"] > 0, "connections killed by the restart were invalidated"
