"""Network helpers shared by the servers (serve, study): both bind loopback unless told otherwise."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """True for localhost and any loopback address (127.0.0.0/8, ::1, bracketed [::1])."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# Same-origin everything: the pages load no CDN asset and talk only to the server that served them.
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
            "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")


class SecurityHeaders:
    """Pure ASGI middleware (Starlette's @app.middleware("http") wraps every response in extra tasks and
    breaks streaming): CSP, nosniff, no referrer, and no caching of anything but static assets."""

    def __init__(self, app, csp: str = PAGE_CSP):
        self.app, self.csp = app, csp

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.datastructures import MutableHeaders

        static = scope["path"].startswith("/static/")

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Content-Security-Policy"] = self.csp
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "no-referrer"
                if not static:
                    headers["Cache-Control"] = "no-store"  # report text must not linger in caches
            await send(message)

        await self.app(scope, receive, send_with_headers)


class SameOrigin:
    """Pure ASGI middleware: refuse (403) any request a browser sent from another origin.

    A page on any site can POST a "simple" request (text/plain, form) to a loopback server without a CORS
    preflight; the browser then hides the answer, but the server has already done the work (and read the
    text). Browsers always send `Origin` on cross-origin POSTs and `Sec-Fetch-Site` on every request, so a
    request whose Origin is not this server's own Host, or that is marked cross-site, is refused before any
    route runs. Preflights (OPTIONS) are refused as well: this server grants no CORS. Clients that are not
    browsers (curl, the OpenAI SDK) send neither header and are unaffected."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        reason = cross_origin_reason(scope["method"], headers)
        if reason is None:
            return await self.app(scope, receive, send)
        from starlette.responses import JSONResponse

        resp = JSONResponse({"error": {"message": f"cross-origin request refused: {reason}", "type":
                                       "invalid_request_error", "code": "cross_origin"}}, status_code=403)
        await resp(scope, receive, send)


def declares_json(content_type: str) -> bool:
    """A body declared `application/json` (parameters aside): what a page on another site cannot send
    without a CORS preflight, which `SameOrigin` refuses."""
    return content_type.split(";")[0].strip().lower() == "application/json"


def cross_origin_reason(method: str, headers: dict[str, str]) -> str | None:
    """Why a request (lower-cased header names) is cross-origin, or None when it is same-origin or not from a
    browser."""
    from urllib.parse import urlsplit

    if method == "OPTIONS":
        return "this server does not allow cross-origin requests (no CORS)"
    site = headers.get("sec-fetch-site", "")
    if site == "cross-site" or site == "same-site":
        return f"Sec-Fetch-Site is {site}"
    if site == "same-origin":
        # set by the browser, never by a page; and with Referrer-Policy: no-referrer Chromium sends the page's
        # own POSTs with "Origin: null", which the check below would refuse
        return None
    origin = headers.get("origin")
    if origin is None:
        return None
    host = headers.get("host", "").lower()
    if origin == "null" or urlsplit(origin).netloc.lower() != host:
        return "the Origin header is not this server's own"
    return None


def slow_client_guard(seconds: float = 10.0):
    """uvicorn's h11 protocol with a deadline on reading each request (its line, headers and body).

    uvicorn times out idle keep-alive connections but not a client that sends its headers a byte at a
    time, nor one that connects and sends nothing: 32 such connections were held for 70 s in a probe. Here
    every request must arrive whole within `seconds` of its first byte (or of the connection opening),
    else the connection is closed. Pass the class as `uvicorn.run(..., http=slow_client_guard())`."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class SlowClientGuard(H11Protocol):
        _deadline = None

        def _arm(self) -> None:
            if self._deadline is None:
                self._deadline = self.loop.call_later(seconds, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
                self.transport.close()  # the request never arrived whole: free the connection

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self.conn.their_state == h11.IDLE:
                self._arm()  # a request (the first, or the next on a kept-alive connection) is starting
            super().data_received(data)
            if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
                self._disarm()  # read whole: the app's own timeout governs from here

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return SlowClientGuard
