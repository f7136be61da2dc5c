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
