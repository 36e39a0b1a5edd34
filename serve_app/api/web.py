"""The web playground and live status page: `GET /` and its static files under `/web/`.

Plain HTML, CSS and ES modules shipped in the package (`serve_app/web/`), no build step and no CDN:
the machines that run this service often have no internet. The files are read once, at import,
into memory, and served from a fixed table, so a request path can never name a file outside it.
The page calls the same public API as any client (same origin, so CORS does not apply to it; the
API key, when one is needed, is typed into the page and sent as a Bearer header). Open without
auth like `/health`: the page holds no data, every call it makes is authorised on its own.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import Response

from serve_app.core.errors import NotFound

router = APIRouter(tags=["web"], include_in_schema=False)

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
# The page loads nothing from elsewhere and runs no inline script, so a strict policy costs nothing
# and makes an injected tag inert. `blob:` is for the downloads and the recorded clip's preview.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "media-src 'self' blob:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)


@dataclass(frozen=True)
class WebFile:
    body: bytes
    content_type: str
    etag: str


def _load_files() -> dict[str, WebFile]:
    """Every servable file under serve_app/web, keyed by its path relative to that folder."""
    files: dict[str, WebFile] = {}
    pending = [(resources.files("serve_app") / "web", "")]
    while pending:
        folder, prefix = pending.pop()
        for entry in folder.iterdir():
            name = f"{prefix}{entry.name}"
            if entry.is_dir():
                pending.append((entry, f"{name}/"))
                continue
            content_type = CONTENT_TYPES.get("." + entry.name.rsplit(".", 1)[-1])
            if content_type is None:  # anything that is not part of the page
                continue
            body = entry.read_bytes()
            files[name] = WebFile(body, content_type, '"' + hashlib.sha256(body).hexdigest()[:16] + '"')
    return files


FILES = _load_files()


def _serve(request: Request, name: str) -> Response:
    web_file = FILES.get(name)
    if web_file is None:
        raise NotFound(f"'{name[:64]}' is not part of the playground")
    # Revalidated on every load (a deploy changes the files without renaming them), answered 304
    # when unchanged, so a reload costs a round trip and no bytes.
    headers = {
        "ETag": web_file.etag,
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
    }
    if web_file.content_type.startswith("text/html"):
        headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        headers["Referrer-Policy"] = "no-referrer"
    if request.headers.get("if-none-match") == web_file.etag:
        return Response(status_code=304, headers=headers)
    return Response(web_file.body, media_type=web_file.content_type, headers=headers)


@router.api_route("/", methods=["GET", "HEAD"])
async def playground(request: Request) -> Response:
    """The playground page (Speak, Voices, Status)."""
    return _serve(request, "index.html")


@router.api_route("/web/{name:path}", methods=["GET", "HEAD"])
async def web_file(request: Request, name: str) -> Response:
    """The page's scripts, style sheet and icon."""
    return _serve(request, name)
