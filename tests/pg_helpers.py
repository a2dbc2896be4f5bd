"""A throwaway PostgreSQL server for the PostgreSQL backend's tests (small on purpose: the
plugin's own server module replaces it).

``initdb`` and ``postgres`` refuse to run as root: as root, both run as the ``postgres``
user, in a folder it owns. The server listens on a unix socket only, tuned for tests.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

START_WAIT_S = 30.0
STOP_WAIT_S = 15.0


@dataclass(frozen=True)
class PgServer:
    socket_dir: str
    port: int
    user: str

    def url(self, database: str = "postgres", driver: str = "psycopg") -> str:
        """A SQLAlchemy URL for ``database`` on this server."""
        return (
            f"postgresql+{driver}://{self.user}@/{database}?host={self.socket_dir}&port={self.port}"
        )

    def connect(self, database: str = "postgres", **kwargs: object) -> psycopg.Connection:
        return psycopg.connect(
            host=self.socket_dir, port=self.port, user=self.user, dbname=database, **kwargs
        )


def _bindir() -> Path:
    out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False)
    if out.returncode == 0 and (Path(out.stdout.strip()) / "initdb").exists():
        return Path(out.stdout.strip())
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    raise RuntimeError("no PostgreSQL server binaries (initdb): install postgresql")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def pg_server() -> Iterator[PgServer]:
    """Start a server in a temp folder; stop it and remove the folder at the end."""
    bindir = _bindir()
    root = Path(tempfile.mkdtemp(prefix="memdb-pg-"))
    as_root = os.geteuid() == 0
    user = "postgres" if as_root else pwd.getpwuid(os.geteuid()).pw_name
    run_as: dict[str, str] = {"user": "postgres", "group": "postgres"} if as_root else {}
    if as_root:
        os.chown(root, pwd.getpwnam("postgres").pw_uid, pwd.getpwnam("postgres").pw_gid)
    data, sock = root / "data", root / "sock"
    port = _free_port()
    env = {**os.environ, "LC_ALL": "C"}
    subprocess.run(
        [bindir / "initdb", "-D", data, "-U", user, "-A", "trust", "--no-sync", "-E", "UTF8"],
        check=True, capture_output=True, env=env, **run_as,  # type: ignore[call-overload]
    )  # fmt: skip
    sock.mkdir()
    if as_root:
        os.chown(sock, pwd.getpwnam("postgres").pw_uid, pwd.getpwnam("postgres").pw_gid)
    log = open(root / "server.log", "wb")  # noqa: SIM115
    server = subprocess.Popen(
        [bindir / "postgres", "-D", data, "-p", str(port), "-k", sock,
         "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
         "-c", "listen_addresses=", "-c", "max_connections=200"],
        stdout=log, stderr=subprocess.STDOUT, env=env, **run_as,  # type: ignore[call-overload]
    )  # fmt: skip
    pg = PgServer(str(sock), port, user)
    try:
        deadline = time.monotonic() + START_WAIT_S
        while True:
            try:
                pg.connect(connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"PostgreSQL did not start: {(root / 'server.log').read_text()}"
                    ) from None
                time.sleep(0.05)
        yield pg
    finally:
        server.send_signal(signal.SIGINT)  # fast shutdown: open sessions are ended
        try:
            server.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(STOP_WAIT_S)
        log.close()
        shutil.rmtree(root, ignore_errors=True)
