"""`radgpt study create|add-user|reset-password|unlock|serve|analyze` — the reader study, from prediction
files to a report.

  radgpt study create --db study.db --references refs.jsonl --predictions lora=a.jsonl tfidf=b.jsonl \
      --n-cases 50 --select stratified
  radgpt study add-reader alice --db study.db          # prints a generated password, once
  radgpt study reset-password alice --db study.db      # a new one (ends her sessions, lifts a lock)
  radgpt study unlock alice --db study.db               # after too many failed sign-ins
  radgpt study serve --db study.db                      # http://127.0.0.1:8765
  radgpt study analyze --db study.db --out report/      # report.html, CSVs, scores.png; prints the seed
  radgpt study serve --config configs/study.yaml serve.port=8766   # one YAML for the study (StudyConfig)

Settings: defaults ← --config YAML ← flags ← key=value overrides, later wins; `db` is every command's, the
rest sits in a section per command (create., serve., analyze.).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from radgpt.common.config import add_config_flags, config_help, flag_values, load_config, names_config_key
from radgpt.common.errors import FatalError
from radgpt.common.net import LOOPBACK_NAMES, is_loopback

ADMIN_PASSWORD_ENV = "RADGPT_STUDY_ADMIN_PASSWORD"
KEEP_ALIVE = 5  # seconds an idle connection is kept after a response (uvicorn's default, stated on purpose)


@dataclass
class CreateConfig:
    # JSONL with {"id","findings","impression"} or clin-summ {"idx","inputs","target"}; required
    references: str = ""
    # one JSONL per model with {"id","impression"}, as [NAME=]PATH (NAME defaults to the file stem); required
    predictions: list[str] = field(default_factory=list)
    n_cases: int | None = None  # cases to rate (default: all shared cases)
    select: Literal["random", "stratified"] = "random"  # stratified = half abnormal, half normal references
    # drives case choice, blinding codes and reader orders. Default: a secret random seed, shown to the admin
    # on the unblinding key page and by `analyze`. A seed you choose reproduces the study but WEAKENS
    # BLINDING: a reader who guesses it can work out which model wrote each candidate
    seed: str | None = None
    include_reference: bool = False  # add the reference as a blinded candidate
    pairwise: bool = False  # show the reference and ask a preference per candidate
    intersect: bool = False  # use only the cases every file covers
    name: str = "Reader study"  # the study's title, shown to readers
    admin: str = "admin"  # admin account to create if the database has none
    # file with the admin password ('-' = stdin); else $RADGPT_STUDY_ADMIN_PASSWORD; else generated
    admin_password_file: str = ""
    # field names in the files; unset: detected from the first record
    ref_id_field: str | None = None  # case id in the references
    ref_findings_field: str | None = None  # findings in the references
    ref_impression_field: str | None = None  # reference impression
    pred_id_field: str | None = None  # case id in the predictions
    pred_impression_field: str | None = None  # predicted impression
    # indication shown to readers (default: 'indication' or 'history' when the references have it)
    ref_indication_field: str | None = None
    # reference field with normal/abnormal (default: guessed from the impression)
    stratum_field: str | None = None


@dataclass
class StudyServeConfig:
    host: str = "127.0.0.1"  # a non-loopback address needs allow_remote
    port: int = 8765  # http://host:port
    allow_remote: bool = False  # permit a non-loopback host (put TLS in front and use secure_cookies)
    secure_cookies: bool = False  # mark cookies Secure (only behind HTTPS)
    session_hours: float = 12.0  # a reader's sign-in lasts this long
    # full: every rating fsynced (survives power loss); normal: survives a killed server, faster, may lose the
    # last seconds on power loss
    sqlite_sync: Literal["full", "normal"] = "full"
    # seconds a client has to send a whole request, headers and body (slow clients are disconnected; raise it
    # for large uploads over slow links)
    request_timeout: float = 30.0


@dataclass
class AnalyzeConfig:
    out: str = ""  # report folder (report.html, CSVs, scores.png); required
    blinded: bool = False  # report model codes, not names


@dataclass
class StudyConfig:
    """One study, one YAML: `db` for every command, and a section per command that has settings. A command
    reads `db` and its own section; account commands (add-user, reset-password, unlock) only `db`, their
    username, --role and --password-file being about one account, not the study."""

    db: str = ""  # SQLite file path, or an SQLAlchemy URL (postgresql+psycopg://...); required
    create: CreateConfig = field(default_factory=CreateConfig)
    serve: StudyServeConfig = field(default_factory=StudyServeConfig)
    analyze: AnalyzeConfig = field(default_factory=AnalyzeConfig)


def _config_args(p: argparse.ArgumentParser, section: str | None, flags: dict | None = None) -> None:
    """--config, --db, the section's flags, key=value overrides and the config keys in --help."""
    p.add_argument("--config", help="YAML config (StudyConfig: db and a section per command, e.g. "
                                    "configs/study.yaml); key=value overrides follow")
    made = add_config_flags(p, StudyConfig, flags={"create": None, "serve": None, "analyze": None})
    if section is not None:
        sections = {"create": CreateConfig, "serve": StudyServeConfig, "analyze": AnalyzeConfig}
        made |= add_config_flags(p, sections[section], section=section + ".", flags=flags)
    example = {"create": "create.n_cases=50", "serve": "serve.port=8766", "analyze": "analyze.blinded=true"}
    p.add_argument("inputs", nargs="*", metavar="key=value",
                   help=f"config overrides, e.g. {example.get(section, 'db=other.db')}")
    keys = ("db", section + ".") if section else ("db",)
    p.epilog = lambda: config_help(StudyConfig(), flags=made, include=keys)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="study_cmd", metavar="COMMAND", required=True)

    p = sub.add_parser("create", help="create a study from references and prediction files")
    _config_args(p, "create", {
        "predictions": {"names": ["--predictions", "--pred"], "nargs": "+", "action": "extend",
                        "metavar": "[NAME=]PATH"},
        "n_cases": {"metavar": "N"}, "seed": {"metavar": "SEED"}, "name": {"metavar": "TEXT"},
        "admin": {"metavar": "NAME"}, "admin_password_file": {"metavar": "FILE"}})

    p = sub.add_parser("add-user", aliases=["add-reader"], help="create a reader (or admin) account")
    p.add_argument("username")
    p.add_argument("--role", choices=["reader", "admin"], default="reader",
                   help="reader: rates cases; admin: creates the study, sees progress and the unblinding key")
    p.add_argument("--password-file", type=Path, help="file with the password ('-' = stdin); default: generated")
    _config_args(p, None)

    p = sub.add_parser("reset-password", help="give a user a new password (ends their sessions, lifts a lock)")
    p.add_argument("username")
    p.add_argument("--password-file", type=Path, help="file with the password ('-' = stdin); default: generated")
    _config_args(p, None)

    p = sub.add_parser("unlock", help="lift the sign-in lock set after too many failed attempts")
    p.add_argument("username")
    _config_args(p, None)

    p = sub.add_parser("serve", help="serve the study web app (loopback only unless --allow-remote)")
    _config_args(p, "serve", {"port": {"metavar": "N"}, "session_hours": {"metavar": "H"},
                              "request_timeout": {"metavar": "S"}})

    p = sub.add_parser("analyze", help="statistics, agreement, figure, CSV and HTML report")
    _config_args(p, "analyze", {"out": {"metavar": "DIR"}})


