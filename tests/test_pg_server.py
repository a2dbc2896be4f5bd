"""The throwaway PostgreSQL server: found, started, reached by both drivers, never left behind.

Real servers and real processes: the crash tests start the server from a child Python
process and kill it (SIGKILL, or SIGINT to its process group as a terminal's Ctrl-C
does), then wait (bounded) for every process of that server to be gone and its folder
removed. Processes are identified by pid *and* start time, so a recycled pid is not
mistaken for a survivor.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine

from pytest_memdb.errors import MemdbError
from pytest_memdb.postgresql import server as pgserver
from pytest_memdb.postgresql import watchdog
from pytest_memdb.postgresql.server import (
    PostgresNotFound,
    PostgresServerError,
    find_binaries,
    owner_record,
    socket_url,
    start_server,
    sweep,
)

WAIT = 30.0
"""Seconds to wait for processes to go and folders to be removed (a bound, not a threshold)."""


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except OSError:
        return None


def _tree(pid: int) -> set[tuple[int, str | None]]:
    """The postmaster ``pid`` and its children (its backends), each with its start time."""
    pids = [pid, *watchdog.children(pid)]
    return {(p, _start_time(p)) for p in pids}


def _survivors(tree: set[tuple[int, str | None]]) -> set[int]:
    """The processes of ``tree`` still there (the same process: same pid and start time)."""
    return {pid for pid, started in tree if _start_time(pid) == started and watchdog.alive(pid)}


def _wait_until_gone(tree: set[tuple[int, str | None]], folder: Path) -> None:
    deadline = time.monotonic() + WAIT
    while (_survivors(tree) or folder.exists()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _survivors(tree), f"postgres processes left: {_survivors(tree)}"
    assert not folder.exists(), f"server folder left: {list(folder.rglob('*'))[:10]}"


@pytest.fixture
def base() -> Iterator[Path]:
    """A base folder of its own (under the temp folder, reachable by the server's user)."""
    folder = Path(tempfile.mkdtemp(prefix="memdb-pgtest-"))
    yield folder
    for left in folder.glob("pg-*"):  # a failed test's server, ours or a child's
        if not left.is_symlink():
            watchdog.clean_up(left)
    shutil.rmtree(folder, ignore_errors=True)


CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    import psycopg
    from pytest_memdb.postgresql.server import start_server

    server = start_server(base=sys.argv[1])
    forked = 0
    if "fork" in sys.argv:  # a forked child outliving its parent (multiprocessing's default)
        forked = os.fork()
        if forked == 0:
            time.sleep(120)
            os._exit(0)
    try:  # printed inside: a SIGINT right after the line lands in the except
        print(json.dumps({"pid": server.pid, "watchdog": server.watchdog_pid, "forked": forked,
                          "folder": str(server.folder), "dsn": server.dsn()}), flush=True)
        time.sleep(120)
    except KeyboardInterrupt:
        # Ctrl-C reached pytest: the server must still serve while the run unwinds.
        try:
            with psycopg.connect(server.dsn(), connect_timeout=5) as conn:
                conn.execute("select 1")
            print("alive", flush=True)
        except psycopg.Error as error:
            print("dead", error, flush=True)
        raise
    """
)


def _child(
    base: Path, *, new_session: bool = False, fork: bool = False
) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """A Python process that starts a server and sleeps; what it printed about the server."""
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(base), *(["fork"] if fork else [])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tempfile.gettempdir(),
        start_new_session=new_session,
    )
    assert process.stdout is not None
    line = process.stdout.readline()  # bounded: the child's start_server has its timeouts
    if not line:
        process.wait(WAIT)
        pytest.fail(f"the child did not start a server: {process.communicate()[1]}")
    info: dict[str, str] = json.loads(line)
    return process, info


def _query(dsn: str) -> object:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        row = conn.execute("select 1").fetchone()
        return None if row is None else row[0]


def test_start_connect_with_both_drivers_and_stop(base):
    server = start_server(base=base)
    try:
        server_uid = int(Path(f"/proc/{server.pid}/status").read_text().split("Uid:")[1].split()[1])
        if os.geteuid() == 0:  # initdb and postgres refuse root: they ran as another user
            assert server.run_as in {"postgres", "nobody"}
            assert server_uid == pwd.getpwnam(server.run_as).pw_uid != 0
        else:
            assert server.run_as is None
            assert server_uid == os.geteuid()
        assert (server.socket_dir / f".s.PGSQL.{server.port}").exists()
        sync_engine = create_engine(server.url(driver="psycopg"))
        with sync_engine.connect() as conn:
            row = conn.execute(
                text("select current_user, current_setting('port'), current_setting('fsync')")
            ).one()
        sync_engine.dispose()
        assert tuple(row) == ("postgres", str(server.port), "off")

        async def through_async(driver: str) -> tuple[object, ...]:
            engine = create_async_engine(server.url("template1", driver=driver))
            async with engine.connect() as conn:
                result = await conn.execute(
                    text("select current_database(), current_setting('listen_addresses')")
                )
                one = tuple(result.one())
            await engine.dispose()
            return one

        assert server.url("template1", "psycopg") == socket_url(
            str(server.socket_dir), server.port, "template1", "psycopg"
        )
        assert asyncio.run(through_async("asyncpg")) == ("template1", "")
        assert asyncio.run(through_async("psycopg")) == ("template1", "")
        with psycopg.connect(server.dsn()) as conn:  # a backend, so the tree has one
            tree = _tree(server.pid)
            assert len(tree) > 2
    finally:
        server.stop()
    assert not _survivors(tree)
    assert not server.folder.exists()
    assert server._watchdog.returncode == 0  # told to go, it went
    server.stop()  # idempotent


@pytest.mark.slow
def test_a_hung_server_is_still_stopped(base):
    server = start_server(base=base)
    with psycopg.connect(server.dsn()):
        tree = _tree(server.pid)
        os.kill(server.pid, signal.SIGSTOP)  # deaf to fast and immediate shutdown
        server.stop(timeout=1.0)
    assert not _survivors(tree)
    assert not server.folder.exists()


@pytest.mark.slow
def test_tcp_is_off_unless_asked(base):
    with start_server(base=base, tcp=True) as server:
        assert server.url(driver="psycopg", tcp=True).startswith(
            f"postgresql+psycopg://postgres@127.0.0.1:{server.port}/"
        )
        engine = create_engine(server.url(driver="psycopg", tcp=True))
        with engine.connect() as conn:
            assert conn.execute(text("select current_setting('listen_addresses')")).scalar() == (
                "127.0.0.1"
            )
        engine.dispose()
    with start_server(base=base) as server:
        with pytest.raises(ValueError, match="tcp=True"):
            server.url(tcp=True)
        with pytest.raises(ValueError, match="asyncpg, psycopg"):
            server.url(driver="psycopg2")
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", server.port)) != 0


def test_owner_killed_leaves_no_postgres_process(base):
    child, info = _child(base)
    tree = _tree(int(info["pid"]))
    assert _query(info["dsn"]) == 1
    the_watchdog = int(info["watchdog"])
    tree.add((the_watchdog, _start_time(the_watchdog)))  # it goes too, once done
    child.kill()
    child.wait(WAIT)
    _wait_until_gone(tree, Path(info["folder"]))


@pytest.mark.slow
def test_owner_killed_while_a_forked_child_lives(base):
    child, info = _child(base, fork=True)
    try:
        tree = _tree(int(info["pid"]))
        child.kill()
        child.wait(WAIT)
        _wait_until_gone(tree, Path(info["folder"]))
        assert watchdog.alive(int(info["forked"]))  # still there: the server did not wait
    finally:
        os.kill(int(info["forked"]), signal.SIGKILL)


@pytest.mark.slow
def test_ctrl_c_to_the_owners_group_does_not_reach_the_server(base):
    child, info = _child(base, new_session=True)  # its own group, as a terminal's job
    tree = _tree(int(info["pid"]))
    os.killpg(child.pid, signal.SIGINT)
    out, err = child.communicate(timeout=WAIT)
    assert "KeyboardInterrupt" in err
    assert out.strip() == "alive"  # the server kept serving while the owner unwound
    _wait_until_gone(tree, Path(info["folder"]))  # and went when the owner was gone


@pytest.mark.slow
def test_a_crashed_runs_server_is_swept_at_the_next_start_and_live_ones_kept(base, tmp_path):
    # A crashed run whose watchdog was killed too: its server still runs, its folder stays.
    child, info = _child(base)
    os.kill(int(info["watchdog"]), signal.SIGKILL)
    child.kill()
    child.wait(WAIT)
    stale = Path(info["folder"])
    tree = _tree(int(info["pid"]))
    assert _query(info["dsn"]) == 1
    assert stale.exists()

    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_owner = {**owner_record(), "pid": int(finished.stdout)}
    recycled = {**owner_record(), "started": "not this process"}  # our pid, another start
    for name, record in (
        ("pg-alive", owner_record()),
        ("pg-deadowner", dead_owner),
        ("pg-recycled", recycled),
    ):
        (base / name).mkdir()
        (base / name / "owner.json").write_text(json.dumps(record))
    outside = tmp_path / "pg-outside"
    outside.mkdir()
    (outside / "owner.json").write_text(json.dumps(dead_owner))
    (base / "pg-link").symlink_to(outside)
    (base / "not-ours").mkdir()
    (base / "not-ours" / "owner.json").write_text(json.dumps(dead_owner))
    # A process named postgres that the folders kept name as their postmaster: a sweep
    # that wrongly took one of them would signal it (SIGINT ends a sleep).
    fake = tmp_path / "postgres"
    shutil.copy(shutil.which("sleep"), fake)
    bystander = subprocess.Popen([str(fake), "120"])
    try:
        for kept in (outside, base / "not-ours", base / "pg-alive"):
            (kept / "data").mkdir()
            (kept / "data" / "postmaster.pid").write_text(f"{bystander.pid}\n")

        with start_server(base=base) as server:
            _wait_until_gone(tree, stale)  # start_server swept it before starting
            assert sorted(p.name for p in base.iterdir() if p != server.folder) == [
                "not-ours",
                "pg-alive",
                "pg-link",
            ]
        assert (outside / "owner.json").exists()
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait(WAIT)


def test_unowned_folder_kept_while_young(base):
    young = base / "pg-young"
    young.mkdir()
    assert sweep(base) == []
    old = time.time() - 2 * pgserver.UNOWNED_GRACE
    os.utime(young, (old, old))
    assert sweep(base) == [young]
    assert not young.exists()


def test_root_without_an_unprivileged_user_is_told_what_to_do(base):
    if os.geteuid() == 0:
        with pytest.raises(PostgresServerError, match="refuse to run as root") as caught:
            start_server(base=base, run_as="no-such-user-memdb")
        assert "useradd" in str(caught.value)
        assert "URL of a running server" in str(caught.value)
        assert list(base.iterdir()) == []
    else:  # not root: the server runs as this user, whatever run_as says
        assert pgserver._run_as("no-such-user-memdb") is None


def test_missing_binaries_in_the_folder_given(tmp_path, base):
    empty = tmp_path / "bin"
    empty.mkdir()
    with pytest.raises(PostgresNotFound) as caught:
        start_server(bindir=empty, base=base)
    message = str(caught.value)
    assert isinstance(caught.value, MemdbError)
    assert str(empty) in message
    for needed in ("initdb", "pg_ctl", "postgres", "apt-get install postgresql", "URL"):
        assert needed in message
    assert list(base.iterdir()) == []  # nothing started, nothing made


def test_missing_binaries_lists_every_place_looked(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(pgserver, "USUAL_FOLDERS", [(str(tmp_path / "debian/*/bin"), "Debian")])
    with pytest.raises(PostgresNotFound) as caught:
        find_binaries(path=str(empty))
    message = str(caught.value)
    assert f"{empty} (PATH)" in message
    assert f"{tmp_path / 'debian/*/bin'} (Debian)" in message
    assert "give the URL of a running server" in message


def test_found_beyond_path(tmp_path):
    """Without them on PATH, ``pg_config --bindir`` or the distribution's folder finds them."""
    found = find_binaries(path=str(tmp_path))
    assert (found.bindir / "initdb").exists()
    assert "PostgreSQL" in found.version()


def test_newest_version_first(tmp_path, monkeypatch):
    for version in ("9.6", "15", "13"):
        folder = tmp_path / "postgresql" / version / "bin"
        folder.mkdir(parents=True)
        for name in ("initdb", "pg_ctl", "postgres"):
            (folder / name).write_text("#!/bin/sh\n")
            (folder / name).chmod(0o755)
    monkeypatch.setattr(pgserver, "USUAL_FOLDERS", [(str(tmp_path / "postgresql/*/bin"), "x")])
    assert find_binaries(path=str(tmp_path / "none")).bindir == tmp_path / "postgresql/15/bin"


def test_start_failure_shows_the_log_and_leaves_nothing(base):
    with pytest.raises(PostgresServerError, match="max_connections") as caught:
        start_server(base=base, settings={"max_connections": "lots"})
    assert "exited at start-up" in str(caught.value)
    assert list(base.iterdir()) == []


def test_a_folder_the_server_user_cannot_reach_is_named(base):
    base.chmod(0o711)
    locked = base / "locked"
    (locked / "inner").mkdir(parents=True)
    locked.chmod(0o700)
    other = os.geteuid() + 12345
    assert pgserver._unreachable_parent(locked / "inner", other, other) == locked
    locked.chmod(0o711)
    assert pgserver._unreachable_parent(locked / "inner", other, other) is None
