"""The playground's routes (serve_app/api/web.py) in-process: what is served, with which headers,
and that nothing outside the packaged web files can be named. The page itself is tested in a real
browser by tests/browser/test_playground.py."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from serve_app.api import web
from serve_app.api.errors import install_error_handlers


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(web.router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as c:
        yield c


async def test_root_serves_the_page_with_a_strict_policy(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert '<script type="module" src="/web/js/main.js">' in response.text


async def test_every_referenced_file_is_served(client: httpx.AsyncClient) -> None:
    """What the page and its modules reference exists, with the right type (no 404 in the console)."""
    page = (await client.get("/")).text
    paths = set(re.findall(r'(?:src|href)="(/web/[^"]+)"', page))
    for module in [name for name in web.FILES if name.endswith(".js")]:
        source = web.FILES[module].body.decode()
        paths |= {f"/web/js/{name}" for name in re.findall(r'from "\./([\w.-]+\.js)"', source)}
    assert {"/web/js/main.js", "/web/style.css", "/web/favicon.svg", "/web/js/speak.js"} <= paths
    for path in paths:
        response = await client.get(path)
        assert response.status_code == 200, path
        expected = web.CONTENT_TYPES["." + path.rsplit(".", 1)[-1]]
        assert response.headers["content-type"] == expected


async def test_unchanged_files_answer_304(client: httpx.AsyncClient) -> None:
    first = await client.get("/web/style.css")
    etag = first.headers["etag"]
    assert first.headers["cache-control"] == "no-cache"
    again = await client.get("/web/style.css", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""


async def test_head_answers_like_get(client: httpx.AsyncClient) -> None:
    response = await client.head("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")


@pytest.mark.parametrize(
    "path",
    ["/web/nope.js", "/web/../api/web.py", "/web/%2e%2e/api/web.py", "/web/js/../../app.py", "/web/", "/web/js"],
)
async def test_only_packaged_files_can_be_named(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_the_table_holds_only_web_files() -> None:
    assert "index.html" in web.FILES and "js/main.js" in web.FILES
    assert all(name.rsplit(".", 1)[-1] in ("html", "css", "js", "svg") for name in web.FILES)
