"""The web app's guard (ASGI middleware in front of FastAPI): the token, the Host and Origin checks of
a local server, and the request-size limit."""

from __future__ import annotations

import hmac
import json
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from fastapi import HTTPException

if TYPE_CHECKING:
    from .server import Server

TOKEN_COOKIE = "llm_dit_token"


class Guard:
    """ASGI middleware: the token on every request (when one is set), the Host and Origin checks, and the
    body-size limit (read from ``server``: ``token``, ``hosts``, ``max_upload``)."""

    def __init__(self, app, server: Server):
        self.app, self.server = app, server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if self.server.hosts is not None and _hostname(host) not in self.server.hosts:
            # a page elsewhere that resolves its own name to 127.0.0.1 (DNS rebinding) is not this server's page
            return await _send_json(send, 403, {"detail": f"host {host!r} is not this server's; open it as localhost"})
        origin = headers.get("origin")
        if scope["method"] not in ("GET", "HEAD", "OPTIONS") and origin and urlsplit(origin).netloc != host:
            return await _send_json(send, 403, {"detail": f"requests from {origin} are refused (another site)"})
        set_cookie = False
        if self.server.token:
            given, source = _token_of(scope, headers)
            if given is None or not hmac.compare_digest(given.encode(), self.server.token.encode()):
                return await _send_json(send, 401, {"detail": "this server needs its token: open the page as "
                                                              "/?token=TOKEN or send 'Authorization: Bearer TOKEN'"})
            set_cookie = source == "query"  # a page opened from its link: the page's own requests then carry it
        limit = self.server.max_upload
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await _send_json(send, 413, {"detail": _too_large(limit)})
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:  # a body without a length header, or one that lied
                    raise HTTPException(413, _too_large(limit))
            return message

        async def send_with_cookie(message):
            if set_cookie and message["type"] == "http.response.start":
                cookie = f"{TOKEN_COOKIE}={self.server.token}; Path=/; HttpOnly; SameSite=Strict"
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie.encode())]}
            await send(message)

        await self.app(scope, limited_receive, send_with_cookie)


def _token_of(scope, headers: dict[str, str]) -> tuple[str | None, str]:
    """The token a request carries and where: a bearer header, ``X-LLM-DIT-Token``, the cookie, ``?token=``."""
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip(), "header"
    if "x-llm-dit-token" in headers:
        return headers["x-llm-dit-token"], "header"
    for part in headers.get("cookie", "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == TOKEN_COOKIE:
            return value, "cookie"
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return query.get("token", [None])[0], "query"


def _hostname(host: str) -> str:
    """``localhost:7860`` -> ``localhost``; ``[::1]:7860`` -> ``::1``."""
    if host.startswith("["):
        return host[1:].split("]")[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _too_large(limit: int) -> str:
    return f"the request is larger than the upload limit of {limit / 2**20:g} MB (serve --max-upload-mb)"


async def _send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


