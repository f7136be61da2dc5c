"""Network helpers shared by the servers (serve, study): both bind loopback unless told otherwise, make no
outbound connections, and are started and waited for the same way by the benches and tests."""

from __future__ import annotations

import ipaddress
import os

# The Host headers a loopback-bound server accepts: a page elsewhere that rebinds its own DNS name to
# 127.0.0.1 still sends its own name as Host, so it is refused (DNS rebinding).
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]

# FastAPI's built-in OpenTelemetry (on by default since 0.165) would record request data, validation errors
# included, if a global provider or OTEL_* exporters were set: report text never leaves the process.
NO_FASTAPI_TELEMETRY = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False,
                        "auto_configure": False}


def no_egress_env() -> None:
    """Set the environment so that no library fetches or reports anything: the Hugging Face hub and its
    datasets/transformers clients offline (models load from local folders only), their telemetry off.
    Call it before importing them: several read these variables once, at import."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
        os.environ[var] = "1"
    os.environ["DO_NOT_TRACK"] = "1"  # the cross-tool convention (huggingface_hub honours it too)


def free_port() -> int:
    """A loopback TCP port free at the time of asking (for a test or bench server)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerDidNotStart(RuntimeError):
    """A server process exited, or did not answer /health with 200 in time; the message ends with the tail of
    its stderr when there is one."""


def wait_until_healthy(url: str, timeout: float = 60.0, proc=None, interval: float = 0.2) -> None:
    """Poll `url`/health until it answers 200 (`url` is the server's base, e.g. http://127.0.0.1:8000).

    With `proc` (a subprocess.Popen of the server), stop as soon as it exits; on failure it is killed and its
    stderr tail (when piped) goes into the ServerDidNotStart message. Not 200 yet (503 while a model loads)
    and connection refused both mean: keep waiting."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{url}/health", timeout=min(2.0, max(interval, 0.5)))
            if r.status_code == 200:
                return
            last = f"/health answered {r.status_code}"
        except httpx.HTTPError as e:
            last = type(e).__name__
        if proc is not None and proc.poll() is not None:
            raise ServerDidNotStart(f"the server at {url} exited with code {proc.returncode} before it was "
                                    f"healthy{_stderr_tail(proc)}")
        time.sleep(interval)
    if proc is not None:
        proc.kill()
        proc.wait(10)
    raise ServerDidNotStart(f"the server at {url} was not healthy within {timeout:g} s ({last})"
                            f"{_stderr_tail(proc)}")


def _stderr_tail(proc, chars: int = 2000) -> str:
    stream = getattr(proc, "stderr", None)
    if stream is None:
        return ""
    try:
        text = stream.read()
    except (OSError, ValueError):
        return ""
    text = text.decode(errors="replace") if isinstance(text, bytes) else text
    return f"; its stderr ends:\n{text[-chars:]}" if text.strip() else ""


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
