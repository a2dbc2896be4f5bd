"""A throwaway PostgreSQL server for a test run: found, started, stopped, never left behind.

Standard library only (no pytest, no SQLAlchemy, no driver), so the plugin can start it
from ``pytest_configure`` or the xdist controller and hand its socket to the workers.

- **Finding the binaries** (:func:`find_binaries`): an explicit folder, then ``PATH``,
  ``pg_config --bindir``, Debian's ``/usr/lib/postgresql/*/bin`` (newest first) and
  Homebrew's ``postgresql@*`` kegs. Missing, :class:`PostgresNotFound` lists every place
  looked at and what to do.
- **Tuned for tests**: ``fsync``, ``synchronous_commit`` and ``full_page_writes`` off (a
  crash loses the cluster, which is thrown away anyway), ``initdb --no-sync`` (1.1 s here
  against 2.8 s with the final sync), a unix socket in the server's own folder and no TCP
  unless asked, ``max_connections=200`` for xdist workers, trust authentication for the
  user ``postgres``, ``-E UTF8 --no-locale`` (the same collation on every machine, and no
  dependency on the locales installed).
- **As root** (CI runners, containers): ``initdb`` and ``postgres`` refuse to run as root,
  so both run as the ``postgres`` user if it exists, else ``nobody``
  (``subprocess.Popen(user=..., group=...)``), in a folder given to that user, under a base
  folder it can traverse (mode 0711).
- **Never left behind**: :meth:`PostgresServer.stop` stops the postmaster as ``pg_ctl``
  would (fast, then immediate, then SIGKILL to its process group; each wait bounded) and
  removes the folder. A watchdog process (:mod:`pytest_memdb.postgresql.watchdog`) does the
  same the instant the owner process dies, SIGKILL included: it holds the read end of a
  pipe whose write end only the owner holds. The postmaster and the watchdog each run in
  their own session, so the terminal's Ctrl-C (SIGINT to pytest's process group) reaches
  neither: the server keeps serving while pytest unwinds, then goes. If the watchdog was
  killed too, the next start sweeps the folder: each server folder lives under one base
  folder per user (``$TMPDIR/pytest-memdb-pg-<uid>/pg-XXXXXXXX/``) with an ``owner.json``
  (pid, that process's start time, host); a folder whose owner is gone is stopped and
  removed, one whose owner is alive is never touched, nor anything outside the base.
- **Start-up, measured here** (2 cores with a load average of 5 from other runs,
  PostgreSQL 15, as root running the server as ``postgres``; median of 5): initdb + start
  + the first psycopg connection 1.5 s (``initdb --no-sync`` about 1.1 s of it), ``stop()``
  0.14 s. The watchdog costs 30 ms to start (``python -I -S``, standard library only).

Why not ``pg_ctl start``: we start ``postgres`` ourselves in the foreground, so we hold the
postmaster's pid and exit status from the first instant (for the watchdog and the error
message), and readiness is read where ``pg_ctl`` reads it, line 8 of ``postmaster.pid``
(``ready``), with no client program or driver needed.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from pytest_memdb.errors import MemdbError
from pytest_memdb.postgresql import watchdog
from pytest_memdb.postgresql.watchdog import DATA, DONE

USER = "postgres"
"""The database superuser of the clusters started here."""

OWNER_FILE = "owner.json"
FOLDER_PREFIX = "pg-"
LOG_FILE = "server.log"
UNOWNED_GRACE = 60.0
"""Seconds a server folder without an owner file is left alone (it may be being made)."""

SOCKET_PATH_MAX = 103
"""The longest unix socket path every platform takes (macOS: 104 bytes with the NUL)."""

REQUIRED = ("initdb", "pg_ctl", "postgres")

TEST_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
}
"""The server settings for tests (``-c name=value``); ``start_server(settings=...)`` adds."""

DRIVERS = ("asyncpg", "psycopg")

USUAL_FOLDERS: Sequence[tuple[str, str]] = (
    ("/usr/lib/postgresql/*/bin", "Debian/Ubuntu"),
    ("/opt/homebrew/opt/postgresql@*/bin", "Homebrew"),
    ("/usr/local/opt/postgresql@*/bin", "Homebrew"),
    ("/opt/homebrew/opt/postgresql/bin", "Homebrew"),
    ("/usr/local/opt/postgresql/bin", "Homebrew"),
)
"""Where PostgreSQL's server programs usually are, after ``PATH`` and ``pg_config``
(glob patterns; of several versions, the newest first)."""


class PostgresNotFound(MemdbError):
    """The PostgreSQL server programs (``initdb``, ``pg_ctl``, ``postgres``) were not found."""


class PostgresServerError(MemdbError):
    """The throwaway server could not be started (the message has the server log's tail)."""


@dataclass(frozen=True)
class Binaries:
    """The folder holding a PostgreSQL installation's server programs."""

    bindir: Path

    def tool(self, name: str) -> Path:
        """The path of ``name`` (``initdb``, ``pg_ctl``, ``postgres``, ``pg_dump``...) here."""
        return self.bindir / name

    def version(self) -> str:
        """What ``postgres --version`` says, e.g. ``postgres (PostgreSQL) 15.8``."""
        result = subprocess.run(
            [str(self.tool("postgres")), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return result.stdout.strip()


def _has_all(folder: Path) -> bool:
    return all(os.access(folder / name, os.X_OK) and (folder / name).is_file() for name in REQUIRED)


def _version_key(path: str) -> tuple[int, ...]:
    """Sort key for ``.../postgresql/15/bin`` or ``.../postgresql@16/bin``: newest first."""
    numbers = re.findall(r"postgresql[@/](\d+(?:\.\d+)?)", path)
    if not numbers:
        return ()
    return tuple(int(part) for part in numbers[-1].split("."))


def _candidates(bindir: str | os.PathLike[str] | None, path: str | None) -> list[tuple[str, Path]]:
    """Every place looked at, in order, with how it was found (for the error message)."""
    if bindir is not None:
        return [("the folder given", Path(bindir))]
    places: list[tuple[str, Path]] = []
    search_path = os.environ.get("PATH", "") if path is None else path
    for entry in search_path.split(os.pathsep):
        if entry:
            places.append(("PATH", Path(entry)))
    pg_config = shutil.which("pg_config", path=search_path)
    if pg_config is not None:
        try:
            result = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            result = None
        if result is not None and result.returncode == 0 and result.stdout.strip():
            places.append((f"{pg_config} --bindir", Path(result.stdout.strip())))
    for pattern, label in USUAL_FOLDERS:
        found = sorted(glob.glob(pattern), key=_version_key, reverse=True)
        places.extend((label, Path(folder)) for folder in found)
        if not found:
            places.append((label, Path(pattern)))
    return places


def find_binaries(
    bindir: str | os.PathLike[str] | None = None, *, path: str | None = None
) -> Binaries:
    """Find a folder with ``initdb``, ``pg_ctl`` and ``postgres``.

    ``bindir`` given: only there. Otherwise ``path`` (default: ``$PATH``), then
    ``pg_config --bindir``, then Debian's and Homebrew's usual folders, newest version
    first. Raises :class:`PostgresNotFound` listing every place looked at.
    """
    places = _candidates(bindir, path)
    for _, folder in places:
        if _has_all(folder):
            return Binaries(folder)
    looked = "\n".join(f"  - {folder} ({how})" for how, folder in places)
    raise PostgresNotFound(
        "pytest-memdb could not start a throwaway PostgreSQL server: the server programs "
        f"{', '.join(REQUIRED)} were not found together in any of these folders:\n"
        f"{looked}\n"
        "Install the PostgreSQL server (Debian/Ubuntu: `apt-get install postgresql`; "
        "Fedora: `dnf install postgresql-server`; macOS: `brew install postgresql@16`), "
        "or give the folder holding them, or give the URL of a running server instead "
        "(postgresql+asyncpg://user:password@host/database)."
    )


# -- owners and the base folder ---------------------------------------------------------


def _start_time(pid: int) -> str | None:
    """When process ``pid`` started, as an opaque string (None: no such process)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return fields[19]  # field 22 of stat(5): starttime, in clock ticks since boot
    except FileNotFoundError:
        if Path("/proc/self").exists():
            return None
    except OSError:
        return None
    try:
        result = subprocess.run(
            ["ps", "-o", "lstart=", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None


def owner_record(pid: int | None = None) -> dict[str, object]:
    """What ``owner.json`` holds for process ``pid`` (default: this one)."""
    pid = os.getpid() if pid is None else pid
    return {"pid": pid, "started": _start_time(pid), "host": socket.gethostname()}


def owner_alive(record: Mapping[str, object]) -> bool:
    """Whether the process an ``owner.json`` names still runs (the same process, not a reuse).

    A record from another host (a shared temp folder) counts as alive: we cannot tell.
    """
    if record.get("host") != socket.gethostname():
        return True
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if not watchdog.alive(pid):
        return False
    return _start_time(pid) == record.get("started")


def default_base() -> Path:
    """``$TMPDIR/pytest-memdb-pg-<uid>``: the folder holding this user's server folders."""
    return Path(tempfile.gettempdir()) / f"pytest-memdb-pg-{os.geteuid()}"


def _prepare_base(base: Path, *, traversable: bool) -> None:
    """Make the base folder ours, not a symlink, not writable by others."""
    with contextlib.suppress(FileExistsError):
        base.mkdir(mode=0o700, parents=True)
    info = os.lstat(base)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise PostgresServerError(
            f"pytest-memdb keeps its throwaway PostgreSQL servers in {base}, but that path "
            "is not a folder owned by this user (a symlink, a file, or another user's). "
            "Remove it, or set TMPDIR to another folder."
        )
    mode = 0o711 if traversable else 0o700
    if stat.S_IMODE(info.st_mode) != mode:
        os.chmod(base, mode)


def _unreachable_parent(folder: Path, uid: int, gid: int) -> Path | None:
    """The first folder on ``folder``'s path that user ``uid`` cannot traverse, if any."""
    for parent in [*reversed(folder.parents), folder]:
        info = os.stat(parent)
        if info.st_uid == uid:
            bit = stat.S_IXUSR
        elif info.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            return parent
    return None


def sweep(base: Path | None = None) -> list[Path]:
    """Stop the servers of ``base``'s folders whose owner is gone, and remove the folders.

    Only ``pg-*`` folders directly in ``base`` are looked at, never through a symlink; a
    folder whose owner lives is kept, and so is one without an owner file younger than a
    minute (it is being made). Returns the folders removed.
    """
    base = default_base() if base is None else base
    removed: list[Path] = []
    try:
        entries = list(os.scandir(base))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(FOLDER_PREFIX) or not entry.is_dir(follow_symlinks=False):
            continue
        folder = Path(entry.path)
        try:
            record = json.loads((folder / OWNER_FILE).read_text())
        except FileNotFoundError:
            try:
                age = time.time() - entry.stat(follow_symlinks=False).st_mtime
            except OSError:
                continue
            if age < UNOWNED_GRACE:
                continue
            record = {}
        except (OSError, ValueError):
            record = {}
        if isinstance(record, dict) and record and owner_alive(record):
            continue
        watchdog.clean_up(folder, fast=2.0)
        removed.append(folder)
    return removed


# -- the server ---------------------------------------------------------------------------


def _free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (with no TCP, it only names the socket file)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class _RunAs:
    """The unprivileged user the server programs run as when we are root."""

    name: str
    uid: int
    gid: int


def _run_as(user: str | None) -> _RunAs | None:
    """Who runs ``initdb`` and ``postgres``: None for ourselves (not root)."""
    if os.geteuid() != 0:
        return None
    names = [user] if user is not None else ["postgres", "nobody"]
    for name in names:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if entry.pw_uid == 0:
            continue
        return _RunAs(name, entry.pw_uid, entry.pw_gid)
    raise PostgresServerError(
        "pytest-memdb runs as root, and PostgreSQL's initdb and postgres refuse to run as "
        f"root; they run as an unprivileged user instead, but no user {' or '.join(names)} "
        "exists here (or it is root). Create one (`useradd --system --no-create-home "
        "postgres`), run the tests as a non-root user, or give the URL of a running server "
        "instead (postgresql+asyncpg://user:password@host/database)."
    )


def _log_tail(log: Path, lines: int = 30) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(the log is empty)"


def _postmaster_status(data: Path) -> str | None:
    """Line 8 of ``postmaster.pid``: ``ready`` once connections are accepted (PostgreSQL 10+)."""
    try:
        lines = (data / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None
    return lines[7].strip() if len(lines) >= 8 else None


def _check_driver(driver: str) -> None:
    if driver not in DRIVERS:
        raise ValueError(f"driver must be one of {', '.join(DRIVERS)}, not {driver!r}")


def socket_url(
    socket_dir: str | os.PathLike[str],
    port: int,
    database: str = "postgres",
    driver: str = "asyncpg",
    *,
    user: str = USER,
) -> str:
    """The SQLAlchemy URL of ``database`` on the unix socket ``socket_dir/.s.PGSQL.port``.

    ``postgresql+DRIVER://USER@/DATABASE?host=/socket/dir&port=PORT``: both asyncpg and
    psycopg (sync and async) take this form, checked by connecting through
    ``create_engine``/``create_async_engine``. For an xdist worker, given the controller's
    server's socket dir and port.
    """
    _check_driver(driver)
    name = quote(database, safe="")
    folder = quote(os.fspath(socket_dir), safe="/")
    return f"postgresql+{driver}://{quote(user, safe='')}@/{name}?host={folder}&port={port}"


class PostgresServer:
    """A running throwaway PostgreSQL server; :func:`start_server` makes one.

    Connect over the unix socket in :attr:`socket_dir` (the socket file is
    ``.s.PGSQL.<port>``) as :attr:`user`, without a password; :meth:`url` writes the
    SQLAlchemy URL. :meth:`stop` is idempotent, and does nothing in a forked child (the
    server is its owner's to stop).
    """

    def __init__(
        self,
        *,
        folder: Path,
        port: int,
        host: str | None,
        binaries: Binaries,
        process: subprocess.Popen[bytes],
        watchdog_process: subprocess.Popen[bytes],
        watchdog_pipe: int,
        run_as: str | None,
        startup_seconds: float,
    ) -> None:
        self.folder = folder
        """The server's folder: its data directory, socket, log and owner file."""
        self.socket_dir = folder
        """The folder holding the unix socket (``host=`` for libpq and asyncpg)."""
        self.data_dir = folder / DATA
        self.log_file = folder / LOG_FILE
        self.port = port
        self.host = host
        """``127.0.0.1`` when the server also listens on TCP, else None."""
        self.user = USER
        self.binaries = binaries
        self.run_as = run_as
        """The OS user the server runs as (when we are root), else None (ourselves)."""
        self.startup_seconds = startup_seconds
        """How long initdb and the start took."""
        self._process = process
        self._watchdog = watchdog_process
        self._pipe: int | None = watchdog_pipe
        self._atexit = False
        self._owner = os.getpid()
        os.register_at_fork(after_in_child=_forget_in_child(weakref.ref(self)))

    @property
    def pid(self) -> int:
        """The postmaster's pid. It leads its own session (Ctrl-C's SIGINT to pytest's
        process group misses it); its backends are its children, each in its own session."""
        return self._process.pid

    @property
    def watchdog_pid(self) -> int:
        """The pid of the watchdog that cleans up if this process dies."""
        return self._watchdog.pid

    @property
    def running(self) -> bool:
        """Whether the postmaster still runs."""
        return self._process.poll() is None

    def url(self, database: str = "postgres", driver: str = "asyncpg", *, tcp: bool = False) -> str:
        """The SQLAlchemy URL of ``database``: ``postgresql+asyncpg://...``, ``+psycopg``.

        Over the unix socket, the form both drivers take:
        ``postgresql+DRIVER://postgres@/DATABASE?host=/socket/dir&port=PORT``. With
        ``tcp=True`` (the server started with ``tcp=True``): ``@127.0.0.1:PORT/DATABASE``.
        """
        if tcp:
            if self.host is None:
                raise ValueError("this server does not listen on TCP: start it with tcp=True")
            _check_driver(driver)
            name = quote(database, safe="")
            return f"postgresql+{driver}://{self.user}@{self.host}:{self.port}/{name}"
        return socket_url(self.socket_dir, self.port, database, driver, user=self.user)

    def dsn(self, database: str = "postgres") -> str:
        """A libpq connection string (``psycopg.connect(server.dsn())``, ``psql``)."""
        return f"host={self.socket_dir} port={self.port} user={self.user} dbname={database}"

    def stop(self, *, timeout: float = 10.0) -> None:
        """Stop the server and remove its folder; then tell the watchdog it is done.

        Fast shutdown (SIGINT: sessions ended, a clean checkpoint) for ``timeout`` seconds,
        then immediate (SIGQUIT) for at most 5 s more, then SIGKILL to the backends and
        the postmaster (a hung or stopped server).
        """
        if os.getpid() != self._owner:
            return  # a forked copy: the server is its parent's to stop
        if self._atexit:
            atexit.unregister(self.stop)
            self._atexit = False
        process = self._process
        if process.poll() is None:
            for sig, wait in ((signal.SIGINT, timeout), (signal.SIGQUIT, min(timeout, 5.0))):
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(sig)
                try:
                    process.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            else:
                watchdog.kill_tree(process.pid)
                process.wait(10.0)
        watchdog.clean_up(self.folder)
        if self._pipe is not None:
            with contextlib.suppress(OSError):
                os.write(self._pipe, DONE)
            os.close(self._pipe)
            self._pipe = None
        try:
            self._watchdog.wait(10.0)
        except subprocess.TimeoutExpired:
            self._watchdog.kill()
            self._watchdog.wait(5.0)

    def stop_at_exit(self) -> None:
        """Also stop the server when the interpreter exits normally (``atexit``)."""
        if not self._atexit:
            atexit.register(self.stop)
            self._atexit = True

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<PostgresServer {self.socket_dir} port={self.port} pid={self.pid}>"


def _forget_in_child(ref: weakref.ref[PostgresServer]) -> Callable[[], None]:
    """What a forked child does with a server object it inherited: close its copy of the
    watchdog pipe's write end (or the watchdog would wait for that child to exit too)."""

    def forget() -> None:
        server = ref()
        if server is not None and server._pipe is not None:
            with contextlib.suppress(OSError):
                os.close(server._pipe)
            server._pipe = None

    return forget


def _start_watchdog(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    read_end, write_end = os.pipe()  # both non-inheritable; the child gets read_end as stdin
    try:
        process = subprocess.Popen(
            [sys.executable, "-I", "-S", watchdog.__file__, str(folder)],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    return process, write_end


def start_server(
    *,
    bindir: str | os.PathLike[str] | None = None,
    base: str | os.PathLike[str] | None = None,
    tcp: bool = False,
    settings: Mapping[str, str] | None = None,
    initdb_args: Sequence[str] = ("-E", "UTF8", "--no-locale"),
    run_as: str | None = None,
    timeout: float = 60.0,
    stop_at_exit: bool = False,
) -> PostgresServer:
    """Initialise a cluster in a new folder under ``base`` and start a server on it.

    Measured here (2 cores under load, PostgreSQL 15, as root with the server run as
    ``postgres``): initdb + start + the first psycopg connection 1.5 s (median of 5;
    ``initdb --no-sync`` about 1.1 s of it).

    - ``bindir``: the folder with ``initdb``/``pg_ctl``/``postgres`` (default: searched, see
      :func:`find_binaries`).
    - ``base``: the folder holding this user's server folders (default
      :func:`default_base`); the stale ones there are swept first (:func:`sweep`).
    - ``tcp``: also listen on ``127.0.0.1:port`` (default: the unix socket only). The port
      is one free a moment before the server binds it: another process taking it in
      between makes the start fail, with the log saying so.
    - ``settings``: more ``-c name=value`` server settings, over :data:`TEST_SETTINGS`.
    - ``run_as``: the OS user to run the server as when we are root (default ``postgres``,
      else ``nobody``); ignored when not root.
    - ``timeout``: seconds for ``initdb`` and, separately, for the server to accept
      connections; past it, :class:`PostgresServerError` with the log's tail.
    - ``stop_at_exit``: register :meth:`PostgresServer.stop` with ``atexit``.

    A watchdog stops the server and removes the folder when this process dies, however.
    """
    began = time.monotonic()
    binaries = find_binaries(bindir)
    user = _run_as(run_as)
    base_path = default_base() if base is None else Path(base)
    _prepare_base(base_path, traversable=user is not None)
    sweep(base_path)
    if user is not None:
        blocked = _unreachable_parent(base_path, user.uid, user.gid)
        if blocked is not None:
            raise PostgresServerError(
                f"pytest-memdb runs as root, so it runs PostgreSQL as the user {user.name}, "
                f"but {user.name} cannot reach {base_path}: {blocked} is not searchable for "
                "it. Set TMPDIR to a folder every user can reach (e.g. /tmp)."
            )
    folder = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX, dir=base_path))
    (folder / OWNER_FILE).write_text(json.dumps(owner_record()))
    port = _free_port()
    socket_path = folder / f".s.PGSQL.{port}"
    if len(os.fsencode(socket_path)) > SOCKET_PATH_MAX:
        shutil.rmtree(folder, ignore_errors=True)
        raise PostgresServerError(
            "pytest-memdb: the throwaway PostgreSQL server's socket would be "
            f"{socket_path}, longer than the {SOCKET_PATH_MAX} bytes a unix socket path may "
            "have. Set TMPDIR to a shorter folder (e.g. /tmp)."
        )
    watchdog_process, pipe = _start_watchdog(folder)
    log = folder / LOG_FILE
    process: subprocess.Popen[bytes] | None = None
    try:
        if user is not None:
            os.chown(folder, user.uid, user.gid)
        uid, gid = (None, None) if user is None else (user.uid, user.gid)
        groups: list[int] | None = None if user is None else []
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env["LC_ALL"] = "C"
        with open(log, "ab") as out:
            try:
                subprocess.run(
                    [
                        str(binaries.tool("initdb")),
                        "-D",
                        str(folder / DATA),
                        "-U",
                        USER,
                        "-A",
                        "trust",
                        "--no-sync",
                        *initdb_args,
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=folder,
                    env=env,
                    timeout=timeout,
                    check=True,
                    user=uid,
                    group=gid,
                    extra_groups=groups,
                )
            except subprocess.CalledProcessError as error:
                raise PostgresServerError(
                    f"pytest-memdb: initdb failed (exit status {error.returncode}) in "
                    f"{folder / DATA}; its output:\n{_log_tail(log)}"
                ) from None
            except subprocess.TimeoutExpired:
                raise PostgresServerError(
                    f"pytest-memdb: initdb did not finish within {timeout:g} s in {folder / DATA}; "
                    f"its output:\n{_log_tail(log)}"
                ) from None
            options = {
                **TEST_SETTINGS,
                "listen_addresses": "127.0.0.1" if tcp else "",
                "unix_socket_directories": str(folder),
                "port": str(port),
                **(settings or {}),
            }
            command = [str(binaries.tool("postgres")), "-D", str(folder / DATA)]
            for name, value in options.items():
                command += ["-c", f"{name}={value}"]
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=folder,
                env=env,
                start_new_session=True,
                user=uid,
                group=gid,
                extra_groups=groups,
            )
        deadline = time.monotonic() + timeout
        while _postmaster_status(folder / DATA) != "ready":
            if process.poll() is not None:
                raise PostgresServerError(
                    f"pytest-memdb: the throwaway PostgreSQL server in {folder} exited at start-up "
                    f"(status {process.returncode}); the end of its log:\n{_log_tail(log)}"
                )
            if time.monotonic() >= deadline:
                raise PostgresServerError(
                    f"pytest-memdb: the throwaway PostgreSQL server in {folder} did not accept "
                    f"connections within {timeout:g} s; the end of its log:\n{_log_tail(log)}"
                )
            time.sleep(0.01)
    except BaseException:
        if process is not None and process.poll() is None:
            watchdog.kill_tree(process.pid)
            process.wait(10.0)
        watchdog.clean_up(folder)
        os.write(pipe, DONE)
        os.close(pipe)
        watchdog_process.wait(10.0)
        raise
    server = PostgresServer(
        folder=folder,
        port=port,
        host="127.0.0.1" if tcp else None,
        binaries=binaries,
        process=process,
        watchdog_process=watchdog_process,
        watchdog_pipe=pipe,
        run_as=None if user is None else user.name,
        startup_seconds=time.monotonic() - began,
    )
    if stop_at_exit:
        server.stop_at_exit()
    return server
