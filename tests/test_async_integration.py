"""The fixtures under every async set-up a real suite uses, run as inner pytest sessions.

Each inner run is strict about what usually goes wrong when databases, engines and
event loops meet: ``-W error::ResourceWarning -W error::pytest.PytestUnraisableExceptionWarning``,
and no "attached to a different loop", "Event loop is closed", "ResourceWarning" or
"unraisable" anywhere in its output. The inner project is a small FastAPI app with a
``User`` model on the fixture file's ``user`` table (see ``APP``).
"""

from __future__ import annotations

import sqlite3
import threading
import time

# Imported here so that pytester's in-process runs (which drop every module an inner
# run imports) do not import them again for each inner run.
import aiosqlite
import anyio
import fastapi
import fastapi.testclient
import httpx
import pytest
import sqlalchemy.ext.asyncio

from tests.helpers import write_ini

WARM_MODULES = (aiosqlite, anyio, fastapi, fastapi.testclient, httpx, sqlalchemy.ext.asyncio)

pytestmark = pytest.mark.filterwarnings(
    "error::ResourceWarning", "error::pytest.PytestUnraisableExceptionWarning"
)

FORBIDDEN = (
    "attached to a different loop",
    "Event loop is closed",
    "ResourceWarning",
    "unraisable",
    "was never awaited",
    "Task was destroyed",
)

APP = """
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, FastAPI
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "user"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    email: Mapped[str | None]


class UserIn(BaseModel):
    name: str
    email: str


async def get_session() -> AsyncIterator[AsyncSession]:
    raise RuntimeError("the production database is not reachable from tests")
    yield


SessionDep = Annotated[AsyncSession, Depends(get_session)]
app = FastAPI()


@app.get("/users")
async def list_users(session: SessionDep) -> list[dict]:
    users = (await session.scalars(select(User).order_by(User.id))).all()
    return [{"id": u.id, "name": u.name, "email": u.email} for u in users]


@app.post("/users", status_code=201)
async def create_user(body: UserIn, session: SessionDep) -> dict:
    user = User(name=body.name, email=body.email)
    session.add(user)
    await session.commit()
    return {"id": user.id, "name": user.name, "email": user.email}
"""

CONFTEST = """
import sqlite3

import pytest

from myapp import app, get_session

SEEN = []


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def app_on_memdb(memdb_sessionmaker):
    async def override_get_session():
        async with memdb_sessionmaker() as session:
            yield session

    app.dependency_overrides[get_session] = override_get_session
    yield app
    app.dependency_overrides.clear()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    handle = item.funcargs.get("memdb")
    if handle is not None:
        SEEN.append((handle.name, handle.isolation))
    return (yield)


def tables(name):
    probe = sqlite3.connect(f"file:/{name}?vfs=memdb", uri=True)
    try:
        rows = probe.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return sorted(row[0] for row in rows)
    finally:
        probe.close()


def pytest_sessionfinish(session):
    # Copy-mode tests take turns on one copy per file, under one name, restored in place
    # between tests (one name for N tests shows that); it lives, like the rollback
    # template and the session-mode database, until the end of the run, and the outer
    # test checks that everything is freed after it.
    copy_tests = sum(1 for _, isolation in SEEN if isolation == "copy")
    copies = sorted({name for name, isolation in SEEN if isolation == "copy"})
    shared = sorted({name for name, isolation in SEEN if isolation != "copy"})
    copies_alive = [name for name in copies if tables(name) == ["user"]]
    alive = [name for name in shared if tables(name) == ["user"]]
    (session.config.rootpath / "memdb_names.txt").write_text("\\n".join(copies + shared))
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    reporter.write_line(
        f"MEMDB copies alive: {len(copies_alive)}/{len(copies)} over {copy_tests} tests"
    )
    reporter.write_line(f"MEMDB shared alive: {len(alive)}/{len(shared)}")
"""

