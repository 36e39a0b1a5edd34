"""Security through the live Serve application: CORS as browsers see it, and the logs of the run.

The app runs with ENV=test, so its CORS policy is the development fallback (localhost origins,
explicit, with credentials). The log scan reads every file of this Ray session's log directory
(replicas' stdout/stderr, Serve's own logs) after requests that carried a long, marked user text.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.integration

ALLOWED = "http://localhost:3000"
REFUSED = "https://evil.example"
EMOJI = re.compile("[\U0001f000-\U0001faff\U00002600-\U000027bf\U0000fe00-\U0000fe0f\U0000200d]")


def preflight(client: httpx.Client, origin: str) -> httpx.Response:
    return client.options(
        "/v1/audio/speech",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )


def test_preflight_from_an_allowed_origin_gets_the_allow_headers(client: httpx.Client) -> None:
    response = preflight(client, ALLOWED)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ALLOWED  # the origin itself, never "*"
    assert response.headers["access-control-allow-credentials"] == "true"
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed_headers = response.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed_headers and "content-type" in allowed_headers
    assert "origin" in response.headers.get("vary", "").lower()


def test_preflight_from_a_refused_origin_gets_no_allow_origin(client: httpx.Client) -> None:
    response = preflight(client, REFUSED)
    assert response.status_code == 400
    # Without Access-Control-Allow-Origin the browser refuses; Starlette's static preflight headers
    # (credentials, methods) may still be present and grant nothing on their own.
    assert "access-control-allow-origin" not in response.headers


def test_simple_requests_carry_allow_origin_only_for_allowed_origins(client: httpx.Client) -> None:
    allowed = client.get("/v1/models", headers={"Origin": ALLOWED})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ALLOWED
    assert allowed.headers["access-control-allow-credentials"] == "true"
    exposed = allowed.headers["access-control-expose-headers"].lower()
    assert "x-tts-engine" in exposed and "x-request-id" in exposed
    refused = client.get("/v1/models", headers={"Origin": REFUSED})
    assert refused.status_code == 200  # CORS is enforced by the browser; the server just withholds consent
    assert "access-control-allow-origin" not in refused.headers


def _session_log_dir() -> Path:
    import ray

    node = ray._private.worker.global_worker.node
    return Path(node.get_logs_dir_path())


def test_a_run_s_logs_hold_no_user_text_and_no_emoji(client: httpx.Client) -> None:
    marker = f"LOGMARK{uuid.uuid4().hex[:12]}"
    text = (
        f"\U0001f680 {marker} opens the reply. "
        + " ".join(f"Then sentence {i} follows with a few more words to speak." for i in range(5))
        + " The end sk-test-SECRETVALUE."
    )
    assert len(text) > 300
    body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm"}
    assert client.post("/v1/audio/speech", json=body).status_code == 200
    assert client.post("/v1/audio/speech", json={**body, "engine": "flite"}).status_code == 200
    assert client.post("/v1/audio/speech", json={**body, "voice": "nobody"}).status_code == 400
    assert client.post("/v1/audio/speech", json={**body, "input": text * 20}).status_code == 400
    assert client.post("/v1/audio/speech", json={**body, "input": text + "\x1b"}).status_code == 400

    log_dir = _session_log_dir()
    files = [p for p in log_dir.rglob("*") if p.is_file()]
    contents = {p: p.read_text(encoding="utf-8", errors="replace") for p in files}
    # The scan reads the replicas' output: the ingress announced itself at INFO.
    assert any("ingress ready" in c for c in contents.values()), f"no replica log under {log_dir}"
    leaks = [str(p) for p, c in contents.items() if text in c or "sk-test-SECRETVALUE" in c]
    assert not leaks, f"user text in logs: {leaks}"
    # The replicas log at INFO: essential events only, so not even the truncated text appears.
    assert not [str(p) for p, c in contents.items() if marker in c]
    with_emoji = [f"{p}: {line[:120]!r}" for p, c in contents.items() for line in c.splitlines() if EMOJI.search(line)]
    assert not with_emoji, "emoji in logs:\n" + "\n".join(with_emoji[:10])
