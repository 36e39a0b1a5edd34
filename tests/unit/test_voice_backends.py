"""The voice store's contract, run against every backend on real storage: a directory, the sessions
database on SQLite and on PostgreSQL (a throwaway database on the local server), and an S3 bucket on
a real local S3 server (moto's, over HTTP).

Each test also opens a second backend over the same storage, standing for another replica: what one
replica uploads the other sees at once, and what one deletes the other refuses within the store's
check interval.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from config.settings import load_settings
from serve_app.core.audio import StreamEncoder
from serve_app.core.errors import InvalidInput
from serve_app.core.voices import is_clone_id
from serve_app.db.database import Database
from serve_app.db.voices import DatabaseBackend
from serve_app.launch import free_port
from serve_app.voice_store import MAX_SECONDS, VoiceBackend, VoiceLimitReached, VoiceStore, VoiceStoreUnavailable
from serve_app.voice_store.directory import DirectoryBackend
from serve_app.voice_store.s3 import S3Backend
from tests.support import PG_ADMIN_DSN, ManualClock, throwaway_database

BACKENDS = ("directory", "sqlite", "postgresql", "s3")
KEY = "zonos:Zyphra/Zonos-v0.1-hybrid"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A real S3 API server (moto) on a free local port, with one bucket."""
    moto_server = pytest.importorskip("moto.server")
    import botocore.session

    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    )
    client.create_bucket(Bucket="voices")
    try:
        yield endpoint
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def storage(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Callable[[], Any]]:
    """A factory of backends over one fresh storage of `kind` (each call: another replica's backend)."""
    made: list[VoiceBackend] = []

    def track(backend: VoiceBackend) -> VoiceBackend:
        made.append(backend)
        return backend

    try:
        if kind == "directory":
            yield lambda: track(DirectoryBackend(tmp_path / "voices"))
        elif kind == "s3":
            endpoint = request.getfixturevalue("s3_endpoint")
            settings = load_settings(
                _env_file=None, voices_backend="s3", voices_s3_endpoint_url=endpoint, voices_s3_bucket="voices",
                voices_s3_prefix=f"{tmp_path.name}/", voices_s3_access_key_id="test",
                voices_s3_secret_access_key="test",
            )  # fmt: skip
            yield lambda: track(S3Backend(settings.voices))
        else:
            async with contextlib.AsyncExitStack() as stack:
                if kind == "sqlite":
                    url = f"sqlite+aiosqlite:///{tmp_path}/sessions.db"
                else:
                    name = await stack.enter_async_context(throwaway_database("tts_voices"))
                    url = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + f"/{name}"
                settings = load_settings(_env_file=None, database_url=url)
                first = Database(settings)
                await first.migrate()
                await first.dispose()
                yield lambda: track(DatabaseBackend(Database(settings), owned=True))
    finally:
        for backend in made:
            await backend.aclose()


@pytest.fixture(params=BACKENDS)
async def replicas(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Callable[..., VoiceStore]]:
    """`replicas(**options)`: a VoiceStore over another backend on the same storage each call."""
    clock = ManualClock(1000)
    async with storage(request.param, tmp_path, request) as make:

        def replica(**options: Any) -> VoiceStore:
            return VoiceStore(make(), clock=clock, **options)

        replica.clock = clock  # type: ignore[attr-defined]
        yield replica


def speech_like(seconds: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * 220 * t) * 9000 * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))).astype("<i2")


def encoded(samples: np.ndarray, fmt: str, rate: int = 16000) -> bytes:
    encoder = StreamEncoder(fmt, rate)
    return encoder.feed(samples.tobytes()) + encoder.finish()


async def test_registers_lists_reads_and_deletes(replicas: Callable[..., VoiceStore]) -> None:
    store = replicas()
    assert await store.list() == [] and await store.backend.count() == 0
    voice = await store.add(encoded(speech_like(3.0), "mp3"), "  Narrator  ")
    assert is_clone_id(voice.id) and voice.name == "Narrator"
    assert voice.duration_s == pytest.approx(3.0, abs=0.15)
    assert await store.get(voice.id) == voice and await store.exists(voice.id)
    loaded = await store.load(voice.id)
    assert loaded is not None
    rate, samples = loaded
    assert rate == voice.sample_rate and len(samples) == pytest.approx(3.0 * rate, rel=0.05)
    second = await store.add(encoded(speech_like(2.0), "wav"))
    assert second.name == "cloned voice"
    listed = await store.list()
    assert [v.id for v in listed] == [v.id for v in sorted([voice, second], key=lambda v: (v.created_at, v.id))]
    assert listed[[v.id for v in listed].index(voice.id)] == voice
    assert await store.backend.count() == 2
    assert await store.delete(voice.id) and not await store.delete(voice.id)
    assert [v.id for v in await store.list()] == [second.id]
    assert await store.get(voice.id) is None and await store.load(voice.id) is None
    assert not await store.exists(voice.id)
    assert voice.to_dict()["object"] == "voice" and voice.to_dict()["cloned"] is True


