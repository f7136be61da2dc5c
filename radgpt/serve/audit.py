"""The audit log of `radgpt serve`: exactly one JSON line per /v1 request, whatever its fate, never its text.

`AuditRequests` (ASGI middleware) writes the line when the response is over; the pipeline adds what it
knows to it with `note` (model, sizes, sha256 hashes, token counts, error code, outcome).
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from pathlib import Path


def note(request, **fields) -> None:
    """Add to this request's audit line: sizes, hashes, counts, codes — never text."""
    rec = getattr(request.state, "audit", None)
    if rec is not None:
        rec.update(fields)


class AuditLog:
    """JSON lines: time, client, endpoint, model, status, sizes, latency, sha256 of input/output text."""

    def __init__(self, path: str | None):
        self.path = Path(path) if path else None
        self.lock = threading.Lock()
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **rec) -> None:
        if not self.path:
            return
        rec = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **rec}
        line = json.dumps(rec, ensure_ascii=False) + "\n"
        with self.lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line)


class AuditRequests:
    """Pure ASGI middleware: exactly one audit line per /v1 request, written when the response is over —
    answered, refused, failed, timed out or left by its client mid-stream. Routes add what they know (model,
    hashes, token counts, outcome) to `request.state.audit`; this layer adds status, timing and bytes."""

    def __init__(self, app, audit: AuditLog):
        self.app, self.audit = app, audit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/v1/") or not self.audit.path:
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        rec: dict = {}
        scope.setdefault("state", {})["audit"] = rec
        seen = {"status": None, "ended": False, "bytes": 0}

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            elif message["type"] == "http.response.body":
                seen["bytes"] += len(message.get("body", b""))
                seen["ended"] = not message.get("more_body", False)
            await send(message)

        outcome = None
        try:
            await self.app(scope, receive, send_and_note)
        except BaseException as e:  # noqa: BLE001 — noted, then re-raised as it was
            outcome = "disconnected" if isinstance(e, asyncio.CancelledError) else "server_error"
            raise
        finally:
            length = dict(scope.get("headers") or []).get(b"content-length", b"")
            status = seen["status"] or (500 if outcome == "server_error" else 499)
            if outcome is None and not seen["ended"]:
                outcome = "disconnected"  # the client left before the response was over
            client = scope.get("client")
            try:
                self.audit.write(client=client[0] if client else "?", endpoint=scope["path"], status=status,
                                 outcome=rec.pop("outcome", None) or outcome or ("ok" if status < 400 else "refused"),
                                 request_bytes=int(length) if length.isdigit() else 0,
                                 response_bytes=seen["bytes"], **rec,
                                 latency_ms=round((time.perf_counter() - t0) * 1000, 1))
            except OSError as e:  # a full disk must not turn answered requests into errors; say it, without text
                print(f"radgpt serve: audit log not written ({type(e).__name__})", file=sys.stderr, flush=True)