MODES_TESTS = """
import pytest
import pytest_asyncio
from sqlalchemy import func, select, text

from myapp import User


@pytest_asyncio.fixture
async def user_count(memdb_session):
    return await memdb_session.scalar(select(func.count()).select_from(User))


@pytest.mark.asyncio
async def test_write_then_read(memdb_session, user_count):
    assert user_count == 3
    memdb_session.add(User(name="zoe", email="zoe@example.com"))
    await memdb_session.commit()
    names = list((await memdb_session.scalars(select(User.name).order_by(User.id))).all())
    print("MODES write names=" + ",".join(names))
    assert names == ["ada", "brian", "grace", "zoe"]


@pytest.mark.asyncio
async def test_next_test_gets_a_fresh_copy(memdb_engine):
    async with memdb_engine.connect() as conn:
        count = await conn.scalar(text("SELECT count(*) FROM user"))
    print(f"MODES fresh count={count}")
    assert count == 3


@pytest.mark.asyncio
async def test_sessionmaker(memdb_sessionmaker):
    async with memdb_sessionmaker() as session:
        user = await session.get(User, 2)
    print(f"MODES sessionmaker got={user.name}")
    assert user.email == "brian@example.com"
"""

LOOPS_TESTS = """
import asyncio

import pytest
import pytest_asyncio
from sqlalchemy import select, text

from myapp import User

BASE = ["ada", "brian", "grace"]
WRITERS = []
LOOPS = {}


async def names(session):
    return list((await session.scalars(select(User.name).order_by(User.id))).all())


def check_before(memdb, before):
    if memdb.isolation == "session":
        assert before[:3] == BASE and set(WRITERS) <= set(before), before
    else:
        assert before == BASE, before


async def session_write(memdb, session, who):
    LOOPS[who] = asyncio.get_running_loop()
    before = await names(session)
    check_before(memdb, before)
    session.add(User(name=who, email=f"{who}@example.com"))
    await session.commit()
    WRITERS.append(who)
    after = await names(session)
    assert after == [*before, who], after
    print(f"LOOPS {who} isolation={memdb.isolation} rows={len(before)}->{len(after)}")


async def engine_write(memdb, engine, who):
    LOOPS[who] = asyncio.get_running_loop()
    query = text("SELECT name FROM user ORDER BY id")
    async with engine.begin() as conn:
        before = list((await conn.scalars(query)).all())
        check_before(memdb, before)
        await conn.execute(
            text("INSERT INTO user (name, email) VALUES (:n, :e)"),
            {"n": who, "e": f"{who}@example.com"},
        )
    WRITERS.append(who)
    async with engine.connect() as conn:
        after = list((await conn.scalars(query)).all())
    assert after == [*before, who], after
    print(f"LOOPS {who} isolation={memdb.isolation} rows={len(before)}->{len(after)}")


@pytest_asyncio.fixture(loop_scope="module")
async def module_loop_session(memdb_sessionmaker):
    async with memdb_sessionmaker() as session:
        await names(session)  # the session's first I/O runs on the module's loop
        yield session


async def test_default_loop_session(memdb, memdb_session):
    await session_write(memdb, memdb_session, "default1")


@pytest.mark.asyncio(loop_scope="module")
async def test_module_loop_engine(memdb, memdb_engine):
    await engine_write(memdb, memdb_engine, "module1")


@pytest.mark.asyncio(loop_scope="session")
async def test_session_loop_sessionmaker(memdb, memdb_sessionmaker):
    async with memdb_sessionmaker() as session:
        await session_write(memdb, session, "session1")


@pytest.mark.asyncio(loop_scope="module")
async def test_module_loop_user_fixture(memdb, module_loop_session):
    await session_write(memdb, module_loop_session, "module2")


async def test_default_loop_user_fixture(memdb, module_loop_session):
    await session_write(memdb, module_loop_session, "default2")


@pytest.mark.asyncio(loop_scope="session")
async def test_session_loop_engine(memdb, memdb_engine):
    await engine_write(memdb, memdb_engine, "session2")


@pytest.mark.asyncio(loop_scope="module")
async def test_module_loop_session(memdb, memdb_session):
    await session_write(memdb, memdb_session, "module3")


async def test_default_loop_sessionmaker(memdb, memdb_sessionmaker):
    async with memdb_sessionmaker() as session:
        await session_write(memdb, session, "default3")


def test_loops_match_the_scopes(request):
    default_scope = request.config.getini("asyncio_default_test_loop_scope")
    module = {id(LOOPS[who]) for who in ("module1", "module2", "module3")}
    session = {id(LOOPS[who]) for who in ("session1", "session2")}
    default = {id(LOOPS[who]) for who in ("default1", "default2", "default3")}
    assert len(module) == 1 and len(session) == 1 and module != session
    if default_scope == "session":
        assert default == session
    else:
        assert len(default) == 3 and not default & (module | session)
    print(f"LOOPS ok default_test_loop_scope={default_scope} writers={len(WRITERS)}")
"""

