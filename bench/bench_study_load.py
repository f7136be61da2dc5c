"""Load test of the reader-study server: N simulated readers rating concurrently against the real server.

    .venv/bin/python bench/bench_study_load.py                    # 20 readers x 50 ratings, no think time
    .venv/bin/python bench/bench_study_load.py --readers 5 --ratings 10

A synthetic study (invented text) is created in a temp folder, `radgpt study serve` starts as a subprocess
on loopback, each reader signs in through the login form and then saves ratings back to back with no think
time (a real reader takes seconds per rating, so this is far harsher than a study). Then the database is
checked: every acknowledged rating present with the values last sent, none duplicated. Prints a table;
exits 1 if any rating was lost or duplicated or p95 save latency is over --p95-ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
from sqlalchemy import func, select

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from radgpt.study.criteria import NAMES
from radgpt.study.db import Rating, Slot, open_db
from radgpt.study.synthetic import free_port, make_study, start_server

PASSWORD = "bench-password-123"


async def sign_in(c: httpx.AsyncClient, name: str, n: int) -> tuple[str, list[str]]:
    page = await c.get("/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    await c.post("/login", data={"username": name, "password": PASSWORD, "csrf": token, "next": "/"})
    listing = (await c.get("/read?list")).text
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', listing).group(1)
    slots = []
    for item in re.findall(r'href="/item/([^"]+)"', listing):
        slots += [x["slot"] for x in (await c.get(f"/api/items/{item}")).json()["candidates"]]
    if len(slots) < n:
        raise SystemExit(f"{name} has only {len(slots)} candidates; raise --cases")
    return csrf, slots[:n]


async def rate(c, name, csrf, slots, think, latencies, sent, errors):
    rng = np.random.default_rng(int(name[-2:]))
    for slot in slots:
        body = {c: int(v) for c, v in zip(NAMES, rng.integers(1, 6, len(NAMES)))} | {"comment": f"{name} ok"}
        t0 = time.perf_counter()
        r = await c.put(f"/api/ratings/{slot}", json=body, headers={"X-CSRF-Token": csrf})
        latencies.append(time.perf_counter() - t0)
        if r.status_code == 200:
            sent[slot] = body
        else:
            errors.append(r.status_code)
        if think:
            await asyncio.sleep(think)


async def run_all(base, names, n, think, server_pid, latencies, sent, errors) -> tuple[float, float]:
    """Sign everyone in first (argon2 is slow on purpose), then all readers save at once.
    Returns (wall seconds, server CPU seconds) of the rating phase only."""
    clients = [httpx.AsyncClient(base_url=base, timeout=30) for _ in names]
    try:
        setups = await asyncio.gather(*(sign_in(c, name, n) for c, name in zip(clients, names)))
        server = psutil.Process(server_pid)
        cpu0, t0 = sum(server.cpu_times()[:2]), time.perf_counter()
        await asyncio.gather(*(rate(c, name, csrf, slots, think, latencies, sent, errors)
                               for c, name, (csrf, slots) in zip(clients, names, setups)))
        return time.perf_counter() - t0, sum(server.cpu_times()[:2]) - cpu0
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readers", type=int, default=20)
    ap.add_argument("--ratings", type=int, default=50, help="ratings per reader")
    ap.add_argument("--models", type=int, default=3)
    ap.add_argument("--think", type=float, default=0.0, help="seconds between a reader's saves")
    ap.add_argument("--p95-ms", type=float, default=200.0)
    ap.add_argument("--sqlite-sync", choices=["full", "normal"], default="full", help="the server's setting")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    models = tuple(f"model{i}" for i in range(args.models))
    cases = -(-args.ratings // args.models)
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "bench.db")
        names = [f"reader{i:02d}" for i in range(args.readers)]
        make_study(db, Path(tmp) / "files", readers=names, password=PASSWORD, n_cases=cases, models=models)
        port = free_port()
        server = start_server(db, port, "--sqlite-sync", args.sqlite_sync)
        latencies, sent, errors = [], {}, []
        try:
            wall, server_cpu = asyncio.run(run_all(f"http://127.0.0.1:{port}", names, args.ratings, args.think,
                                                   server.pid, latencies, sent, errors))
        finally:
            server.terminate()
            server.wait(10)
        _, Session = open_db(db)
        with Session() as s:
            rows = s.scalar(select(func.count(Rating.id)))
            distinct = s.scalar(select(func.count(func.distinct(Rating.slot_id))))
            stored = {tok: r for tok, r in s.execute(select(Slot.token, Rating).join(Rating, Rating.slot_id == Slot.id))}
    lost = sum(1 for slot, body in sent.items()
               if slot not in stored or any(getattr(stored[slot], c) != body[c] for c in NAMES))
    dup = rows - distinct
    ms = np.array(latencies) * 1000
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    ok = lost == 0 and dup == 0 and not errors and p95 < args.p95_ms
    print(f"reader-study load: {args.readers} readers x {args.ratings} ratings, think {args.think}s, "
          f"sqlite synchronous={args.sqlite_sync}, "
          f"{os.cpu_count()} CPUs, load avg before {load_before:.2f}, after {os.getloadavg()[0]:.2f} "
          f"(other processes on the machine count too)")
    print("| readers | ratings sent | acked | errors | in db | lost | duplicated | p50 ms | p95 ms | p99 ms | max ms "
          "| saves/s | server CPU ms/save |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.readers} | {len(latencies)} | {len(sent)} | {len(errors)} | {rows} | {lost} | {dup} | {p50:.1f} | "
          f"{p95:.1f} | {p99:.1f} | {ms.max():.1f} | {len(latencies) / wall:.0f} | "
          f"{server_cpu * 1000 / len(latencies):.2f} |")
    print("PASS" if ok else f"FAIL (need zero lost/duplicated/errors and p95 < {args.p95_ms:.0f} ms)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
