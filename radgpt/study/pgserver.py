"""A throwaway PostgreSQL server: Debian's `postgresql` package (initdb + pg_ctl), one cluster in a folder of its
own, listening on 127.0.0.1 only, trust authentication. For the test suite (`.ci/run` starts one and exports
RADGPT_TEST_POSTGRES_URL) and for trying `radgpt study serve` on PostgreSQL (`make postgres`).

    python3 radgpt/study/pgserver.py start DIR     # prints the SQLAlchemy URL; the server keeps running
    python3 radgpt/study/pgserver.py stop DIR      # stops it (the folder can then be deleted)

Standard library only, so it runs before the project's virtual environment exists. As root (CI, a container)
the server runs as the `postgres` user the Debian package creates: PostgreSQL refuses to run as root.
Durability is off (fsync=off, full_page_writes=off): a power cut may lose this cluster, which is thrown away
anyway; a killed *client* (the study server under kill -9) loses nothing acknowledged, as with any setting.
Not for a real study: there, use a managed or properly configured server (docs/study.md).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

USER = "radgpt"  # the cluster's superuser (trust auth, loopback only)
DATABASE = "radgpt"
URL_FILE = "url"


def bindir() -> Path:
    """The newest installed server's bin folder (/usr/lib/postgresql/N/bin), else wherever initdb is on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise SystemExit("PostgreSQL server binaries not found: install Debian's package "
                     "(apt-get install postgresql) and try again")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list, owner: str | None, **kw) -> subprocess.CompletedProcess:
    extra = {"user": owner, "group": owner, "extra_groups": []} if owner else {}
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False, **extra, **kw)
    if proc.returncode != 0:
        raise SystemExit(f"{Path(str(args[0])).name} failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}")
    return proc


def _owner() -> str | None:
    """None when not root; else the unprivileged account to run the server as."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise SystemExit("running as root and there is no 'postgres' user (Debian's postgresql package "
                         "creates it): PostgreSQL will not run as root") from None
    return "postgres"


def start(folder: Path, port: int | None = None) -> str:
    """Create and start a cluster in `folder` (made if missing, must not hold one yet); returns its URL."""
    folder = folder.resolve()
    data = folder / "data"
    if data.exists():
        if (folder / URL_FILE).is_file() and running(folder):  # already started here: the same server
            return (folder / URL_FILE).read_text(encoding="utf-8").strip()
        raise SystemExit(f"{data} exists but no server runs there: remove {folder} (or pick another folder)")
    folder.mkdir(parents=True, exist_ok=True)
    owner = _owner()
    if owner:
        shutil.chown(folder, owner, owner)
    bins = bindir()
    port = port or _free_port()
    _run([bins / "initdb", "-D", data, "-U", USER, "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8",
          "--no-sync", "--no-instructions"], owner)
    options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off -c full_page_writes=off "
               f"-c max_connections=300")
    _run([bins / "pg_ctl", "-D", data, "-l", folder / "server.log", "-o", options, "-w", "-t", "60", "start"], owner)
    _run([bins / "createdb", "-h", "127.0.0.1", "-p", port, "-U", USER, DATABASE], owner)
    url = f"postgresql+psycopg://{USER}@127.0.0.1:{port}/{DATABASE}"
    (folder / URL_FILE).write_text(url + "\n", encoding="utf-8")
    return url


def running(folder: Path) -> bool:
    data = folder.resolve() / "data"
    if not (data / "postmaster.pid").exists():
        return False
    proc = subprocess.run([str(bindir() / "pg_ctl"), "-D", str(data), "status"], capture_output=True, check=False,
                          **({"user": _owner(), "group": _owner(), "extra_groups": []} if _owner() else {}))
    return proc.returncode == 0


def stop(folder: Path) -> None:
    data = folder.resolve() / "data"
    if not (data / "postmaster.pid").exists():
        print(f"no server running in {folder}", file=sys.stderr)
        return
    _run([bindir() / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop"], _owner())


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print(__doc__, file=sys.stderr)
        return 2
    folder = Path(argv[1])
    if argv[0] == "start":
        t0 = time.perf_counter()
        already = running(folder)
        url = start(folder)
        print(url)
        print(f"PostgreSQL {'already running' if already else f'started in {time.perf_counter() - t0:.1f} s'} "
              f"({folder}); stop it with: python3 radgpt/study/pgserver.py stop {folder}", file=sys.stderr)
    else:
        stop(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
