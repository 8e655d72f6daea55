"""What stands between the network and the app: a byte budget and a deadline for request bodies,
a deadline for request headers, the API key, and the security headers of every response.

Pure ASGI middleware (and one uvicorn protocol), so that a body is counted as it arrives, before
any parser buffers it, and a refused request is never read further."""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Callable
from http.cookies import SimpleCookie

from uvicorn.protocols.http.h11_impl import H11Protocol

KEY_COOKIE = "search_key"
OPEN_PATHS = ("/", "/healthz", "/auth", "/favicon.ico")  # no key needed
OPEN_PREFIXES = ("/static/",)  # the page's own script and style
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' blob: data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


async def answer(send, status: int, detail: str, headers: list | None = None) -> None:
    """A JSON error answer with one line of detail."""
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class SecurityHeaders:
    """nosniff, a same-origin Content-Security-Policy, no framing, no referrer: on every
    response, errors included."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in names]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class TargetLimit:
    """A request line longer than any the app makes (a 100 kB point id) is 414, unread and
    not echoed."""

    MAX = 4096  # bytes of path and query

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and len(scope["raw_path"]) + len(scope["query_string"]) > (
            self.MAX
        ):
            return await answer(send, 414, "The address is too long.")
        await self.app(scope, receive, send)


class _Refused(Exception):
    """The request body went past its budget or its deadline (raised inside receive)."""


class BodyLimit:
    """Every request body is counted as it arrives: past the photo cap plus FORM_SLACK bytes
    (whatever the Content-Length says, chunked or not) the app stops reading and the client
    gets 413; a body that has not fully arrived within `timeout` seconds gets 408.
    `counted(n)` is told the bytes read, for the metrics."""

    FORM_SLACK = 65536  # the form's other fields and the multipart framing

    def __init__(self, app, cap: int, timeout: float, counted: Callable[[int], object]):
        self.app, self.cap, self.timeout, self.counted = app, cap, timeout, counted
        self.limit = cap + self.FORM_SLACK

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await answer(send, 413, self.too_large())  # refused before reading a byte
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        state = {"read": 0, "refused": None, "started": False}

        async def limited_receive():
            if state["refused"]:
                return {"type": "http.disconnect"}
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                state["refused"] = (408, "The photo arrived too slowly; try again.")
                raise _Refused from None
            if message["type"] == "http.request":
                size = len(message.get("body", b""))
                state["read"] += size
                self.counted(size)
                if state["read"] > self.limit:
                    state["refused"] = (413, self.too_large())
                    raise _Refused
            return message

        async def guarded_send(message):
            if state["refused"]:
                return  # the app's own answer to a cut-off body is not sent
            state["started"] = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _Refused:
            pass
        if state["refused"] and not state["started"]:
            await answer(send, *state["refused"])

    def too_large(self) -> str:
        return f"The upload is larger than {self.cap / 1e6:g} MB."


def key_of(scope) -> str | None:
    """The key a request carries: `Authorization: Bearer KEY`, or the page's cookie."""
    headers = dict(scope["headers"])
    auth = headers.get(b"authorization", b"").decode("latin-1")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    cookie = SimpleCookie()
    try:
        cookie.load(headers.get(b"cookie", b"").decode("latin-1"))
    except Exception:  # a garbled cookie header is no key
        return None
    return cookie[KEY_COOKIE].value if KEY_COOKIE in cookie else None


def key_matches(given: str | None, key: str) -> bool:
    """Compare in constant time (no timing hint of how much of a guess was right)."""
    return given is not None and hmac.compare_digest(given.encode(), key.encode())


class KeyRequired:
    """With an API key set, every request but the page, its assets, /auth and /healthz needs
    it (401 otherwise)."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if (
            scope["type"] != "http"
            or path in OPEN_PATHS
            or path.startswith(OPEN_PREFIXES)
            or key_matches(key_of(scope), self.key)
        ):
            return await self.app(scope, receive, send)
        await answer(
            send,
            401,
            "This search needs its access key: send `Authorization: Bearer KEY`, or enter the "
            "key on the page.",
            [(b"www-authenticate", b'Bearer realm="search"')],
        )


class HeaderDeadline(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, with a deadline for each request's headers: a client that
    sends them too slowly (or not at all, on a connection it keeps open) is disconnected."""

    header_timeout = 10.0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        self._headers_due = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if getattr(self, "_headers_due", None) is not None:
            self._headers_due.cancel()
            self._headers_due = None

    def _headers_late(self) -> None:
        self._headers_due = None
        if not self.transport.is_closing():
            self.transport.close()

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request's headers have arrived
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._disarm()
            self._arm()  # the next request on this connection has its own deadline

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)


def protocol(header_timeout: float) -> type[HeaderDeadline]:
    return type("GuardedHTTP", (HeaderDeadline,), {"header_timeout": header_timeout})
