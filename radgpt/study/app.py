"""The reader-study web app: server-rendered pages, one small script, a JSON endpoint to save ratings.

Who sees what is decided here, server-side, on every request:
  reader  their own worklist and ratings only (another reader's item is 403); no model name or code ever
  admin   study set-up, readers, progress, the unblinding key, every rating, the CSV export
Every POST/PUT needs the session's CSRF token (form field `csrf` or header `X-CSRF-Token`); the login
form, which has no session yet, uses a double-submit cookie. Each rating save is its own transaction.
Requests a browser sends from another origin are refused (`SameOrigin`), and JSON endpoints take only
`Content-Type: application/json`, which no page can send cross-origin without a (refused) preflight.
Error replies name the field and the reason, never the input.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import and_, bindparam, case, func, select
from sqlalchemy.dialects import postgresql, sqlite
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from radgpt.common.errors import FatalError
from radgpt.common.net import NO_FASTAPI_TELEMETRY, SameOrigin, SecurityHeaders, declares_json
from radgpt.study import auth, throttle
from radgpt.study.create import Fields, assign_all_readers, create_study
from radgpt.study.criteria import CRITERIA, NAMES, PREFERENCES, SCALE
from radgpt.study.db import (
    Assignment,
    Candidate,
    Case,
    Rating,
    Slot,
    Study,
    System,
    User,
    open_db,
    utcnow,
)
from radgpt.study.tables import rating_rows, to_csv

HERE = Path(__file__).parent
COOKIE = "radgpt_study"
LOGIN_CSRF_COOKIE = "radgpt_login_csrf"
# argon2 costs ~64 MiB and tens of ms of CPU (on 4 threads) per hash: one at a time, in a pool of its own,
# so a burst of sign-ins queues there instead of filling the thread pool that rating saves run in.
HASH_WORKERS = 1


def _yield_cpu() -> None:
    """Hashing thread initializer: nice +10, inherited by the argon2 lane threads it starts, so that on a busy
    machine a sign-in waits rather than a rating save. Linux only: elsewhere nice is per process."""
    if sys.platform.startswith("linux"):
        tid = threading.get_native_id()
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + 10))


class LoginRequired(Exception):
    pass


class RatingIn(BaseModel):
    """The full state of one candidate's rating (autosave sends it whole, so a resend is idempotent).
    Strict: a score is a JSON integer; true, "4" and 4.0 are refused, not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True)
    understandability: int | None = Field(None, ge=1, le=5)
    coherence: int | None = Field(None, ge=1, le=5)
    relevance: int | None = Field(None, ge=1, le=5)
    conciseness: int | None = Field(None, ge=1, le=5)
    clinical_utility: int | None = Field(None, ge=1, le=5)
    comment: str = Field("", max_length=5000)
    preference: str | None = None
    # seconds on the case's page from the case being shown to this save (the page measures it, visible time)
    seconds: float | None = Field(None, ge=0, le=86400)

    @field_validator("comment")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        if "\x00" in value:  # PostgreSQL text cannot hold it; refused on SQLite too, alike
            raise ValueError("holds a NUL character (\\u0000), which cannot be stored")
        return value


# JSON can escape a lone surrogate ("\ud800") that is no Unicode text and that no database stores as UTF-8;
# pydantic refuses it in a length-checked string (the comment) as "string_unicode". A malformed request: 400.
BAD_TEXT = "string_unicode"