ASGI_TESTS = """
import httpx
import pytest
from sqlalchemy import select

from myapp import User

BASE = ["ada", "brian", "grace"]


async def api_names(client):
    response = await client.get("/users")
    assert response.status_code == 200, response.text
    return [user["name"] for user in response.json()]


def client_for(app):
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_post_then_get(app_on_memdb, memdb_session):
    async with client_for(app_on_memdb) as client:
        assert await api_names(client) == BASE
        response = await client.post("/users", json={"name": "zoe", "email": "zoe@example.com"})
        assert response.status_code == 201, response.text
        assert response.json() == {"id": 4, "name": "zoe", "email": "zoe@example.com"}
        api = await api_names(client)
    seen = list((await memdb_session.scalars(select(User.name).order_by(User.id))).all())
    print("ASGI after post: api=" + ",".join(api) + " db=" + ",".join(seen))
    assert api == seen == [*BASE, "zoe"]


async def test_next_test_sees_three_rows(app_on_memdb):
    async with client_for(app_on_memdb) as client:
        api = await api_names(client)
    print("ASGI next test: api=" + ",".join(api))
    assert api == BASE
"""

TESTCLIENT_TESTS = """
from fastapi.testclient import TestClient
from sqlalchemy import select

from myapp import User

BASE = ["ada", "brian", "grace"]
QUERY = select(User.name).order_by(User.id)


def api_names(client):
    response = client.get("/users")
    assert response.status_code == 200, response.text
    return [user["name"] for user in response.json()]


def add_user(client, name):
    response = client.post("/users", json={"name": name, "email": f"{name}@example.com"})
    assert response.status_code == 201, response.text


def test_sync_test(app_on_memdb, memdb, memdb_sync_session):
    with TestClient(app_on_memdb) as client:
        assert api_names(client) == BASE
        add_user(client, "sync")
        api = api_names(client)
    seen = list(memdb_sync_session.scalars(QUERY))
    print(f"TESTCLIENT {memdb.isolation} sync: api=" + ",".join(api) + " db=" + ",".join(seen))
    assert api == seen == [*BASE, "sync"]


async def test_async_test(app_on_memdb, memdb, memdb_session):
    assert list((await memdb_session.scalars(QUERY)).all()) == BASE
    with TestClient(app_on_memdb) as client:
        add_user(client, "async")
        api = api_names(client)
    seen = list((await memdb_session.scalars(QUERY)).all())
    print(f"TESTCLIENT {memdb.isolation} async: api=" + ",".join(api) + " db=" + ",".join(seen))
    assert api == seen == [*BASE, "async"]


def test_next_test_sees_three_rows(app_on_memdb, memdb, memdb_sync_session):
    with TestClient(app_on_memdb) as client:
        api = api_names(client)
    seen = list(memdb_sync_session.scalars(QUERY))
    print(f"TESTCLIENT {memdb.isolation} next: api=" + ",".join(api) + " db=" + ",".join(seen))
    assert api == seen == BASE
"""

