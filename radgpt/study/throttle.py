"""Sign-in throttling: exponential back-off per user name and per client address, and a lock on a user name
after `USER_LOCK` failures in a row, lifted only by `radgpt study unlock` (or `reset-password`).

Counters live in the database, so the CLI can unlock a user of a running server and a restart forgets
nothing. An attempt that must wait is refused before its password is hashed: a flood costs no argon2 time.
"""

from __future__ import annotations

import math

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from radgpt.study.db import LoginThrottle

USER_FREE, USER_LOCK = 3, 10  # failures before the back-off starts (1 s, 2 s, 4 s … 64 s); failures that lock
ADDR_FREE, ADDR_MAX_WAIT = 20, 60.0  # an address is often shared (loopback, a proxy): never locked, capped
ADDR_FORGET = 15 * 60.0  # an address's failures older than this no longer count
LOCKED_RETRY_AFTER = 3600  # Retry-After for a locked user name: only an admin can lift the lock


class Wait(Exception):
    """This sign-in attempt is refused (429) without checking the password."""

    def __init__(self, message: str, seconds: float):
        super().__init__(message)
        self.retry_after = max(1, math.ceil(seconds))


def _keys(username: str, address: str) -> tuple[str, str]:
    return f"user:{username}"[:120], f"addr:{address}"[:120]


def _wait(failures: int, free: int, cap: float) -> float:
    return 0.0 if failures < free else min(cap, 2.0 ** (failures - free))


def check(s: Session, username: str, address: str, now: float) -> None:
    """Raise `Wait` when this user name or address must not try yet."""
    user_key, addr_key = _keys(username, address)
    rows = {r.key: r for r in s.scalars(select(LoginThrottle).where(LoginThrottle.key.in_([user_key, addr_key])))}
    user, addr = rows.get(user_key), rows.get(addr_key)
    if user is not None:
        if user.failures >= USER_LOCK:
            raise Wait(f"This account is locked after {USER_LOCK} failed sign-ins. Ask the study administrator "
                       f"to unlock it (radgpt study unlock).", LOCKED_RETRY_AFTER)
        left = user.last_failure + _wait(user.failures, USER_FREE, math.inf) - now
        if left > 0:
            raise Wait(f"Too many failed sign-ins for this user name: wait {math.ceil(left)} s and try again.",
                       left)
    if addr is not None and now - addr.last_failure < ADDR_FORGET:
        left = addr.last_failure + _wait(addr.failures, ADDR_FREE, ADDR_MAX_WAIT) - now
        if left > 0:
            raise Wait(f"Too many failed sign-ins from this address: wait {math.ceil(left)} s and try again.",
                       left)


def record(s: Session, username: str, address: str, ok: bool, now: float) -> None:
    """Count a checked attempt. Success clears the user name's count; the address's only fades with time
    (else one valid account would let its owner reset the count between guesses at others)."""
    user_key, addr_key = _keys(username, address)
    if ok:
        s.execute(delete(LoginThrottle).where(LoginThrottle.key == user_key))
        return
    # Sweep here, on the rare failure write: faded address counts and unlocked user counts idle a day.
    s.execute(delete(LoginThrottle).where(or_(
        LoginThrottle.key.startswith("addr:") & (LoginThrottle.last_failure < now - ADDR_FORGET),
        (LoginThrottle.failures < USER_LOCK) & (LoginThrottle.last_failure < now - 86400))))
    for key in (user_key, addr_key):
        row = s.get(LoginThrottle, key)
        if row is None:
            s.add(LoginThrottle(key=key, failures=1, last_failure=now))
        else:
            row.failures, row.last_failure = row.failures + 1, now


def unlock(s: Session, username: str) -> bool:
    """Clear a user name's failures (and lock). True if there were any."""
    return s.execute(delete(LoginThrottle).where(LoginThrottle.key == _keys(username, "")[0])).rowcount > 0