async def test_refuses_what_is_not_a_usable_clip(replicas: Callable[..., VoiceStore]) -> None:
    store = replicas()
    with pytest.raises(InvalidInput, match="not decodable"):
        await store.add(b"definitely not audio" * 100)
    with pytest.raises(InvalidInput, match="too short"):
        await store.add(encoded(speech_like(0.3), "wav"))
    with pytest.raises(InvalidInput, match="silent"):
        await store.add(encoded(np.zeros(32000, dtype="<i2"), "wav"))
    with pytest.raises(InvalidInput, match="too long"):
        await store.add(encoded(speech_like(MAX_SECONDS + 5, rate=8000), "mp3", rate=8000))
    assert await store.list() == []


async def test_limit_and_ids_that_are_not_ours(replicas: Callable[..., VoiceStore]) -> None:
    store = replicas(max_voices=1)
    await store.add(encoded(speech_like(1.5), "wav"))
    with pytest.raises(VoiceLimitReached):
        await replicas(max_voices=1).add(encoded(speech_like(1.5), "wav"))  # the limit is the shared count
    for bad in ("../secret", "secret", "clone-../../x", "CLONE-0123456789AB", "clone-0123456789ab"):
        assert await store.get(bad) is None and not await store.delete(bad) and not await store.exists(bad)
        assert await store.load(bad) is None and await store.embedding(bad, KEY) is None


async def test_another_replica_sees_an_upload_at_once(replicas: Callable[..., VoiceStore]) -> None:
    writer, reader = replicas(), replicas()
    assert not await reader.exists("clone-0123456789ab")  # a miss is not cached...
    voice = await writer.add(encoded(speech_like(1.5), "wav"), "shared")
    assert await reader.exists(voice.id)  # ...so a new voice is usable everywhere at once
    assert await reader.get(voice.id) == voice
    assert [v.id for v in await reader.list()] == [voice.id]
    assert await reader.load(voice.id) is not None


async def test_a_deletion_reaches_other_replicas_within_the_check_interval(
    replicas: Callable[..., VoiceStore],
) -> None:
    writer, reader = replicas(check_interval_s=2.0), replicas(check_interval_s=2.0)
    clock = replicas.clock  # type: ignore[attr-defined]
    voice = await writer.add(encoded(speech_like(1.5), "wav"))
    assert await reader.exists(voice.id)
    assert await writer.delete(voice.id)
    assert not await writer.exists(voice.id)  # the replica that deleted it refuses it at once
    clock.now += 1.0
    assert await reader.exists(voice.id)  # trusted for the interval, without asking the backend
    clock.now += 1.5
    assert not await reader.exists(voice.id)  # past it: asked again, and refused
    assert await reader.load(voice.id) is None


async def test_embeddings_are_shared_per_key_and_go_with_their_voice(replicas: Callable[..., VoiceStore]) -> None:
    first, second = replicas(), replicas()
    voice = await first.add(encoded(speech_like(1.5), "wav"))
    assert await second.embedding(voice.id, KEY) is None
    await first.save_embedding(voice.id, KEY, b"\x01embedding")
    await second.save_embedding(voice.id, KEY, b"\x02embedding")  # a second replica racing: last one wins
    await first.save_embedding(voice.id, "zonos:other-model", b"other")
    assert await second.embedding(voice.id, KEY) == b"\x02embedding"
    assert await first.embedding(voice.id, "zonos:other-model") == b"other"
    assert await first.delete(voice.id)
    assert await second.embedding(voice.id, KEY) is None
    await second.save_embedding(voice.id, KEY, b"late")  # the voice is gone: nothing is stored
    assert await second.embedding(voice.id, KEY) is None and not await second.exists(voice.id)


def test_the_default_backend_is_the_sessions_database() -> None:
    from serve_app.voice_store.factory import build_voice_store

    settings = load_settings(_env_file=None)
    assert settings.voices.backend == "database"
    assert build_voice_store(settings).backend_name == "database"
    with pytest.raises(Exception, match="VOICES_S3_BUCKET"):
        load_settings(_env_file=None, voices_backend="s3")


async def test_an_unreachable_object_store_is_a_503_not_a_crash() -> None:
    settings = load_settings(
        _env_file=None, voices_backend="s3", voices_s3_endpoint_url=f"http://127.0.0.1:{free_port()}",
        voices_s3_bucket="voices", voices_s3_access_key_id="x", voices_s3_secret_access_key="y", voices_s3_timeout_s=1,
    )  # fmt: skip
    store = VoiceStore(S3Backend(settings.voices))
    try:
        with pytest.raises(VoiceStoreUnavailable) as caught:
            await store.exists("clone-0123456789ab")
        assert caught.value.status == 503
    finally:
        await store.aclose()