SYNC_TESTS = """
import pytest
from sqlalchemy import select, text

from myapp import User

BASE = ["ada", "brian", "grace"]
QUERY = select(User.name).order_by(User.id)


class Checks:
    def test_1_write(self, memdb, memdb_sync_session):
        session = memdb_sync_session
        writer = f"{memdb.isolation}-writer"
        before = list(session.scalars(QUERY))
        # session isolation keeps what earlier tests of the run wrote
        assert before[:3] == BASE if memdb.isolation == "session" else before == BASE
        session.add(User(name="undone", email=None))
        session.flush()
        assert list(session.scalars(QUERY)) == [*before, "undone"]
        session.rollback()
        assert list(session.scalars(QUERY)) == before
        session.add(User(name=writer, email=None))
        session.execute(text("UPDATE user SET email = 'ADA' WHERE name = 'ada'"))
        session.commit()
        names = list(session.scalars(QUERY))
        assert names == [*before, writer]
        assert session.scalar(select(User.email).where(User.name == "ada")) == "ADA"
        print(f"SYNC {memdb.isolation} write: " + ",".join(names))

    def test_2_next(self, memdb, memdb_sync_session):
        names = list(memdb_sync_session.scalars(QUERY))
        email = memdb_sync_session.scalar(select(User.email).where(User.name == "ada"))
        if memdb.isolation == "session":
            assert names[:3] == BASE and names[-1] == "session-writer" and email == "ADA"
        else:
            assert names == BASE and email == "ada@example.com"
        print(f"SYNC {memdb.isolation} next: " + ",".join(names) + f" ada={email}")


@pytest.mark.memdb(isolation="copy")
class TestCopy(Checks):
    pass


@pytest.mark.memdb(isolation="rollback")
class TestRollback(Checks):
    pass


@pytest.mark.memdb(isolation="session")
class TestSession(Checks):
    pass
"""


def with_isolation(source: str, isolation: str) -> str:
    """An inner test module whose tests all use ``isolation``."""
    header = f'import pytest\n\npytestmark = pytest.mark.memdb(isolation="{isolation}")\n'
    return header + source


