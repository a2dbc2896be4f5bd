"""Templates and clones on PostgreSQL, by PostgreSQL's own means.

A template is a database the plugin builds once (``<prefix>_tpl_<n>``) through a sync
SQLAlchemy engine, then marks ``IS_TEMPLATE true`` and ``ALLOW_CONNECTIONS false``: from then
on nobody can connect to it, so no session can block ``CREATE DATABASE ... TEMPLATE``
(which fails while anyone is connected to the source). The sessions still connected
when it is sealed are waited for, a bounded time; ours (the build engine's, known by
their ``application_name``) are terminated, anyone else's are named in the error.

A working database is a clone, ``CREATE DATABASE <prefix>_w_<n> TEMPLATE <tpl> STRATEGY
FILE_COPY``. Measured on PostgreSQL 15.18 here (2 cores, ``fsync=off``; medians of 7-9;
``benchmarks/bench_pg_core.py``), on a quiet machine and with a CI run going (load 4-5):

==================  ==============  ==============  ==============  ==============
template            ``WAL_LOG``     ``FILE_COPY``   ``WAL_LOG``     ``FILE_COPY``
                    quiet           quiet           loaded          loaded
==================  ==============  ==============  ==============  ==============
7.6 MB (one table)  27.9 ms         19.1 ms         150-340 ms      127-336 ms
64 MB               97.3 ms         48.5 ms         248-396 ms      199-336 ms
==================  ==============  ==============  ==============  ==============

``FILE_COPY`` (PostgreSQL < 15's only strategy) copies the files after a checkpoint,
which is cheap with ``fsync=off``; ``WAL_LOG`` (15's default) writes every block to the
WAL. ``FILE_COPY`` was as fast or faster in every run. ``DROP DATABASE ... WITH (FORCE)``
(PostgreSQL 13+) takes 8-28 ms. On PostgreSQL < 15 the ``STRATEGY`` clause is left out (the
copy is ``FILE_COPY`` there anyway).

:class:`ClonePool` hides that cost: a background thread keeps the next clone ready, so
:meth:`ClonePool.take` returns at once (0.01 ms) unless tests take faster than clones are
made, and :meth:`ClonePool.give_back` drops in the background too (after a clone when one
is wanted). It counts the takes that waited. Measured with tests of 150 ms: on a quiet
machine 3 of 15 takes of a small template waited (the first, then the drops' turns); with
the CI run going, clones took longer than the tests and 9-14 of 15 waited, 55-145 ms
instead of a whole clone's 127-336 ms.

Every database the plugin makes carries a comment, ``pytest-memdb:<run>:<host>:<pid>:<start>``
(:func:`mark`). :func:`sweep` drops the databases of runs whose process is gone (same
host, the pid not alive or alive with another start time), and never a database without
such a comment: a crashed run's databases go at the next start, anyone else's stay.
A database made on another host is left alone (its process cannot be checked from here).
The comment is set right after ``CREATE DATABASE`` (it cannot share a transaction with it):
a run killed between the two leaves one unmarked database, which :func:`sweep` keeps.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.pool import NullPool

MARK = "pytest-memdb"
APPLICATION = "pytest-memdb"
"""The ``application_name`` of the plugin's own sessions (a template's build included)."""
SEAL_WAIT_S = 10.0
"""How long sealing a template waits for other sessions to leave it."""
STATEMENT_TIMEOUT_S = 30.0
"""The bound on any one of the plugin's admin statements (a ``CREATE DATABASE`` of a large
template included); ``lock_timeout`` is the same."""
TAKE_WAIT_S = 60.0
"""How long :meth:`ClonePool.take` waits for a clone being made."""


class CloneError(RuntimeError):
    """A template or clone could not be made or dropped; the message says why and what to do."""


def sync_url(url: str | URL) -> URL:
    """``url`` with the sync psycopg driver (admin statements and template builds)."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql+psycopg")