def resolve_config(args: argparse.Namespace) -> StudyConfig:
    """The settings of this call: defaults ← --config YAML ← flags ← key=value overrides, checked."""
    given = flag_values(args)
    overrides = list(args.inputs)
    # --predictions takes several values, so overrides written after it land in its list: a config key there
    # (create.n_cases=50) is an override, not a model named "create.n_cases"
    preds = given.get("create.predictions")
    if preds:
        given["create.predictions"] = [x for x in preds if not names_config_key(StudyConfig, x)]
        overrides = [x for x in preds if names_config_key(StudyConfig, x)] + overrides
        if not given["create.predictions"]:
            del given["create.predictions"]
    bad = [x for x in overrides if "=" not in x]
    if bad:
        raise FatalError(f"expected key=value overrides after the options, got {' '.join(bad)}")
    cfg = load_config(StudyConfig, args.config, overrides, flags=given)
    if not cfg.db:
        raise FatalError("no study database: pass --db FILE_OR_URL (or db: in the --config YAML)")
    cmd = args.study_cmd
    required = {"create": [("references", "--references FILE"), ("predictions", "--predictions [NAME=]PATH ...")],
                "analyze": [("out", "--out DIR")]}.get(cmd, [])
    for key, flag in required:
        if not getattr(getattr(cfg, cmd), key):
            raise FatalError(f"{cmd}: pass {flag} (or {cmd}.{key} in the --config YAML)")
    return cfg


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


