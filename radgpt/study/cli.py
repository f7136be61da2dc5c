"""`radgpt study create|add-user|reset-password|unlock|serve|analyze` — the reader study, from prediction
files to a report.

  radgpt study create --db study.db --references refs.jsonl --predictions lora=a.jsonl tfidf=b.jsonl \
      --n-cases 50 --select stratified
  radgpt study add-reader alice --db study.db          # prints a generated password, once
  radgpt study reset-password alice --db study.db      # a new one (ends her sessions, lifts a lock)
  radgpt study unlock alice --db study.db               # after too many failed sign-ins
  radgpt study serve --db study.db                      # http://127.0.0.1:8765
  radgpt study analyze --db study.db --out report/      # report.html, CSVs, scores.png; prints the seed
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from radgpt.common.errors import FatalError
from radgpt.common.net import is_loopback

ADMIN_PASSWORD_ENV = "RADGPT_STUDY_ADMIN_PASSWORD"
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]
KEEP_ALIVE = 5  # seconds an idle connection is kept after a response (uvicorn's default, stated on purpose)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="study_cmd", metavar="COMMAND", required=True)

    p = sub.add_parser("create", help="create a study from references and prediction files")
    p.add_argument("--db", required=True, help="SQLite file path, or an SQLAlchemy URL (postgresql+psycopg://...)")
    p.add_argument("--references", required=True, type=Path,
                   help='JSONL with {"id","findings","impression"} or clin-summ {"idx","inputs","target"}')
    p.add_argument("--predictions", "--pred", required=True, nargs="+", action="extend", metavar="[NAME=]PATH",
                   help='one JSONL per model with {"id","impression"}; NAME defaults to the file stem')
    p.add_argument("--n-cases", type=int, default=None, help="cases to rate (default: all shared cases)")
    p.add_argument("--select", choices=["random", "stratified"], default="random",
                   help="stratified = half abnormal, half normal reference impressions")
    p.add_argument("--seed", default=None,
                   help="drives case choice, blinding codes and reader orders. Default: a secret random seed, "
                        "shown to the admin on the unblinding key page and by `analyze`. A seed you choose "
                        "reproduces the study but WEAKENS BLINDING: a reader who guesses it can work out which "
                        "model wrote each candidate")
    p.add_argument("--include-reference", action="store_true", help="add the reference as a blinded candidate")
    p.add_argument("--pairwise", action="store_true", help="show the reference and ask a preference per candidate")
    p.add_argument("--intersect", action="store_true", help="use only the cases every file covers")
    p.add_argument("--name", default="Reader study")
    p.add_argument("--admin", default="admin", help="admin account to create if the database has none")
    p.add_argument("--admin-password-file", type=Path,
                   help=f"file with the admin password ('-' = stdin); else ${ADMIN_PASSWORD_ENV}; else generated")
    for flag, what in [("--ref-id-field", "case id in references"), ("--ref-findings-field", "findings"),
                       ("--ref-impression-field", "reference impression"), ("--pred-id-field", "case id in predictions"),
                       ("--pred-impression-field", "predicted impression"),
                       ("--ref-indication-field", ("indication shown to readers (default: 'indication' or "
                                                   "'history' when the references have it)")),
                       ("--stratum-field", "reference field with normal/abnormal (default: guessed from the impression)")]:
        p.add_argument(flag, default=None, help=what)

    p = sub.add_parser("add-user", aliases=["add-reader"], help="create a reader (or admin) account")
    p.add_argument("username")
    p.add_argument("--db", required=True)
    p.add_argument("--role", choices=["reader", "admin"], default="reader")
    p.add_argument("--password-file", type=Path, help="file with the password ('-' = stdin); default: generated")

    p = sub.add_parser("reset-password", help="give a user a new password (ends their sessions, lifts a lock)")
    p.add_argument("username")
    p.add_argument("--db", required=True)
    p.add_argument("--password-file", type=Path, help="file with the password ('-' = stdin); default: generated")

    p = sub.add_parser("unlock", help="lift the sign-in lock set after too many failed attempts")
    p.add_argument("username")
    p.add_argument("--db", required=True)

    p = sub.add_parser("serve", help="serve the study web app (loopback only unless --allow-remote)")
    p.add_argument("--db", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--allow-remote", action="store_true",
                   help="permit a non-loopback --host (put TLS in front and use --secure-cookies)")
    p.add_argument("--secure-cookies", action="store_true", help="mark cookies Secure (only behind HTTPS)")
    p.add_argument("--session-hours", type=float, default=12.0)
    p.add_argument("--sqlite-sync", choices=["full", "normal"], default="full",
                   help="full: every rating fsynced (survives power loss); normal: survives a killed server, "
                        "faster, may lose the last seconds on power loss")
    p.add_argument("--request-timeout", type=float, default=30.0,
                   help="seconds a client has to send a whole request, headers and body (slow clients are "
                        "disconnected; raise it for large uploads over slow links)")

    p = sub.add_parser("analyze", help="statistics, agreement, figure, CSV and HTML report")
    p.add_argument("--db", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--blinded", action="store_true", help="report model codes, not names")


def _read_secret(path: Path | None) -> str | None:
    if path is None:
        return None
    if str(path) == "-":
        return sys.stdin.readline().rstrip("\n")
    if not path.is_file():
        raise FatalError(f"{path}: password file not found")
    return path.read_text(encoding="utf-8").strip()


def _read(path: Path) -> str:
    if not path.is_file():
        raise FatalError(f"{path}: file not found")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise FatalError(f"{path}: not UTF-8 text") from None


def _show_password(line: str) -> None:
    """Print a new password and make sure it left this process, before the caller commits the account: a
    closed pipe would otherwise lose a password whose account already exists."""
    try:
        print(line, flush=True)
    except OSError as e:
        raise FatalError(f"could not print the password ({e.strerror or e}); nothing was changed") from None


def _existing_db(db: str) -> str:
    if "://" not in db and not Path(db).is_file():
        raise FatalError(f"{db}: no such study database (create it with `radgpt study create`)")
    return db


def _create(args) -> int:
    from sqlalchemy import select

    from radgpt.study import auth
    from radgpt.study.create import Fields, create_study
    from radgpt.study.db import User, open_db

    preds = []
    for spec in args.predictions:
        name, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        path = Path(path)
        preds.append((name or path.stem, str(path), _read(path)))
    fields = Fields(args.ref_id_field, args.ref_findings_field, args.ref_impression_field, args.pred_id_field,
                    args.pred_impression_field, args.stratum_field, args.ref_indication_field)
    engine, Session = open_db(args.db, create=True)
    summary = create_study(Session, (str(args.references), _read(args.references)), preds, fields=fields,
                           n_cases=args.n_cases, selection=args.select, seed=args.seed,
                           include_reference=args.include_reference, pairwise=args.pairwise,
                           intersect=args.intersect, name=args.name)
    print(f"study: {summary['cases']} cases ({summary['abnormal']} abnormal, {summary['normal']} normal), "
          f"{len(summary['systems'])} blinded candidates per case; "
          + ("the seed you chose weakens blinding: keep it from the readers" if args.seed is not None else
             "secret seed stored (the unblinding key page and `analyze` show it)"))
    if summary["merged_cases"]:
        print(f"identical candidates: in {summary['merged_cases']} of {summary['cases']} cases two or more models "
              f"wrote the same text ({summary['merged_candidates']} candidates in all); each such text is shown "
              f"once and its rating is recorded for every model that wrote it")
    print(f"indication: shown to readers for {summary['with_indication']} of {summary['cases']} cases")
    with Session.begin() as s:
        if s.scalar(select(User.id).where(User.role == "admin")) is None:
            given = _read_secret(args.admin_password_file) or os.environ.get(ADMIN_PASSWORD_ENV)
            _user, password = auth.add_user(s, args.admin, given, "admin")
            _show_password(f"admin account '{args.admin}' created" + ("" if given else f"; password: {password}"))
    engine.dispose()
    return 0


def _add_user(args) -> int:
    from radgpt.study import auth
    from radgpt.study.db import open_db

    engine, Session = open_db(args.db, create=True)
    given = _read_secret(args.password_file)
    with Session.begin() as s:  # commits only once the password is out
        _user, password = auth.add_user(s, args.username, given, args.role)
        _show_password(f"{args.role} '{args.username}' created" + ("" if given else f"; password: {password}"))
    engine.dispose()
    return 0


def _reset_password(args) -> int:
    from radgpt.study import auth
    from radgpt.study.db import open_db

    engine, Session = open_db(_existing_db(args.db), create=True)
    given = _read_secret(args.password_file)
    with Session.begin() as s:
        password = auth.reset_password(s, args.username, given)
        _show_password(f"password of '{args.username}' reset; signed out everywhere"
                       + ("" if given else f"; new password: {password}"))
    engine.dispose()
    return 0


def _unlock(args) -> int:
    from radgpt.study import throttle
    from radgpt.study.db import open_db

    engine, Session = open_db(_existing_db(args.db), create=True)
    with Session.begin() as s:
        cleared = throttle.unlock(s, args.username)
    engine.dispose()
    print(f"'{args.username}' unlocked" if cleared else f"'{args.username}' had no failed sign-ins to clear")
    return 0


def _serve(args) -> int:
    import uvicorn
    from sqlalchemy import select

    from radgpt.common.net import slow_client_guard
    from radgpt.study.app import create_app
    from radgpt.study.db import Study, User, open_db

    loopback = is_loopback(args.host)
    if not loopback and not args.allow_remote:
        raise FatalError(f"refusing to bind {args.host}: the study holds report text; it serves loopback only "
                         f"unless you pass --allow-remote (and put TLS in front)")
    db = _existing_db(args.db)
    engine, Session = open_db(db, create=True)
    with Session() as s:
        if s.scalar(select(User.id).where(User.role == "admin")) is None:
            raise FatalError(f"{db}: no admin account; run `radgpt study add-user NAME --role admin --db {db}`")
        seed = s.scalar(select(Study.seed))
    engine.dispose()
    if isinstance(seed, int):  # an INTEGER column: made before seeds were secret (the default was 0)
        print("warning: this study was created with a small integer seed, which a reader can find by trying "
              "seeds and then tell which model wrote each candidate; for a blinded study, create a new one "
              "(a secret seed is drawn by default)", file=sys.stderr)
    app = create_app(db, session_hours=args.session_hours, secure_cookies=args.secure_cookies,
                     allowed_hosts=LOOPBACK_NAMES if loopback else None, sqlite_sync=args.sqlite_sync)
    print(f"reader study on http://{args.host}:{args.port}", flush=True)
    # access_log off: paths carry only random tokens, but a study log has no need for them. uvicorn alone
    # bounds neither a client that sends its headers a byte at a time nor one that sends nothing.
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                http=slow_client_guard(args.request_timeout), timeout_keep_alive=KEEP_ALIVE)
    return 0


def _analyze(args) -> int:
    from sqlalchemy import select

    from radgpt.study.analyze import analyze_db
    from radgpt.study.db import Study, open_db

    db = _existing_db(args.db)
    files = analyze_db(db, args.out, blinded=args.blinded)
    for what, path in files.items():
        print(f"{what:12s} {path}")
    engine, Session = open_db(db)
    with Session() as s:
        seed = s.scalar(select(Study.seed))
    engine.dispose()
    if seed is not None:  # for the admin's terminal only, never in the report files
        print(f"{'seed':12s} {seed}  (keep it from the readers until the study ends)")
    return 0


def run(args) -> int:
    cmd = {"create": _create, "add-user": _add_user, "add-reader": _add_user, "reset-password": _reset_password,
           "unlock": _unlock, "serve": _serve, "analyze": _analyze}[args.study_cmd]
    return cmd(args)
