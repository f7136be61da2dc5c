"""Rating saves while many people sign in at once, against the real reader-study server.

    .venv/bin/python bench/bench_study_login.py                  # 4 raters, then + 32 concurrent sign-ins
    .venv/bin/python bench/bench_study_login.py --logins 64 --seconds 20

argon2 is slow and memory-hungry on purpose (~64 MiB and tens of ms per hash). Issue #16 measured rating
saves going from p50 11 ms to 1.4 s, and the server to ~1 GB, under 32 concurrent sign-ins, because every
hash ran in the thread pool the saves need. This creates a synthetic study, starts `radgpt study serve` on
loopback, has a few raters save ratings back to back (short think time) first alone, then while N clients
sign in with the right password in a loop, and prints save latency, sign-ins done and the server's peak
memory for both phases. Exits 1 if the save p95 under sign-ins is over --p95-ms.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from radgpt.study.criteria import NAMES
from radgpt.study.synthetic import free_port, make_study, start_server

PASSWORD = "bench-password-123"


async def sign_in(c: httpx.AsyncClient, name: str) -> None:
    token = re.search(r'name="csrf" value="([^"]+)"', (await c.get("/login")).text).group(1)
    r = await c.post("/login", data={"username": name, "password": PASSWORD, "csrf": token, "next": "/"})
    if r.status_code != 303 or r.headers["location"] != "/":
        raise SystemExit(f"sign-in of {name} failed: {r.status_code} {r.headers.get('location')}")


async def rater_setup(c: httpx.AsyncClient, name: str) -> tuple[str, list[str]]:
    await sign_in(c, name)
    listing = (await c.get("/read?list")).text
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', listing).group(1)
    slots = []
    for item in re.findall(r'href="/item/([^"]+)"', listing):
        slots += [x["slot"] for x in (await c.get(f"/api/items/{item}")).json()["candidates"]]
    return csrf, slots


async def rater(c: httpx.AsyncClient, csrf: str, slots: list[str], stop: float, think: float,
                latencies: list[float]) -> None:
    rng = np.random.default_rng(len(slots[0]))
    n = 0
    while time.perf_counter() < stop:
        body = {k: int(v) for k, v in zip(NAMES, rng.integers(1, 6, len(NAMES)))}
        t0 = time.perf_counter()
        r = await c.put(f"/api/ratings/{slots[n % len(slots)]}", json=body, headers={"X-CSRF-Token": csrf})
        latencies.append(time.perf_counter() - t0)
        if r.status_code != 200:
            raise SystemExit(f"save failed: {r.status_code} {r.text[:200]}")
        n += 1
        await asyncio.sleep(think)


async def signer(base: str, name: str, stop: float, times: list[float]) -> None:
    while time.perf_counter() < stop:
        async with httpx.AsyncClient(base_url=base, timeout=120) as c:
            t0 = time.perf_counter()
            await sign_in(c, name)
            times.append(time.perf_counter() - t0)


async def watch_memory(pid: int, stop: float, peak: list[int]) -> None:
    proc = psutil.Process(pid)
    while time.perf_counter() < stop:
        peak[0] = max(peak[0], proc.memory_info().rss)
        await asyncio.sleep(0.05)


async def phase(base: str, raters: list[str], signers: list[str], seconds: float, think: float, pid: int) -> dict:
    clients = [httpx.AsyncClient(base_url=base, timeout=120) for _ in raters]
    try:
        setups = await asyncio.gather(*(rater_setup(c, name) for c, name in zip(clients, raters)))
        latencies: list[float] = []
        sign_ins: list[float] = []
        peak = [0]
        stop = time.perf_counter() + seconds
        await asyncio.gather(*(rater(c, csrf, slots, stop, think, latencies)
                               for c, (csrf, slots) in zip(clients, setups)),
                             *(signer(base, name, stop, sign_ins) for name in signers),
                             watch_memory(pid, stop, peak))
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    ms = np.array(latencies or [np.nan]) * 1000  # a save still in flight at the end is not counted
    return {"saves": len(latencies), "p50": np.percentile(ms, 50), "p95": np.percentile(ms, 95),
            "p99": np.percentile(ms, 99), "max": ms.max(), "sign_ins": len(sign_ins),
            "sign_in_p50": float(np.median(sign_ins)) if sign_ins else float("nan"), "rss": peak[0] / 2**20}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raters", type=int, default=4)
    ap.add_argument("--logins", type=int, default=32, help="clients signing in concurrently, in a loop")
    ap.add_argument("--seconds", type=float, default=15.0, help="length of each phase")
    ap.add_argument("--think", type=float, default=0.05, help="seconds between a rater's saves")
    ap.add_argument("--p95-ms", type=float, default=200.0)
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    raters = [f"rater{i:02d}" for i in range(args.raters)]
    signers = [f"signer{i:02d}" for i in range(args.logins)]
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "bench.db")
        make_study(db, Path(tmp) / "files", readers=raters + signers, password=PASSWORD, n_cases=10)
        port = free_port()
        server = start_server(db, port)
        base = f"http://127.0.0.1:{port}"
        try:
            alone = asyncio.run(phase(base, raters, [], args.seconds, args.think, server.pid))
            busy = asyncio.run(phase(base, raters, signers, args.seconds, args.think, server.pid))
        finally:
            server.terminate()
            server.wait(10)
    print(f"reader-study saves under sign-ins: {args.raters} raters (think {args.think}s), {args.seconds:.0f} s "
          f"per phase, {os.cpu_count()} CPUs, load avg before {load_before:.2f}, after {os.getloadavg()[0]:.2f} "
          f"(other processes on the machine count too)")
    print("| concurrent sign-ins | saves | p50 ms | p95 ms | p99 ms | max ms | sign-ins done | sign-in p50 s "
          "| server peak RSS MiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, r in ((0, alone), (args.logins, busy)):
        print(f"| {n} | {r['saves']} | {r['p50']:.1f} | {r['p95']:.1f} | {r['p99']:.1f} | {r['max']:.1f} "
              f"| {r['sign_ins']} | {r['sign_in_p50']:.2f} | {r['rss']:.0f} |")
    ok = busy["p95"] < args.p95_ms
    print("PASS" if ok else f"FAIL (need save p95 < {args.p95_ms:.0f} ms under {args.logins} sign-ins)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
