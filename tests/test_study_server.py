"""The real server as a subprocess: kill -9 in the middle of a rating session loses no acknowledged rating."""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import httpx
from sqlalchemy import select

from radgpt.study.criteria import NAMES
from radgpt.study.models import Rating, Slot, open_db
from radgpt.study.synthetic import free_port, make_study, start_server

PW = "correct-horse-battery"


def sign_in(base: str, user: str) -> tuple[httpx.Client, str]:
    c = httpx.Client(base_url=base, timeout=10)
    token = re.search(r'name="csrf" value="([^"]+)"', c.get("/login").text).group(1)
    c.post("/login", data={"username": user, "password": PW, "csrf": token, "next": "/"})
    listing = c.get("/read?list").text
    return c, re.search(r'name="csrf-token" content="([^"]+)"', listing).group(1)


def test_kill_minus_9_loses_no_acknowledged_rating(tmp_path):
    db = str(tmp_path / "study.db")
    make_study(db, tmp_path / "files", readers=["alice", "bob"], password=PW, n_cases=10)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(db, port)
    acked: dict[str, dict] = {}
    try:
        clients = [sign_in(base, u) for u in ("alice", "bob")]
        slots = []
        for c, csrf in clients:
            items = re.findall(r'href="/item/([^"]+)"', c.get("/read?list").text)
            slots += [(c, csrf, x["slot"]) for i in items for x in c.get(f"/api/items/{i}").json()["candidates"]]
        assert len(slots) == 60

        def rate(mine):
            # Keep saving (re-saving with new values after the first pass) until the server dies under us.
            # Each thread owns its slots, so per slot the saves are strictly sequential.
            n = 0
            while True:
                c, csrf, slot = mine[n % len(mine)]
                body = {k: (n + i) % 5 + 1 for i, k in enumerate(NAMES)} | {"comment": f"save {n}"}
                try:
                    r = c.put(f"/api/ratings/{slot}", json=body, headers={"X-CSRF-Token": csrf})
                except httpx.HTTPError:
                    return
                assert r.status_code == 200, r.text
                acked[slot] = body
                n += 1

        threads = [threading.Thread(target=rate, args=(slots[i::2],)) for i in range(2)]
        for t in threads:
            t.start()
        while len(acked) < 40 and all(t.is_alive() for t in threads):
            time.sleep(0.01)
        os.kill(server.pid, signal.SIGKILL)  # mid-session: requests are in flight
        server.wait(10)
        for t in threads:
            t.join(10)
        assert len(acked) >= 40
        # restart on the same file: every acknowledged rating is there, with the values last acknowledged
        # (a save in flight at the kill may or may not have landed; it was never acknowledged)
        server = start_server(db, port)
        c, _ = sign_in(base, "alice")
        assert c.get("/health").json() == {"status": "ok"}
        # on loopback only loopback Host names are served (a DNS-rebinding page would send its own name)
        assert httpx.get(f"{base}/health", headers={"Host": "evil.example"}).status_code == 400
        _, Session = open_db(db)
        with Session() as s:
            stored = {tok: r for tok, r in s.execute(select(Slot.token, Rating).join(Rating, Rating.slot_id == Slot.id))}
        missing = [slot for slot in acked if slot not in stored]
        assert not missing, f"{len(missing)} acknowledged ratings lost"
        for slot, body in acked.items():
            got = {k: getattr(stored[slot], k) for k in NAMES}
            last = {k: body[k] for k in NAMES}
            # the final in-flight save to this slot may have committed after its predecessor was acked
            if got != last:
                assert stored[slot].comment.startswith("save "), slot
                assert int(stored[slot].comment.split()[1]) > int(body["comment"].split()[1])
        with Session() as s:
            rows = s.scalars(select(Rating.slot_id)).all()
        assert len(rows) == len(set(rows))  # no duplicates either
    finally:
        server.kill()
        server.wait(10)
