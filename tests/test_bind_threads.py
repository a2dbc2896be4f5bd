"""``memdb_bind`` on a ``scoped_session`` used from the app's own long-lived worker thread.

The README says a scoped session's registry is emptied before and after each test: that
must hold for the sessions every thread made, not only the thread that runs the test. The
app here does its database work on a one-thread ``ThreadPoolExecutor`` (a common way to keep
sync SQLAlchemy off an event loop), so the same thread serves every test, and a session it
made in one test (with that test's pending objects) must not be what it uses in the next.
"""

from __future__ import annotations

import pytest

from tests.helpers import write_ini

MODELS = """
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "author"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(unique=True)
"""

DB = """
import threading
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import create_engine
from sqlalchemy.orm import scoped_session, sessionmaker

from myapp.models import Author

engine = create_engine("sqlite:///app.sqlite")
if {scopefunc}:
    db = scoped_session(sessionmaker(engine), scopefunc=threading.get_ident)
else:
    db = scoped_session(sessionmaker(engine))
pool = ThreadPoolExecutor(max_workers=1)
WAIT_S = 10


def run(work):
    return pool.submit(work).result(timeout=WAIT_S)


# The app warms its worker up at import: that thread's session is made on the app's engine.
WARM = run(db)


def stage(name, **options):
    def work():
        session = db(**options)  # with options: a session made and put in the registry
        session.add(Author(name=name))
        return session

    return run(work)


def add_and_commit(name):
    def work():
        db().add(Author(name=name))
        db().commit()

    return run(work)
"""

TESTS = """
from sqlalchemy import select

from myapp import db
from myapp.models import Author

STAGED = []


def test_1_leaves_a_pending_object_in_the_worker_session(memdb):
    STAGED.append(db.stage("left-by-test-1"))
    assert STAGED[0] is not db.WARM  # the session made before the test is not used in it


def test_2_leaves_one_in_a_session_made_with_options(memdb):
    STAGED.append(db.stage("left-by-test-2", info={"made": "with options"}))


def test_3_the_worker_starts_afresh(memdb_sync_session):
    assert [len(session.new) for session in STAGED] == [0, 0]  # closed: nothing pending
    db.add_and_commit("test-3")
    assert sorted(memdb_sync_session.scalars(select(Author.name))) == ["test-3"]


def test_4_and_again(memdb_sync_session):
    db.add_and_commit("test-4")
    assert sorted(memdb_sync_session.scalars(select(Author.name))) == ["test-4"]
"""

CONFTEST = """
import threading

import pytest


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    from sqlalchemy.util import ScopedRegistry, ThreadLocalRegistry

    from myapp import db

    registry = db.db.registry
    kind = type(registry).__name__
    same_factory = registry.createfunc is db.db.session_factory
    same_scope = getattr(registry, "scopefunc", threading.get_ident) is threading.get_ident
    held = db.run(registry.has)
    bind = db.run(lambda: db.db().bind is db.engine)
    db.run(db.db.remove)
    db.pool.shutdown(wait=False, cancel_futures=True)  # its idle thread ends at once
    print(
        f"\\nREGISTRY-AFTER kind={kind} factory={same_factory} scope={same_scope} "
        f"held-before-use={held} app-engine={bind}"
    )
"""


@pytest.mark.parametrize("isolation", ["copy", "rollback"])
@pytest.mark.parametrize("scopefunc", [False, True], ids=["thread-local", "scopefunc"])
def test_a_worker_threads_scoped_session_does_not_outlive_the_test(
    pytester: pytest.Pytester, isolation: str, scopefunc: bool
) -> None:
    write_ini(
        pytester,
        memdb_metadata="myapp.models:Base",
        memdb_bind="myapp.db:db",
        memdb_isolation=isolation,
        pythonpath=".",
    )
    files = {
        "myapp/__init__.py": "",
        "myapp/models.py": MODELS,
        "myapp/db.py": DB.format(scopefunc=scopefunc),
        "conftest.py": CONFTEST,
        "tests/test_a.py": TESTS,
    }
    for relative, body in files.items():
        path = pytester.path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
    result = pytester.runpytest("-p", "no:cacheprovider", "-s")
    result.assert_outcomes(passed=4)
    kind = "ScopedRegistry" if scopefunc else "ThreadLocalRegistry"
    # Put back as it was: a registry of the same kind, on the app's sessionmaker and scope
    # function, holding no session of any thread, whose sessions use the app's engine again.
    result.stdout.fnmatch_lines(
        [
            f"REGISTRY-AFTER kind={kind} factory=True scope=True held-before-use=False "
            "app-engine=True"
        ]
    )
    assert not (pytester.path / "app.sqlite").exists()
