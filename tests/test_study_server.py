"""The real server as a subprocess: kill -9 in the middle of a rating session loses no acknowledged rating;
20 readers saving at once lose or duplicate nothing; slow clients are disconnected; nothing a client sends
reaches the server's log. The storage tests run on SQLite and on PostgreSQL (radgpt.study.testing)."""

from __future__ import annotations

import asyncio
import os
import re
import selectors
import signal
import socket
import threading
import time

import httpx
from argon2 import PasswordHasher
from sqlalchemy import func, select

from radgpt.study import auth
from radgpt.study.criteria import NAMES
from radgpt.study.db import Rating, Slot, open_db
from radgpt.study.synthetic import free_port, make_study, start_server

# fixtures `backend` and `new_db`: each storage test runs on SQLite and on PostgreSQL
pytest_plugins = ["radgpt.study.testing"]
PW = "correct-horse-battery"


def sign_in(base: str, user: str) -> tuple[httpx.Client, str]:
    c = httpx.Client(base_url=base, timeout=10)
    token = re.search(r'name="csrf" value="([^"]+)"', c.get("/login").text).group(1)
    c.post("/login", data={"username": user, "password": PW, "csrf": token, "next": "/"})
    listing = c.get("/read?list").text
    return c, re.search(r'name="csrf-token" content="([^"]+)"', listing).group(1)


def test_kill_minus_9_loses_no_acknowledged_rating(tmp_path, new_db):
    db = new_db()
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


def test_twenty_readers_saving_at_once_lose_and_duplicate_nothing(tmp_path, new_db, monkeypatch):
    # bench/bench_study_load.py, small: 20 readers sign in through the form, then all save back to back with
    # no think time; afterwards every acknowledged rating is in the database with the values last sent.
    db = new_db()
    readers = [f"reader{i:02d}" for i in range(20)]
    # cheap argon2 parameters, stored in the hashes, so the server's checks are cheap too: 40 hashes at the
    # defaults take ~15 s on a busy 2-core machine, and sign-ins are not what this test is about
    monkeypatch.setattr(auth, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    make_study(db, tmp_path / "files", readers=readers, password=PW, n_cases=4)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(db, port)
    per_reader = 8
    sent: dict[str, dict] = {}
    errors: list[str] = []

    async def reader(name: str, n: int) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=60) as c:
            token = re.search(r'name="csrf" value="([^"]+)"', (await c.get("/login")).text).group(1)
            await c.post("/login", data={"username": name, "password": PW, "csrf": token, "next": "/"})
            listing = (await c.get("/read?list")).text
            csrf = re.search(r'name="csrf-token" content="([^"]+)"', listing).group(1)
            slots = [x["slot"] for item in re.findall(r'href="/item/([^"]+)"', listing)
                     for x in (await c.get(f"/api/items/{item}")).json()["candidates"]]
            signed_in.append(name)
            await ready.wait()  # everyone signed in: now all save at once
            for k in range(per_reader):
                slot = slots[k % len(slots)]  # 12 candidates, 8 saves: no slot twice, all readers at once
                body = {c_: (n + k + i) % 5 + 1 for i, c_ in enumerate(NAMES)} | {"comment": f"{name} {k}",
                                                                                 "seconds": 1.5 + k}
                r = await c.put(f"/api/ratings/{slot}", json=body, headers={"X-CSRF-Token": csrf})
                if r.status_code == 200:
                    sent[slot] = body
                else:
                    errors.append(f"{name}: {r.status_code} {r.text[:200]}")

    async def main():
        tasks = [asyncio.create_task(reader(name, n)) for n, name in enumerate(readers)]
        while len(signed_in) < len(readers) and not any(t.done() for t in tasks):
            await asyncio.sleep(0.05)
        ready.set()
        await asyncio.gather(*tasks)

    signed_in: list[str] = []
    ready = asyncio.Event()
    try:
        asyncio.run(main())
    finally:
        server.kill()
        server.wait(10)
    assert errors == []
    assert len(sent) == 20 * per_reader
    engine, Session = open_db(db)
    with Session() as s:
        stored = {tok: r for tok, r in s.execute(select(Slot.token, Rating).join(Rating, Rating.slot_id == Slot.id))}
        n_rows = s.scalar(select(func.count(Rating.id)))
    engine.dispose()
    assert n_rows == len(sent)  # none lost, none duplicated
    for slot, body in sent.items():
        got = stored[slot]
        assert {k: getattr(got, k) for k in NAMES} == {k: body[k] for k in NAMES}
        assert got.comment == body["comment"] and got.seconds == body["seconds"]
        assert got.updated_at.tzinfo is not None and got.updated_at.utcoffset().total_seconds() == 0