def validation_errors(exc: RequestValidationError) -> list[dict]:
    """[{field, reason}] from a validation error, without the input: pydantic's messages state the rule
    ("Input should be a valid integer"); an unknown field's name is the client's text and is not repeated."""
    out = []
    for e in exc.errors():
        loc = [str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path", "header", "cookie")]
        if e.get("type") == "extra_forbidden":
            out.append({"field": None, "reason": f"unknown field (allowed: {', '.join(RatingIn.model_fields)})"})
        elif e.get("type") == "json_invalid":
            out.append({"field": None, "reason": f"the body is not valid JSON ({e.get('ctx', {}).get('error')})"})
        elif e.get("type") == BAD_TEXT:
            out.append({"field": ".".join(loc) or None,
                        "reason": "not valid Unicode text (it holds a lone surrogate escape such as \\ud800)"})
        else:
            out.append({"field": ".".join(loc) or None, "reason": e.get("msg", "invalid")})
    return out


class JsonOnly:
    """Pure ASGI middleware: a body sent to /api/ must be declared application/json (else 415). A page on
    another site can send text/plain or a form without asking the browser's permission; application/json
    needs a CORS preflight, which `SameOrigin` refuses."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if (scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH")
                and scope["path"].startswith("/api/")):
            if not declares_json(dict(scope.get("headers", [])).get(b"content-type", b"").decode("latin-1")):
                resp = JSONResponse({"error": {"code": 415, "message": "send the body as JSON with the header "
                                               "Content-Type: application/json"}}, status_code=415)
                return await resp(scope, receive, send)
        await self.app(scope, receive, send)


TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")  # secrets.token_urlsafe: what item and slot URLs carry


def _safe_next(url: str | None) -> str:
    # Only same-site paths: an open redirect after login would be a phishing aid.
    if url and url.startswith("/") and not url.startswith("//") and "\\" not in url:
        return url
    return "/"


def create_app(db: str, session_hours: float = 12.0, allowed_hosts: list[str] | None = None,
               secure_cookies: bool = False, sqlite_sync: str = "full") -> FastAPI:
    engine, Session = open_db(db, create=True, sqlite_sync=sqlite_sync)
    # FastAPI's built-in OpenTelemetry would record request data (validation errors included) if a
    # global provider or OTEL_* environment exporters were set: report text never leaves this process.
    app = FastAPI(title="radgpt reader study", docs_url=None, redoc_url=None, openapi_url=None,
                  telemetry=NO_FASTAPI_TELEMETRY)
    app.state.engine, app.state.Session = engine, Session
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    if allowed_hosts:
        # Bound to loopback, only loopback names are valid Host headers: stops DNS-rebinding pages.
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    upsert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    # SQLite has one writer at a time and its busy handler waits by sleeping (1, 2, 5 … 100 ms), which
    # gives a long latency tail under load; queueing this process's writers on a lock keeps them in order.
    write_lock = threading.Lock() if engine.dialect.name == "sqlite" else contextlib.nullcontext()
    rating_cols = [*NAMES, "comment", "preference", "seconds", "reader_id", "updated_at"]
    insert = upsert(Rating).values({c: bindparam(c) for c in ["slot_id", *rating_cols]})
    save_stmt = insert.on_conflict_do_update(index_elements=[Rating.slot_id],
                                             set_={c: insert.excluded[c] for c in rating_cols})

    app.add_middleware(JsonOnly)
    app.add_middleware(SameOrigin)
    app.add_middleware(SecurityHeaders)  # outermost: refusals get the headers too
    hashing = ThreadPoolExecutor(max_workers=HASH_WORKERS, thread_name_prefix="study-argon2",
                                 initializer=_yield_cpu)

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, _exc: LoginRequired):
        path = request.url.path
        if path.startswith("/api/"):
            # The page script keeps the draft in localStorage and sends the reader to this URL.
            page = request.headers.get("X-Page", "/")
            return JSONResponse({"error": {"code": "login_required", "login": f"/login?next={quote(_safe_next(page))}"}},
                                status_code=401)
        return RedirectResponse(f"/login?next={quote(path)}", status_code=303)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        # FastAPI's default reply echoes the input ("input": ...); this one names the field and the rule.
        errors = validation_errors(exc)
        status = 400 if any(e.get("type") == BAD_TEXT for e in exc.errors()) else 422
        message = "; ".join(f"{e['field']}: {e['reason']}" if e["field"] else e["reason"] for e in errors)
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": {"code": status, "message": message, "fields": errors}},
                                status_code=status)
        return templates.TemplateResponse(request, "message.html", {"title": f"Error {status}",
                                          "message": message, "user": None}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": {"code": exc.status_code, "message": exc.detail}},
                                status_code=exc.status_code)
        return templates.TemplateResponse(request, "message.html", {"title": f"Error {exc.status_code}",
                                          "message": exc.detail, "user": None}, status_code=exc.status_code)

    flags: dict[str, bool] = {}

    # --- helpers -------------------------------------------------------------------------------------
    def current(request: Request, s) -> tuple[User, object]:
        found = auth.session_user(s, request.cookies.get(COOKIE))
        if found is None:
            raise LoginRequired()
        return found

    def check_csrf(sess, given: str | None) -> None:
        if not given or not secrets.compare_digest(given, sess.csrf):
            raise HTTPException(403, "missing or wrong CSRF token; reload the page")

    def admin(request: Request, s):
        user, sess = current(request, s)
        if user.role != "admin":
            raise HTTPException(403, "admins only")
        return user, sess

    def page(request: Request, name: str, ctx: dict, status: int = 200) -> HTMLResponse:
        return templates.TemplateResponse(request, name, ctx, status_code=status)

    def complete_assignments(s, reader_id: int, pairwise: bool, only: int | None = None) -> dict[int, bool]:
        """assignment id -> all its candidates fully rated (one aggregate query)."""
        cond = [getattr(Rating, c).is_not(None) for c in NAMES]
        if pairwise:
            cond.append(Rating.preference.is_not(None))
        q = (
            select(Slot.assignment_id, func.count(Slot.id), func.sum(case((and_(*cond), 1), else_=0)))
            .join(Assignment, Assignment.id == Slot.assignment_id)
            .outerjoin(Rating, Rating.slot_id == Slot.id)
            .where(Assignment.reader_id == reader_id)
            .group_by(Slot.assignment_id)
        )
        if only is not None:
            q = q.where(Slot.assignment_id == only)
        return {a_id: n == ok for a_id, n, ok in s.execute(q)}

    def progress(s, reader_id: int, pairwise: bool) -> dict:
        done = complete_assignments(s, reader_id, pairwise)
        return {"done": sum(done.values()), "total": len(done)}

    def is_pairwise(s) -> bool:
        # The study never changes once created; read it once instead of on every save.
        if "pairwise" not in flags:
            value = s.scalar(select(Study.pairwise))
            if value is None:
                return False
            flags["pairwise"] = bool(value)
        return flags["pairwise"]

    def owned_assignment(s, user: User, token: str) -> Assignment:
        if not TOKEN.fullmatch(token):  # never sent to the database (PostgreSQL refuses a NUL in it: a 500)
            raise HTTPException(404, "no such item")
        a = s.scalar(select(Assignment).where(Assignment.token == token))
        if a is None:
            raise HTTPException(404, "no such item")
        if a.reader_id != user.id:
            raise HTTPException(403, "this item belongs to another reader")
        return a

    def item_view(s, user: User, a: Assignment, study: Study) -> dict:
        """Everything a reader's page or API shows for one case — deliberately no ids, codes or names."""
        case = s.get(Case, a.case_id)
        rows = s.execute(
            select(Slot.token, Slot.position, Candidate.text, Rating)
            .join(Candidate, Candidate.id == Slot.candidate_id)
            .outerjoin(Rating, Rating.slot_id == Slot.id)
            .where(Slot.assignment_id == a.id)
            .order_by(Slot.position)
        ).all()
        total = s.scalar(select(func.count(Assignment.id)).where(Assignment.reader_id == user.id))
        neighbours = dict(s.execute(
            select(Assignment.position, Assignment.token).where(
                Assignment.reader_id == user.id, Assignment.position.in_([a.position - 1, a.position + 1]))
        ).all())
        candidates = []
        for token, pos, text, r in rows:
            rating = {c: (getattr(r, c) if r else None) for c in NAMES}
            rating.update({"comment": r.comment if r else "", "preference": r.preference if r else None,
                           "seconds": r.seconds if r else None})
            candidates.append({"slot": token, "label": f"Candidate {pos + 1}", "text": text, "rating": rating})
        done = complete_assignments(s, user.id, study.pairwise)
        view = {
            "item": a.token, "number": a.position + 1, "total": total, "findings": case.findings,
            "indication": case.indication,
            "candidates": candidates, "complete": done.get(a.id, False),
            "prev": neighbours.get(a.position - 1), "next": neighbours.get(a.position + 1),
            "progress": {"done": sum(done.values()), "total": len(done)},
        }
        if study.pairwise:  # shown labelled only in pairwise studies, where it is never a candidate
            view["reference"] = case.reference
        return view

    # --- public --------------------------------------------------------------------------------------
    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = "/", failed: int = 0):
        token = secrets.token_urlsafe(32)
        resp = page(request, "login.html", {"csrf": token, "next": _safe_next(next), "failed": failed,
                                            "user": None, "error": None})
        resp.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", secure=secure_cookies,
                        max_age=3600)
        return resp

    def throttled(username: str, address: str) -> None:
        with Session() as s:
            throttle.check(s, username, address, time.time())

    def sign_in(username: str, password: str, address: str) -> str | None:
        """In the hashing pool: check the throttle again (attempts queued behind failures must see them),
        verify, count, open the session. Returns the session token, None for a wrong password."""
        now = time.time()
        with Session() as s:
            throttle.check(s, username, address, now)
            user = auth.authenticate(s, username, password)
            with write_lock:
                throttle.record(s, username, address, user is not None, now)
                token = auth.start_session(s, user, session_hours)[0] if user else None
                s.commit()
        return token

    @app.post("/login")
    async def login(request: Request, username: str = Form(...), password: str = Form(...), csrf: str = Form(""),
                    next: str = Form("/")):
        cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        if not cookie or not secrets.compare_digest(cookie, csrf):
            raise HTTPException(403, "the login form expired; reload the page")
        address = request.client.host if request.client else ""
        if not auth.USERNAME.match(username):  # no account has such a name; never sent to the database
            return RedirectResponse(f"/login?failed=1&next={quote(_safe_next(next))}", status_code=303)
        try:
            await run_in_threadpool(throttled, username, address)  # refused before queueing for a hash
            token = await asyncio.get_running_loop().run_in_executor(hashing, sign_in, username, password,
                                                                     address)
        except throttle.Wait as e:
            resp = page(request, "login.html", {"csrf": cookie, "next": _safe_next(next), "failed": 0,
                                                "user": None, "error": str(e)}, status=429)
            resp.headers["Retry-After"] = str(e.retry_after)
            return resp
        if token is None:
            return RedirectResponse(f"/login?failed=1&next={quote(_safe_next(next))}", status_code=303)
        resp = RedirectResponse(_safe_next(next), status_code=303)
        resp.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=secure_cookies,
                        max_age=int(session_hours * 3600))
        resp.delete_cookie(LOGIN_CSRF_COOKIE)
        return resp

    @app.post("/logout")
    def logout(request: Request, csrf: str = Form("")):
        with Session() as s:
            _user, sess = current(request, s)
            check_csrf(sess, csrf)
            auth.end_session(s, request.cookies.get(COOKIE))
            s.commit()
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(COOKIE)
        return resp

    @app.get("/")
    def home(request: Request):
        with Session() as s:
            user, _ = current(request, s)
        return RedirectResponse("/admin" if user.role == "admin" else "/read", status_code=303)

    # --- reader --------------------------------------------------------------------------------------
    @app.get("/read", response_class=HTMLResponse)
    def read(request: Request):
        with Session() as s:
            user, sess = current(request, s)
            study = s.scalar(select(Study))
            if study is None:
                return page(request, "message.html", {"title": "No study yet", "user": user, "csrf": sess.csrf,
                            "message": "The administrator has not created the study yet."})
            done = complete_assignments(s, user.id, study.pairwise)
            items = s.execute(select(Assignment.id, Assignment.token, Assignment.position)
                              .where(Assignment.reader_id == user.id).order_by(Assignment.position)).all()
            todo = [tok for a_id, tok, _ in items if not done.get(a_id)]
            if todo and request.query_params.get("list") is None:
                return RedirectResponse(f"/item/{todo[0]}", status_code=303)  # resume where they left
            return page(request, "read.html", {"user": user, "csrf": sess.csrf,
                        "items": [(pos + 1, tok, done.get(a_id, False)) for a_id, tok, pos in items],
                        "done": sum(done.values()), "total": len(items)})

    @app.get("/item/{token}", response_class=HTMLResponse)
    def item_page(request: Request, token: str):
        with Session() as s:
            user, sess = current(request, s)
            a = owned_assignment(s, user, token)
            study = s.scalar(select(Study))
            view = item_view(s, user, a, study)
        return page(request, "item.html", {"user": user, "csrf": sess.csrf, "v": view, "criteria": CRITERIA,
                                           "scale": SCALE, "preferences": PREFERENCES})

    @app.get("/api/items/{token}")
    def item_api(request: Request, token: str):
        with Session() as s:
            user, _ = current(request, s)
            a = owned_assignment(s, user, token)
            return item_view(s, user, a, s.scalar(select(Study)))

    @app.put("/api/ratings/{slot_token}")
    def save_rating(request: Request, slot_token: str, body: RatingIn):
        # The hot path (every click autosaves): a plain Connection and a prebuilt statement, no ORM objects.
        with engine.connect() as conn:
            user, sess = current(request, conn)
            check_csrf(sess, request.headers.get("X-CSRF-Token"))
            if not TOKEN.fullmatch(slot_token):
                raise HTTPException(404, "no such candidate")
            row = conn.execute(
                select(Slot.id, Assignment.reader_id, Slot.assignment_id)
                .join(Assignment, Assignment.id == Slot.assignment_id)
                .where(Slot.token == slot_token)
            ).first()
            if row is None:
                raise HTTPException(404, "no such candidate")
            slot_id, reader_id, assignment_id = row
            if reader_id != user.id:
                raise HTTPException(403, "this item belongs to another reader")
            pairwise = is_pairwise(conn)
            if body.preference is not None and (not pairwise or body.preference not in PREFERENCES):
                raise HTTPException(422, f"preference must be one of {list(PREFERENCES)} in a pairwise study")
            values = body.model_dump()
            values.update(slot_id=slot_id, reader_id=user.id, updated_at=utcnow())
            # One statement, one transaction: the unique slot makes a resend an update, never a duplicate.
            with write_lock:
                conn.execute(save_stmt, values)
                conn.commit()
            # Only this case's completion (3-5 rows), not the whole worklist: the page keeps its own count.
            done = complete_assignments(conn, user.id, pairwise, only=assignment_id)
            return {"saved": True, "case_complete": done.get(assignment_id, False)}

    # --- admin ---------------------------------------------------------------------------------------
    @app.get("/admin", response_class=HTMLResponse)
    def admin_home(request: Request):
        with Session() as s:
            user, sess = admin(request, s)
            study = s.scalar(select(Study))
            if study is None:
                return RedirectResponse("/admin/create", status_code=303)
            readers = []
            for r in s.scalars(select(User).where(User.role == "reader").order_by(User.username)):
                p = progress(s, r.id, study.pairwise)
                last = s.scalar(select(func.max(Rating.updated_at)).where(Rating.reader_id == r.id))
                readers.append({"name": r.username, **p,
                                "last": last.astimezone().strftime("%Y-%m-%d %H:%M %Z") if last else "-"})
            counts = dict(s.execute(select(Case.stratum, func.count()).group_by(Case.stratum)).all())
            n_systems = s.scalar(select(func.count(System.id)))
            merged = s.execute(select(func.count(func.distinct(Candidate.case_id)), func.count(Candidate.id))
                               .where(Candidate.same_as_id.is_not(None))).one()
            with_indication = s.scalar(select(func.count(Case.id)).where(Case.indication != ""))
        return page(request, "admin.html", {"user": user, "csrf": sess.csrf, "study": study, "readers": readers,
                                            "counts": counts, "n_systems": n_systems,
                                            "merged": {"cases": merged[0], "candidates": merged[1]},
                                            "with_indication": with_indication})

    @app.get("/admin/create", response_class=HTMLResponse)
    def create_form(request: Request):
        with Session() as s:
            user, sess = admin(request, s)
            if s.scalar(select(Study.id)) is not None:
                return RedirectResponse("/admin", status_code=303)
        return page(request, "create.html", {"user": user, "csrf": sess.csrf, "error": None})

    @app.post("/admin/create", response_class=HTMLResponse)
    def create(request: Request, csrf: str = Form(""), name: str = Form("Reader study"),
               references: UploadFile = File(...), predictions: list[UploadFile] = File(...),
               model_names: str = Form(""), n_cases: str = Form(""), selection: str = Form("random"),
               seed: str = Form(""), include_reference: bool = Form(False), pairwise: bool = Form(False),
               intersect: bool = Form(False)):
        with Session() as s:
            user, sess = admin(request, s)
            check_csrf(sess, csrf)
        names = [n.strip() for n in model_names.split(",") if n.strip()]
        try:
            if names and len(names) != len(predictions):
                raise FatalError(f"{len(names)} model names for {len(predictions)} prediction files")
            preds = []
            for i, f in enumerate(predictions):
                fname = Path(f.filename or f"predictions{i + 1}.jsonl").name
                preds.append((names[i] if names else Path(fname).stem, fname, f.file.read().decode("utf-8")))
            ref = (Path(references.filename or "references.jsonl").name, references.file.read().decode("utf-8"))
            create_study(Session, ref, preds, fields=Fields(), n_cases=int(n_cases) if n_cases.strip() else None,
                         selection=selection, seed=seed.strip() or None, include_reference=include_reference,
                         pairwise=pairwise, intersect=intersect, name=name)
        except (FatalError, UnicodeDecodeError, ValueError) as e:
            return page(request, "create.html", {"user": user, "csrf": sess.csrf, "error": str(e)}, status=400)
        assign_all_readers(Session)
        return RedirectResponse("/admin", status_code=303)

    def add_reader(request: Request, csrf: str, username: str):
        with Session() as s:
            user, sess = admin(request, s)
            check_csrf(sess, csrf)
            try:
                _reader, password = auth.add_user(s, username, None, "reader")
            except FatalError as e:
                raise HTTPException(400, str(e)) from None
            s.commit()
        return user, sess, password

    @app.post("/admin/readers", response_class=HTMLResponse)
    async def invite(request: Request, csrf: str = Form(""), username: str = Form(...)):
        user, sess, password = await asyncio.get_running_loop().run_in_executor(
            hashing, add_reader, request, csrf, username.strip())
        # Shown once to the admin, to hand to the reader in person; never stored in clear or logged.
        return page(request, "invited.html", {"user": user, "csrf": sess.csrf, "username": username.strip(),
                                              "password": password})

    @app.get("/admin/key", response_class=HTMLResponse)
    def key(request: Request):
        with Session() as s:
            user, sess = admin(request, s)
            systems = s.scalars(select(System).order_by(System.code)).all()
            study = s.scalar(select(Study))
        return page(request, "key.html", {"user": user, "csrf": sess.csrf, "systems": systems, "study": study})

    @app.get("/admin/export/ratings.csv")
    def export(request: Request, blinded: bool = False):
        with Session() as s:
            admin(request, s)
            text = to_csv(rating_rows(s, blinded=blinded))
        return PlainTextResponse(text, media_type="text/csv",
                                 headers={"Content-Disposition": 'attachment; filename="ratings.csv"'})

    @app.get("/favicon.ico")
    def favicon():
        return Response(status_code=204)

    return app