def _create(cfg: StudyConfig, args) -> int:
    from sqlalchemy import select

    from radgpt.study import auth
    from radgpt.study.create import Fields, create_study
    from radgpt.study.db import User, open_db

    c = cfg.create
    preds = []
    for spec in c.predictions:
        name, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        path = Path(path)
        preds.append((name or path.stem, str(path), _read(path)))
    fields = Fields(c.ref_id_field, c.ref_findings_field, c.ref_impression_field, c.pred_id_field,
                    c.pred_impression_field, c.stratum_field, c.ref_indication_field)
    references = Path(c.references)
    engine, Session = open_db(cfg.db, create=True)
    summary = create_study(Session, (str(references), _read(references)), preds, fields=fields,
                           n_cases=c.n_cases, selection=c.select, seed=c.seed,
                           include_reference=c.include_reference, pairwise=c.pairwise,
                           intersect=c.intersect, name=c.name)
    print(f"study: {summary['cases']} cases ({summary['abnormal']} abnormal, {summary['normal']} normal), "
          f"{len(summary['systems'])} blinded candidates per case; "
          + ("the seed you chose weakens blinding: keep it from the readers" if c.seed is not None else
             "secret seed stored (the unblinding key page and `analyze` show it)"))
    if summary["merged_cases"]:
        print(f"identical candidates: in {summary['merged_cases']} of {summary['cases']} cases two or more models "
              f"wrote the same text ({summary['merged_candidates']} candidates in all); each such text is shown "
              f"once and its rating is recorded for every model that wrote it")
    print(f"indication: shown to readers for {summary['with_indication']} of {summary['cases']} cases")
    with Session.begin() as s:
        if s.scalar(select(User.id).where(User.role == "admin")) is None:
            given = (_read_secret(Path(c.admin_password_file)) if c.admin_password_file else None) \
                or os.environ.get(ADMIN_PASSWORD_ENV)
            _user, password = auth.add_user(s, c.admin, given, "admin")
            _show_password(f"admin account '{c.admin}' created" + ("" if given else f"; password: {password}"))
    engine.dispose()
    return 0


def _add_user(cfg: StudyConfig, args) -> int:
    from radgpt.study import auth
    from radgpt.study.db import open_db

    engine, Session = open_db(cfg.db, create=True)
    given = _read_secret(args.password_file)
    with Session.begin() as s:  # commits only once the password is out
        _user, password = auth.add_user(s, args.username, given, args.role)
        _show_password(f"{args.role} '{args.username}' created" + ("" if given else f"; password: {password}"))
    engine.dispose()
    return 0


def _reset_password(cfg: StudyConfig, args) -> int:
    from radgpt.study import auth
    from radgpt.study.db import open_db

    engine, Session = open_db(_existing_db(cfg.db), create=True)
    given = _read_secret(args.password_file)
    with Session.begin() as s:
        password = auth.reset_password(s, args.username, given)
        _show_password(f"password of '{args.username}' reset; signed out everywhere"
                       + ("" if given else f"; new password: {password}"))
    engine.dispose()
    return 0


def _unlock(cfg: StudyConfig, args) -> int:
    from radgpt.study import throttle
    from radgpt.study.db import open_db

    engine, Session = open_db(_existing_db(cfg.db), create=True)
    with Session.begin() as s:
        cleared = throttle.unlock(s, args.username)
    engine.dispose()
    print(f"'{args.username}' unlocked" if cleared else f"'{args.username}' had no failed sign-ins to clear")
    return 0


def _serve(cfg: StudyConfig, args) -> int:
    import uvicorn
    from sqlalchemy import select

    from radgpt.common.net import no_egress_env, slow_client_guard
    from radgpt.study.app import create_app
    from radgpt.study.db import Study, User, open_db

    no_egress_env()  # the study's server fetches nothing either
    opts = cfg.serve
    loopback = is_loopback(opts.host)
    if not loopback and not opts.allow_remote:
        raise FatalError(f"refusing to bind {opts.host}: the study holds report text; it serves loopback only "
                         f"unless you pass --allow-remote (and put TLS in front)")
    db = _existing_db(cfg.db)
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
    app = create_app(db, session_hours=opts.session_hours, secure_cookies=opts.secure_cookies,
                     allowed_hosts=LOOPBACK_NAMES if loopback else None, sqlite_sync=opts.sqlite_sync)
    print(f"reader study on http://{opts.host}:{opts.port}", flush=True)
    # access_log off: paths carry only random tokens, but a study log has no need for them. uvicorn alone
    # bounds neither a client that sends its headers a byte at a time nor one that sends nothing.
    uvicorn.run(app, host=opts.host, port=opts.port, log_level="warning", access_log=False,
                http=slow_client_guard(opts.request_timeout), timeout_keep_alive=KEEP_ALIVE)
    return 0


def _analyze(cfg: StudyConfig, args) -> int:
    from sqlalchemy import select

    from radgpt.study.analyze import analyze_db
    from radgpt.study.db import Study, open_db

    db = _existing_db(cfg.db)
    files = analyze_db(db, Path(cfg.analyze.out), blinded=cfg.analyze.blinded)
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
    return cmd(resolve_config(args), args)