def test_slow_clients_are_disconnected(tmp_path):
    # uvicorn alone held connections that trickle header bytes (or send nothing) for ever: 32 for 70 s.
    db = str(tmp_path / "study.db")
    make_study(db, tmp_path / "files", readers=[], password=PW, n_cases=2)
    port = free_port()
    server = start_server(db, port, "--request-timeout", "2")
    sel = selectors.DefaultSelector()
    opened = {}
    try:
        def connect(kind: str, first: bytes) -> socket.socket:
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(first)
            sel.register(s, selectors.EVENT_READ, kind)
            opened[s] = time.monotonic()
            return s

        slow = [connect("slow head", b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n") for _ in range(32)]
        for _ in range(4):
            connect("silent", b"")
        connect("slow body", b"PUT /api/ratings/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                             b"\r\nContent-Length: 100\r\n\r\n{")
        idle = connect("idle after a response", b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        closed: dict[str, list[float]] = {}
        got_response = b""
        t0, last_trickle = time.monotonic(), 0.0
        while len(closed.get("slow head", [])) < 32 or sum(map(len, closed.values())) < len(opened):
            now = time.monotonic()
            assert now - t0 < 15, f"still open after 15 s: {closed}"
            if now - last_trickle > 0.5:  # one more header line every half second, never the end
                for s in slow:
                    if s in opened and s.fileno() != -1:
                        try:
                            s.sendall(b"X-Slow: 1\r\n")
                        except OSError:
                            pass
                last_trickle = now
                # meanwhile the server answers everyone else at once
                r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                assert r.status_code == 200
            for key, _ in sel.select(timeout=0.1):
                s = key.fileobj
                try:
                    data = s.recv(4096)
                except ConnectionResetError:
                    data = b""
                if data:
                    got_response += data
                    continue
                closed.setdefault(key.data, []).append(time.monotonic() - opened[s])
                sel.unregister(s)
                s.close()
        assert b"200 OK" in got_response  # the idle connection had its answer first
        for kind in ("slow head", "silent", "slow body"):
            assert all(1.5 < t < 5 for t in closed[kind]), (kind, closed[kind])
        assert 4 < closed["idle after a response"][0] < 8  # uvicorn's keep-alive timeout, 5 s
        assert idle.fileno() == -1
    finally:
        for s in list(opened):
            s.close()
        server.kill()
        server.wait(10)


def test_nothing_a_client_sends_reaches_the_server_log(tmp_path, new_db):
    db = new_db()
    make_study(db, tmp_path / "files", readers=["alice"], password=PW, n_cases=2)
    port = free_port()
    server = start_server(db, port)
    mark = "SECRET-PATIENT-TEXT"
    try:
        c, csrf = sign_in(f"http://127.0.0.1:{port}", "alice")
        item = re.findall(r'href="/item/([^"]+)"', c.get("/read?list").text)[0]
        slot = c.get(f"/api/items/{item}").json()["candidates"][0]["slot"]
        hdr = {"X-CSRF-Token": csrf, "Content-Type": "application/json"}
        bodies = [f'{{"comment": "\\ud800 {mark}"}}', f'{{"coherence": "{mark}"}}', f'{{"{mark}": 1}}',
                  f'{{"comment": "{mark}', f'{{"coherence": true, "comment": "{mark}"}}',
                  f'{{"comment": "\\u0000 {mark}"}}', f'{{"seconds": "{mark}"}}']
        codes = [c.put(f"/api/ratings/{slot}", content=b.encode(), headers=hdr) for b in bodies]
        assert [r.status_code for r in codes] == [400, 422, 422, 422, 422, 422, 422]
        # a NUL in a URL token or a user name (PostgreSQL text cannot hold one: these were 500s there)
        codes += [c.get(f"/item/{mark}%00"), c.put(f"/api/ratings/{mark}%00", json={}, headers=hdr)]
        assert [r.status_code for r in codes[-2:]] == [404, 404]
        assert not any(mark in r.text for r in codes)
        bad_login = c.post("/login", data={"username": mark, "password": mark, "csrf": mark})
        assert bad_login.status_code == 403 and mark not in bad_login.text
        c.cookies.set("radgpt_login_csrf", "t")
        nul_login = c.post("/login", data={"username": f"{mark}\x00", "password": mark, "csrf": "t"},
                           follow_redirects=False)
        assert nul_login.status_code == 303 and "failed=1" in nul_login.headers["location"]
    finally:
        server.terminate()
        server.wait(10)
    log = server.stderr.read().decode("utf-8", "replace")
    assert mark not in log