def quote(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _process_start(pid: int) -> str:
    """The start time of ``pid`` in clock ticks since boot (Linux), or ``""`` elsewhere: with
    it, a pid reused by another process does not pass for a live run."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return ""


def mark(run_id: str) -> str:
    """The comment the plugin puts on every database it makes in run ``run_id``."""
    pid = os.getpid()
    return f"{MARK}:{run_id}:{socket.gethostname()}:{pid}:{_process_start(pid)}"


@dataclass(frozen=True)
class Mark:
    """A parsed :func:`mark`."""

    run_id: str
    host: str
    pid: int
    start: str

    @classmethod
    def parse(cls, comment: str | None) -> Mark | None:
        """The mark in ``comment``, or None when it is not one of ours."""
        if not comment:
            return None
        parts = comment.split(":")
        if len(parts) != 5 or parts[0] != MARK or not parts[3].isdigit():
            return None
        return cls(parts[1], parts[2], int(parts[3]), parts[4])

    def alive(self) -> bool:
        """Whether the run that made the database may still be running (another host's
        runs always count as alive: nothing here can tell)."""
        if self.host != socket.gethostname():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # alive, another user's
        return not self.start or _process_start(self.pid) in ("", self.start)


def admin_engine(url: str | URL) -> Engine:
    """An autocommit engine on ``url``'s maintenance database (``CREATE``/``DROP DATABASE``
    cannot run in a transaction), its statements bounded."""
    timeout_ms = int(STATEMENT_TIMEOUT_S * 1000)
    return create_engine(
        sync_url(url),
        isolation_level="AUTOCOMMIT",
        poolclass=NullPool,
        connect_args={
            "application_name": APPLICATION,
            "options": f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms}",
            "connect_timeout": 10,
        },
    )


def _version(conn: Connection) -> int:
    return int(conn.exec_driver_sql("SHOW server_version_num").scalar_one())


def _drop(conn: Connection, name: str) -> None:
    """Drop ``name`` (a template too), ending its sessions (``WITH (FORCE)``, PostgreSQL 13+)."""
    conn.exec_driver_sql(f"ALTER DATABASE {quote(name)} IS_TEMPLATE false")
    conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {quote(name)} WITH (FORCE)")


def _sessions(conn: Connection, name: str) -> list[tuple[int, str, str, str, str]]:
    rows = conn.execute(
        text(
            "SELECT pid, coalesce(usename, ''), coalesce(application_name, ''),"
            " coalesce(client_addr::text, 'local'), coalesce(state, '')"
            " FROM pg_stat_activity WHERE datname = :name AND pid <> pg_backend_pid()"
        ),
        {"name": name},
    )
    return [tuple(row) for row in rows]


@dataclass(frozen=True)
class Template:
    """A sealed template database."""

    name: str
    parent: str | None = None


@dataclass
class Cluster:
    """The plugin's databases on one server in one run (one xdist worker).

    ``url`` is any SQLAlchemy URL to the server (its database is the maintenance one the
    admin statements run in, ``postgres`` usually); ``prefix`` is unique per run and worker
    (``memdb_<run>_gw0``); ``run_id`` goes into every database's :func:`mark`.
    """

    url: str | URL
    prefix: str
    run_id: str
    made: list[str] = field(default_factory=list)
    """Every database this run made and has not dropped, oldest first."""

    def __post_init__(self) -> None:
        self.admin = admin_engine(self.url)
        self._names = itertools.count(1)
        self._lock = threading.Lock()
        with self.admin.connect() as conn:
            self.server_version = _version(conn)

    def url_for(self, name: str, *, driver: str | None = None) -> URL:
        """The URL of database ``name``, with the driver of ``url`` (or ``driver``)."""
        base = make_url(self.url)
        if driver is not None:
            base = base.set(drivername=driver)
        return base.set(database=name)

    def new_name(self, kind: str) -> str:
        """A fresh database name, ``<prefix>_<kind>_<n>``."""
        with self._lock:
            return f"{self.prefix}_{kind}_{next(self._names)}"

    def create(self, name: str, *, template: str | None, conn: Connection | None = None) -> None:
        """``CREATE DATABASE name [TEMPLATE template]``, marked as this run's."""
        clause = ""
        if template is not None:
            clause = f" TEMPLATE {quote(template)}"
            if self.server_version >= 150000:
                clause += " STRATEGY FILE_COPY"  # see the module docstring
        with contextlib.ExitStack() as stack:
            if conn is None:
                conn = stack.enter_context(self.admin.connect())
            try:
                conn.exec_driver_sql(f"CREATE DATABASE {quote(name)}{clause}")
            except Exception as error:
                if template is not None and "being accessed by other users" in str(error):
                    raise CloneError(self._busy(conn, template)) from error
                raise
            with self._lock:
                self.made.append(name)
            conn.exec_driver_sql(f"COMMENT ON DATABASE {quote(name)} IS '{mark(self.run_id)}'")

    def drop(self, name: str, *, conn: Connection | None = None) -> None:
        """Drop ``name``, one of this run's databases."""
        with contextlib.ExitStack() as stack:
            if conn is None:
                conn = stack.enter_context(self.admin.connect())
            _drop(conn, name)
        with self._lock, contextlib.suppress(ValueError):
            self.made.remove(name)

    def rename(self, name: str, to: str, *, conn: Connection) -> None:
        """``ALTER DATABASE name RENAME TO to`` (one of this run's; nobody connected to it)."""
        conn.exec_driver_sql(f"ALTER DATABASE {quote(name)} RENAME TO {quote(to)}")
        with self._lock:
            self.made[self.made.index(name)] = to

    def end_sessions(self, name: str, *, conn: Connection) -> None:
        """End every session on ``name`` but this one, waiting (up to 1 s each) until they
        are gone: a rename or a clone fails while anyone is connected."""
        conn.execute(
            text(
                "SELECT pg_terminate_backend(pid, 1000) FROM pg_stat_activity"
                " WHERE datname = :name AND pid <> pg_backend_pid()"
            ),
            {"name": name},
        )

    def create_template(
        self,
        build: Callable[[Engine], None],
        *,
        parent: Template | None = None,
        seal_wait_s: float = SEAL_WAIT_S,
    ) -> Template:
        """Build a template: a new database (a clone of ``parent`` for a layer), ``build``
        run on a sync engine to it, then sealed (:meth:`seal`)."""
        name = self.new_name("tpl")
        self.create(name, template=parent.name if parent else None)
        engine = create_engine(
            self.url_for(name, driver="postgresql+psycopg"),
            poolclass=NullPool,
            connect_args={"application_name": APPLICATION},
        )
        try:
            build(engine)
        finally:
            engine.dispose()
        self.seal(name, wait_s=seal_wait_s)
        return Template(name, parent.name if parent else None)

    def seal(self, name: str, *, wait_s: float = SEAL_WAIT_S) -> None:
        """Make ``name`` a template nobody can connect to, once every session has left it:
        the plugin's own are terminated; anyone else's are waited for up to ``wait_s``, then
        named in a :class:`CloneError`."""
        with self.admin.connect() as conn:
            conn.exec_driver_sql(
                f"ALTER DATABASE {quote(name)} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false"
            )
            deadline = time.monotonic() + wait_s
            while sessions := _sessions(conn, name):
                ours = [s[0] for s in sessions if s[2] == APPLICATION]
                for pid in ours:
                    conn.execute(text("SELECT pg_terminate_backend(:pid, 1000)"), {"pid": pid})
                if not ours and time.monotonic() > deadline:
                    raise CloneError(self._busy(conn, name, waited=wait_s))
                time.sleep(0.02)

    def _busy(self, conn: Connection, name: str, *, waited: float | None = None) -> str:
        shown = "; ".join(
            f"pid {pid} (user {user!r}, application {app!r}, from {addr}, {state})"
            for pid, user, app, addr, state in _sessions(conn, name)
        )
        after = f" after {waited:g} s" if waited is not None else ""
        return (
            f"pytest-memdb: the template database {name!r} still has sessions connected"
            f"{after}: {shown or 'none now (they left meanwhile)'}. PostgreSQL cannot clone a"
            " database anyone is connected to: close those connections (an engine the"
            " template's build made and did not dispose, a psql or an IDE), or end them with"
            " SELECT pg_terminate_backend(pid)."
        )

    def close(self) -> list[str]:
        """Drop every database this run made, clones first, then templates, newest first.
        Returns their names."""
        with self._lock:
            names = list(reversed(self.made))
        with self.admin.connect() as conn:
            for name in names:
                _drop(conn, name)
        with self._lock:
            self.made.clear()
        self.admin.dispose()
        return names


