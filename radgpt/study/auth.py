"""Accounts and sessions: argon2 password hashes, server-side sessions with a per-session CSRF token."""

from __future__ import annotations

import hashlib
import re
import secrets
import time

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from radgpt.common.errors import FatalError
from radgpt.study import throttle
from radgpt.study.create import assign_reader
from radgpt.study.db import AuthSession, User

_hasher = PasswordHasher()  # argon2id, the library's current defaults
# Verifying against this when the user does not exist keeps login time the same for unknown names.
_DUMMY_HASH = _hasher.hash("not-a-real-password")
USERNAME = re.compile(r"^[A-Za-z0-9_.-]{1,80}$")
MIN_PASSWORD = 10


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def add_user(s: Session, username: str, password: str | None, role: str = "reader") -> tuple[User, str]:
    """Create a user; a missing password is generated. Returns (user, password) — show it once, never log it."""
    if not USERNAME.match(username):
        raise FatalError(f"user name '{username}': use 1-80 letters, digits, '.', '_' or '-'")
    if role not in ("reader", "admin"):
        raise FatalError(f"role must be reader or admin, not '{role}'")
    if s.scalar(select(User.id).where(User.username == username)) is not None:
        raise FatalError(f"user '{username}' already exists")
    password = _new_password(username, password)
    user = User(username=username, password_hash=_hasher.hash(password), role=role)
    s.add(user)
    s.flush()
    if role == "reader":
        assign_reader(s, user)
    return user, password


def _new_password(username: str, password: str | None) -> str:
    if password is None:
        return secrets.token_urlsafe(12)
    if len(password) < MIN_PASSWORD:
        raise FatalError(f"password for '{username}' is shorter than {MIN_PASSWORD} characters")
    return password


def reset_password(s: Session, username: str, password: str | None) -> str:
    """Set a new password (generated if None), end the user's sessions and lift a sign-in lock: whoever
    held the old password or a session is out. Returns the password — show it once, never log it."""
    user = s.scalar(select(User).where(User.username == username))
    if user is None:
        raise FatalError(f"no user '{username}'")
    password = _new_password(username, password)
    user.password_hash = _hasher.hash(password)
    s.execute(delete(AuthSession).where(AuthSession.user_id == user.id))
    throttle.unlock(s, username)
    return password


def authenticate(s: Session, username: str, password: str) -> User | None:
    user = s.scalar(select(User).where(User.username == username))
    try:
        _hasher.verify(user.password_hash if user else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    return user


def start_session(s: Session, user: User, hours: float) -> tuple[str, str]:
    """Returns (cookie token, csrf token). Expired sessions are swept here, on the rare login write."""
    now = time.time()
    s.execute(delete(AuthSession).where(AuthSession.expires_at < now))
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    s.add(AuthSession(token_hash=token_hash(token), user_id=user.id, csrf=csrf, expires_at=now + hours * 3600))
    return token, csrf


def session_user(s: Session, token: str | None):
    """(user, session) for a live session token, else None. Both are the same plain row (id, username,
    role, csrf): this runs on every request, and loading ORM objects would double its cost."""
    if not token:
        return None
    row = s.execute(
        select(User.id, User.username, User.role, AuthSession.csrf)
        .join(AuthSession, AuthSession.user_id == User.id)
        .where(AuthSession.token_hash == token_hash(token), AuthSession.expires_at > time.time())
    ).first()
    return (row, row) if row else None


def end_session(s: Session, token: str | None) -> None:
    if token:
        s.execute(delete(AuthSession).where(AuthSession.token_hash == token_hash(token)))
