"""What stands between the network and the app: connections per client and in all, a deadline
and a size for request headers, a byte budget and a deadline for request bodies (a photo's for
the upload, a small one for JSON), the API key (and, with the page's cookie, the request's
origin), HEAD answered as GET, and the security headers of every response.

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
    "img-src 'self' blob: data:{images}; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def security_headers(image_origin: str | None = None) -> list[tuple[bytes, bytes]]:
    """The headers of every answer; `image_origin`: where presigned photo URLs lead
    (--image-redirect), the one other origin the page may load images from."""
    csp = CSP.format(images=f" {image_origin}" if image_origin else "")
    return [
        (b"x-content-type-options", b"nosniff"),
        (b"content-security-policy", csp.encode()),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"no-referrer"),
        (b"cross-origin-opener-policy", b"same-origin"),
    ]


SECURITY_HEADERS = security_headers()


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
    response, errors included. With --image-redirect the app's state names the presigned
    URLs' origin (`image_origin`, set once the service is open), which img-src then allows."""

    def __init__(self, app):
        self.app = app
        self.origin, self.headers = None, SECURITY_HEADERS

    def _headers(self, scope) -> list[tuple[bytes, bytes]]:
        origin = getattr(getattr(scope.get("app"), "state", None), "image_origin", None)
        if origin != self.origin:
            self.origin, self.headers = origin, security_headers(origin)
        return self.headers

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = self._headers(scope)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in headers if k not in names]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class RequestLimits:
    """A request line longer than any the app makes (a 100 kB point id) is 414, headers of
    more than HEADERS bytes 431: unread, not echoed. (uvicorn bounds headers that arrive in
    pieces; these bound the ones that arrive in one write.)"""

    TARGET = 4096  # bytes of path and query
    HEADERS = 16_384  # bytes of header names and values

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if len(scope["raw_path"]) + len(scope["query_string"]) > self.TARGET:
            return await answer(send, 414, "The address is too long.")
        if sum(len(k) + len(v) + 4 for k, v in scope["headers"]) > self.HEADERS:
            return await answer(send, 431, "The request's headers are too large.")
        await self.app(scope, receive, send)


class HostCheck:
    """Only the Host names the server answers to (a DNS-rebinding page cannot read a server
    that listens on localhost): any other is 400, answered as JSON like every other error."""

    def __init__(self, app, hosts: list[str]):
        self.app, self.hosts = app, set(hosts)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or "*" in self.hosts:
            return await self.app(scope, receive, send)
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if name not in self.hosts:
            return await answer(send, 400, "This server does not answer to that host name.")
        await self.app(scope, receive, send)


class HeadAsGet:
    """HEAD on any GET route answers as GET would, without the body (RFC 9110)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)

        async def headers_only(message):
            if message["type"] == "http.response.body":
                if not message.get("more_body"):
                    await send({"type": "http.response.body", "body": b""})
                return
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


class _Refused(Exception):
    """The request body went past its budget or its deadline (raised inside receive)."""


class BodyLimit:
    """Every request body is counted as it arrives: past its budget (whatever the
    Content-Length says, chunked or not) the app stops reading and the client gets 413; a body
    that has not fully arrived within `timeout` seconds gets 408. The budget of an upload path
    is the photo cap plus FORM_SLACK; of every other request JSON_BYTES, about twice what the
    largest valid JSON body needs (100 point ids and 4 vectors of 512 floats, ~60 kB), so
    that no parser is handed megabytes of numbers. `counted(n)` is told the bytes read, for
    the metrics."""

    FORM_SLACK = 65536  # the form's other fields and the multipart framing
    JSON_BYTES = 131_072

    def __init__(
        self,
        app,
        cap: int,
        timeout: float,
        counted: Callable[[int], object],
        uploads: tuple[str, ...] = (),
    ):
        self.app, self.cap, self.timeout, self.counted = app, cap, timeout, counted
        self.uploads = uploads
        self.upload_limit = cap + self.FORM_SLACK

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        upload = scope.get("path") in self.uploads
        limit = self.upload_limit if upload else self.JSON_BYTES
        too_large = self.too_large() if upload else "The request body is too large."
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            return await answer(send, 413, too_large)  # refused before reading a byte
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
                if state["read"] > limit:
                    state["refused"] = (413, too_large)
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


SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def cross_site(scope) -> bool:
    """Whether a browser says the request comes from another site or origin: its Origin is
    not this server's own (the Host it was sent to), or its Sec-Fetch-Site is not same-origin.
    (A page on another localhost port is "same site" to a SameSite=Strict cookie.)"""
    headers = dict(scope["headers"])
    fetch_site = headers.get(b"sec-fetch-site", b"").decode("latin-1")
    if fetch_site and fetch_site not in ("same-origin", "none"):
        return True
    origin = headers.get(b"origin", b"").decode("latin-1")
    if not origin:
        return False
    host = headers.get(b"host", b"").decode("latin-1")
    return origin.split("://", 1)[-1].rstrip("/") != host


def key_from_cookie(scope) -> bool:
    auth = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
    return auth[:7].lower() != "bearer "


class KeyRequired:
    """With an API key set, every request but the page, its assets, /auth and /healthz needs
    it (401 otherwise); one that changes or runs something (not GET or HEAD) with the key
    from the page's cookie must also come from the page's own origin (403 otherwise)."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] != "http" or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return await self.app(scope, receive, send)
        if key_matches(key_of(scope), self.key):
            if scope["method"] in SAFE_METHODS or not key_from_cookie(scope):
                return await self.app(scope, receive, send)
            if not cross_site(scope):
                return await self.app(scope, receive, send)
            return await answer(send, 403, "This request came from another site's page.")
        await answer(
            send,
            401,
            "This search needs its access key: send `Authorization: Bearer KEY`, or enter the "
            "key on the page.",
            [(b"www-authenticate", b'Bearer realm="search"')],
        )


class HeaderDeadline(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, with a deadline for each request's headers (a client that
    sends them too slowly, or not at all on a connection it keeps open, is disconnected) and
    a cap on the connections one client address, and all clients, hold at once: a connection
    past either is closed as it opens, so that idle connections cost their client, never the
    requests of others (uvicorn's own limit_concurrency answers everyone 503 instead)."""

    header_timeout = 10.0
    per_client = 32
    total = 1024
    held: dict[str, int] = {}  # address → open connections; one dict per server (protocol())

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self._client = str(peer[0]) if peer else "?"
        held = self.held
        if held.get(self._client, 0) >= self.per_client or sum(held.values()) >= self.total:
            self._client = None
            transport.close()
            return
        held[self._client] = held.get(self._client, 0) + 1
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
        if getattr(self, "_client", None) is not None:
            left = self.held.get(self._client, 1) - 1
            if left > 0:
                self.held[self._client] = left
            else:
                self.held.pop(self._client, None)
            self._client = None
        super().connection_lost(exc)


def protocol(
    header_timeout: float, per_client: int = HeaderDeadline.per_client, total: int = 1024
) -> type[HeaderDeadline]:
    """The protocol class of one server: its deadlines, caps and connection counts."""
    settings = {"header_timeout": header_timeout, "per_client": per_client, "total": total}
    return type("GuardedHTTP", (HeaderDeadline,), {**settings, "held": {}})