def role_that_cannot_create(url: str | URL) -> str | None:
    """The role of ``url`` when it may not ``CREATE DATABASE`` (the plugin makes one per
    template and per test), else None: checked at start-up, so such a role is one usage
    error naming the option rather than a psycopg traceback for every test."""
    engine = admin_engine(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT current_user, rolcreatedb OR rolsuper FROM pg_roles"
                    " WHERE rolname = current_user"
                )
            ).one()
    finally:
        engine.dispose()
    return None if row[1] else str(row[0])


def sweep(url: str | URL) -> list[str]:
    """Drop the databases the plugin made in runs that are gone (see :class:`Mark`); never a
    database without the plugin's mark. Returns the names dropped."""
    engine = admin_engine(url)
    dropped = []
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database"
                    " WHERE shobj_description(oid, 'pg_database') LIKE :marked"
                ),
                {"marked": f"{MARK}:%"},
            ).all()
            for name, comment in rows:
                parsed = Mark.parse(comment)
                if parsed is not None and not parsed.alive():
                    _drop(conn, name)
                    dropped.append(name)
    finally:
        engine.dispose()
    return dropped


@dataclass
class PoolStats:
    """What :class:`ClonePool` did."""

    takes: int = 0
    waited: int = 0
    """Takes that found no clone ready and waited for one."""
    wait_s: float = 0.0
    """Their total wait."""
    made: int = 0
    dropped: int = 0