def run_inner(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """Run the inner project in-process, strict about leaks and loop mix-ups."""
    result = pytester.runpytest_inprocess(
        "-v",
        "-s",
        "-p",
        "no:cacheprovider",
        "-W",
        "error::ResourceWarning",
        "-W",
        "error::pytest.PytestUnraisableExceptionWarning",
        *args,
    )
    output = "\n".join(result.outlines + result.errlines)
    for text in FORBIDDEN:
        assert text.lower() not in output.lower(), f"{text!r} in the inner run:\n{output}"
    return result


def memdb_tables(name: str) -> list[str]:
    """The tables in the in-memory database ``name`` (a freed one opens empty)."""
    probe = sqlite3.connect(f"file:/{name}?vfs=memdb", uri=True)
    try:
        rows = probe.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return sorted(row[0] for row in rows)
    finally:
        probe.close()


def stop_leaked_aiosqlite_workers(threads: list[threading.Thread]) -> None:
    """End leaked aiosqlite worker threads, so a failing run reports instead of hanging at exit.

    A worker whose connection was never closed waits on its queue forever, and the
    interpreter waits for it at exit. Only used when the test is about to fail.
    """
    for thread in threads:
        args = getattr(thread, "_args", ())
        if getattr(thread, "_target", None) is aiosqlite.core._connection_worker_thread and args:
            args[0].put_nowait((None, lambda: aiosqlite.core._STOP_RUNNING_SENTINEL))


@pytest.fixture
def project(pytester: pytest.Pytester, app_db) -> pytest.Pytester:
    """The inner project: the 3-user fixture file, a FastAPI app and its conftest."""
    pytester.makepyfile(myapp=APP, conftest=CONFTEST)
    return pytester


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_pytest_asyncio_strict_and_auto_mode(project: pytest.Pytester, mode: str) -> None:
    write_ini(project, memdb_file="data/app.sqlite", asyncio_mode=mode)
    project.makepyfile(test_modes=MODES_TESTS)
    result = run_inner(project)
    result.assert_outcomes(passed=3)
    # pytest-asyncio prints the mode as "Mode.STRICT" on Python 3.11+ and "strict" before.
    result.stdout.re_match_lines([rf"(?i)asyncio: mode=(Mode\.)?{mode}, .*"])
    result.stdout.fnmatch_lines(
        [
            "*MODES write names=ada,brian,grace,zoe*",
            "*MODES fresh count=3*",
            "*MODES sessionmaker got=brian*",
            "MEMDB copies alive: 1/1 over 3 tests",
        ]
    )


@pytest.mark.parametrize("default_loop", ["function", "session"])
@pytest.mark.parametrize("isolation", ["copy", "rollback", "session"])
def test_mixed_loop_scopes(project: pytest.Pytester, isolation: str, default_loop: str) -> None:
    write_ini(
        project,
        memdb_file="data/app.sqlite",
        memdb_isolation=isolation,
        asyncio_default_test_loop_scope=default_loop,
    )
    project.makepyfile(test_loops=LOOPS_TESTS)
    result = run_inner(project)
    result.assert_outcomes(passed=9)
    # In session isolation the rows pile up; in the others every test starts from 3.
    grows = isolation == "session"
    lines = [
        f"*LOOPS {who} isolation={isolation} rows={3 + i if grows else 3}->{4 + i if grows else 4}*"
        for i, who in enumerate(
            [
                "default1",
                "module1",
                "session1",
                "module2",
                "default2",
                "session2",
                "module3",
                "default3",
            ]
        )
    ]
    result.stdout.fnmatch_lines(
        [
            f"*asyncio_default_test_loop_scope={default_loop}*",
            *lines,
            f"*LOOPS ok default_test_loop_scope={default_loop} writers=8*",
        ]
    )


@pytest.mark.parametrize("isolation", ["copy", "rollback"])
def test_anyio_marked_tests(project: pytest.Pytester, isolation: str) -> None:
    write_ini(
        project, memdb_file="data/app.sqlite", memdb_isolation=isolation, asyncio_mode="strict"
    )
    project.makepyfile(
        test_anyio="""
        import asyncio

        import anyio
        import pytest
        from sqlalchemy import func, select

        from myapp import User

        pytestmark = pytest.mark.anyio


        async def count(session):
            return await session.scalar(select(func.count()).select_from(User))


        async def test_write(memdb_session):
            assert isinstance(asyncio.get_running_loop(), asyncio.AbstractEventLoop)
            assert await count(memdb_session) == 3
            memdb_session.add(User(name="zoe", email="zoe@example.com"))
            await memdb_session.commit()
            async with anyio.create_task_group() as group:
                group.start_soon(anyio.sleep, 0)
            total = await count(memdb_session)
            print(f"ANYIO write count={total}")
            assert total == 4


        async def test_next(memdb_session):
            total = await count(memdb_session)
            print(f"ANYIO next count={total}")
            assert total == 3
        """
    )
    result = run_inner(project)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "test_anyio.py::test_write ANYIO write count=4",
            "test_anyio.py::test_next ANYIO next count=3",
            "MEMDB copies alive: 1/1 over 2 tests"
            if isolation == "copy"
            else "MEMDB shared alive: 1/1",
        ]
    )