class ClonePool:
    """Clones of one template, the next one kept ready by a background thread.

    ``ready`` clones are kept made ahead (1 covers tests slower than a clone, ~20-50 ms).
    A failure of the background thread is raised by the next :meth:`take`.
    """

    def __init__(self, cluster: Cluster, template: Template, *, ready: int = 1) -> None:
        self.cluster = cluster
        self.template = template
        self.stats = PoolStats()
        self._ready_target = ready
        self._ready: list[str] = []
        self._to_drop: list[str] = []
        self._making = 0
        self._error: BaseException | None = None
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(
            target=self._work, name=f"pytest-memdb-clones-{template.name}", daemon=True
        )
        self._thread.start()

    def take(self, *, timeout_s: float = TAKE_WAIT_S) -> str:
        """The name of a fresh clone, made ahead when it could be."""
        with self._cond:
            self.stats.takes += 1
            if not self._ready:
                self.stats.waited += 1
                start = time.monotonic()
                self._cond.notify_all()
                if not self._cond.wait_for(
                    lambda: self._ready or self._error is not None, timeout_s
                ):
                    raise CloneError(
                        f"pytest-memdb: no clone of {self.template.name!r} was made within"
                        f" {timeout_s:g} s: is the server overloaded, or a lock held on it?"
                    )
                self.stats.wait_s += time.monotonic() - start
            if self._error is not None and not self._ready:
                error, self._error = self._error, None
                raise CloneError(
                    f"pytest-memdb: cloning {self.template.name!r} failed: {error}"
                ) from error
            name = self._ready.pop(0)
            self._cond.notify_all()
            return name

    def renew(self, name: str, *, timeout_s: float = TAKE_WAIT_S) -> None:
        """Make clone ``name`` fresh again under the same name (``memdb.reset()``): a clone
        made ahead is renamed into its place, the old one renamed aside and dropped in the
        background. Its sessions are ended first. Should one come back in between (a thread
        a test left running), the old one is dropped there and then (``WITH (FORCE)``).

        Measured with a clone ready (``benchmarks/bench_pg_reset.py``, load 3): 16-19 ms,
        against 170-407 ms for the synchronous drop and clone it replaced. Without one ready
        it waits for the clone being made, as a copy test's start does."""
        fresh = self.take(timeout_s=timeout_s)
        aside = self.cluster.new_name("old")
        with self.cluster.admin.connect() as conn:
            self.cluster.end_sessions(name, conn=conn)
            try:
                self.cluster.rename(name, aside, conn=conn)
            except Exception:  # someone connected again meanwhile
                self.cluster.drop(name, conn=conn)
            else:
                self.give_back(aside)
            self.cluster.rename(fresh, name, conn=conn)

    def wait_ready(self, *, timeout_s: float = TAKE_WAIT_S) -> bool:
        """Wait until a clone is ready (or the background thread failed); whether one is."""
        with self._cond:
            self._cond.wait_for(lambda: self._ready or self._error is not None, timeout_s)
            return bool(self._ready)

    def give_back(self, name: str) -> None:
        """Drop clone ``name``, in the background."""
        with self._cond:
            self._to_drop.append(name)
            self._cond.notify_all()

    def close(self, *, timeout_s: float = STATEMENT_TIMEOUT_S) -> None:
        """Stop the thread; drop the clones made ahead and those given back."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout_s)
        with self._cond:
            leftover, self._ready, self._to_drop = self._ready + self._to_drop, [], []
        if leftover:
            with self.cluster.admin.connect() as conn:
                for name in leftover:
                    self.cluster.drop(name, conn=conn)

    def _next_job(self) -> tuple[str, str] | None:
        with self._cond:
            while True:
                if self._closed:
                    return None
                wanted = self._error is None and len(self._ready) < self._ready_target
                if wanted and (not self._ready or not self._to_drop):
                    return ("make", self.cluster.new_name("w"))
                if self._to_drop:
                    return ("drop", self._to_drop.pop(0))
                self._cond.wait()

    def _work(self) -> None:
        for job in iter(self._next_job, None):
            kind, name = job
            try:
                with self.cluster.admin.connect() as conn:
                    if kind == "make":
                        self.cluster.create(name, template=self.template.name, conn=conn)
                    else:
                        self.cluster.drop(name, conn=conn)
            except Exception as error:
                with self._cond:
                    self._error = error
                    self._cond.notify_all()
                continue
            with self._cond:
                if kind == "make":
                    self._ready.append(name)
                    self.stats.made += 1
                else:
                    self.stats.dropped += 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def clone(self) -> Iterator[str]:
        """A clone for the block, given back after it."""
        name = self.take()
        try:
            yield name
        finally:
            self.give_back(name)