@pytest.mark.parametrize("runner", ["pytest-asyncio", "anyio"])
@pytest.mark.parametrize("isolation", ["copy", "rollback"])
def test_fastapi_through_asgi_transport(
    project: pytest.Pytester, isolation: str, runner: str
) -> None:
    if runner == "anyio":  # FastAPI's documented set-up: anyio marker, no pytest-asyncio marks
        write_ini(
            project, memdb_file="data/app.sqlite", memdb_isolation=isolation, asyncio_mode="strict"
        )
        source = "import pytest\n\npytestmark = pytest.mark.anyio\n" + ASGI_TESTS
    else:
        write_ini(project, memdb_file="data/app.sqlite", memdb_isolation=isolation)
        source = ASGI_TESTS
    project.makepyfile(test_api=source)
    result = run_inner(project)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*test_post_then_get ASGI after post: api=ada,brian,grace,zoe db=ada,brian,grace,zoe*",
            "*test_next_test_sees_three_rows ASGI next test: api=ada,brian,grace",
        ]
    )


@pytest.mark.parametrize("isolation", ["copy", "rollback"])
def test_starlette_test_client(project: pytest.Pytester, isolation: str) -> None:
    write_ini(project, memdb_file="data/app.sqlite", memdb_isolation=isolation)
    project.makepyfile(test_client=TESTCLIENT_TESTS)
    result = run_inner(project)
    result.assert_outcomes(passed=3)
    base = "ada,brian,grace"
    result.stdout.fnmatch_lines(
        [
            f"*TESTCLIENT {isolation} sync: api={base},sync db={base},sync*",
            f"*TESTCLIENT {isolation} async: api={base},async db={base},async*",
            f"*TESTCLIENT {isolation} next: api={base} db={base}*",
        ]
    )


def test_sync_session_reads_and_writes(project: pytest.Pytester) -> None:
    write_ini(project, memdb_file="data/app.sqlite")
    project.makepyfile(test_sync=SYNC_TESTS)
    result = run_inner(project)
    result.assert_outcomes(passed=6)
    base = "ada,brian,grace"
    result.stdout.fnmatch_lines(
        [
            f"*SYNC copy write: {base},copy-writer*",
            f"*SYNC copy next: {base} ada=ada@example.com*",
            f"*SYNC rollback write: {base},rollback-writer*",
            f"*SYNC rollback next: {base} ada=ada@example.com*",
            f"*SYNC session write: {base},session-writer*",
            f"*SYNC session next: {base},session-writer ada=ADA*",
            "MEMDB copies alive: 1/1 over 2 tests",
            "MEMDB shared alive: 2/2",
        ]
    )


def test_no_threads_or_databases_left_behind(project: pytest.Pytester) -> None:
    write_ini(project, memdb_file="data/app.sqlite")
    for isolation in ("copy", "rollback", "session"):
        project.makepyfile(**{f"test_loops_{isolation}": with_isolation(LOOPS_TESTS, isolation)})
    project.makepyfile(
        test_api_copy=with_isolation(ASGI_TESTS, "copy"),
        test_client_rollback=with_isolation(TESTCLIENT_TESTS, "rollback"),
        test_client_copy=with_isolation(TESTCLIENT_TESTS, "copy"),
        test_sync=SYNC_TESTS,
    )
    before = {thread.ident for thread in threading.enumerate()}

    result = run_inner(project)

    new_threads = [t for t in threading.enumerate() if t.ident not in before]
    # A closed connection's worker ends right after answering close(); give it the
    # moment it needs. A leaked one waits on its queue forever and is still alive.
    deadline = time.monotonic() + 10
    for thread in new_threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    leftovers = [thread for thread in new_threads if thread.is_alive()]
    stop_leaked_aiosqlite_workers(leftovers)
    assert [thread.name for thread in leftovers] == []
    result.assert_outcomes(passed=3 * 9 + 2 + 3 + 3 + 6)
    # copy: 8 loop tests + 2 ASGI + 3 TestClient + 2 sync; shared: rollback template, session db
    result.stdout.fnmatch_lines(
        ["MEMDB copies alive: 1/1 over 15 tests", "MEMDB shared alive: 2/2"]
    )
    names = (project.path / "memdb_names.txt").read_text().split()
    assert len(names) == 3
    # Back in this process, after the run: every database the run made is gone.
    assert {name: memdb_tables(name) for name in names} == {name: [] for name in names}
