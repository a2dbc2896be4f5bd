"""``memdb_bind`` on an engine an object holds (``app.db:database.engine``), and on objects a
library makes anew (per URL, per module): what admin frameworks do.

The inner runs load ``memdb_state`` (see ``test_bind_and_sessions``): after the last test it
prints which of the app's objects (module globals, and the attributes of the objects they
hold) were not put back.
"""

from __future__ import annotations

import pytest

from tests.helpers import write_ini
from tests.test_bind_and_sessions import MODELS, SEED, STATE, run, write

HOLDER_DB = """
    from sqlalchemy import create_engine
    from sqlalchemy.orm import scoped_session, sessionmaker


    class Database:
        def __init__(self, url):
            self.engine = create_engine(url)
            self.Session = sessionmaker(bind=self.engine)
            self.scoped = scoped_session(sessionmaker(bind=self.engine))


    database = Database("sqlite:///real.db")
"""

HOLDER_TESTS = """
    from sqlalchemy import func, select

    from app.db import database
    from app.models import Item


    def count(session):
        return session.scalar(select(func.count()).select_from(Item))


    def test_1_the_holders_sessionmaker_is_bound(memdb_sync_session):
        with database.Session() as session:
            session.add(Item(name="one"))
            session.commit()
        assert count(memdb_sync_session) == 2


    def test_2_and_its_scoped_session(memdb_sync_session):
        database.scoped.add(Item(name="two"))
        database.scoped.commit()
        assert count(memdb_sync_session) == 2
        assert "vfs=memdb" in str(database.scoped.get_bind().url)


    def test_3_the_next_test_sees_the_template():
        with database.Session() as session:
            assert count(session) == 1
"""


def test_naming_an_objects_engine_binds_its_sessionmakers(pytester: pytest.Pytester) -> None:
    write(
        pytester,
        {
            "memdb_state.py": STATE,
            "app/__init__.py": "",
            "app/models.py": MODELS,
            "app/seed.py": SEED,
            "app/db.py": HOLDER_DB,
            "test_holder.py": HOLDER_TESTS,
        },
    )
    write_ini(
        pytester,
        memdb_metadata="app.models:Base",
        memdb_load="app.seed:seed",
        memdb_bind="app.db:database.engine",
        memdb_strict="true",
    )
    result = run(pytester)
    result.assert_outcomes(passed=3)
    # database.engine, .Session, .scoped: each put back as it was
    result.stdout.fnmatch_lines(["MEMDB-AFTER objects=3 changed=- stray=-"])
    assert not (pytester.path / "real.db").exists()


PER_URL_DB = """
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    engine = None
    Session = None


    def configure(url):
        # a framework's set-up, called with the URL of each test module's app
        global engine, Session
        engine = create_engine(url)
        Session = sessionmaker(bind=engine)
"""

PER_URL_CONFTEST = """
    import pytest

    from app import db


    @pytest.fixture(scope="module", autouse=True)
    def app_for_this_module(request):
        db.configure(f"sqlite:///{request.module.__name__}.db")
"""

PER_URL_TEST = """
    from sqlalchemy import func, select

    from app import db
    from app.models import Item


    def test_writes_through_the_module_apps_session(memdb_sync_session):
        with db.Session() as session:
            session.add(Item(name="{name}"))
            session.commit()
        assert memdb_sync_session.scalar(select(func.count()).select_from(Item)) == 2
"""


def test_named_objects_are_found_again_for_each_test(pytester: pytest.Pytester) -> None:
    """The engine a name holds is looked up again for each test: a library that makes a new
    one for each module's app (each URL) is bound in every module, not just the first."""
    write(
        pytester,
        {
            "memdb_state.py": STATE,
            "app/__init__.py": "",
            "app/models.py": MODELS,
            "app/seed.py": SEED,
            "app/db.py": PER_URL_DB,
            "conftest.py": PER_URL_CONFTEST,
            "test_first.py": PER_URL_TEST.replace("{name}", "first"),
            "test_second.py": PER_URL_TEST.replace("{name}", "second"),
        },
    )
    write_ini(
        pytester,
        memdb_metadata="app.models:Base",
        memdb_load="app.seed:seed",
        memdb_bind="app.db:engine",
        memdb_strict="true",
    )
    result = run(pytester)
    result.assert_outcomes(passed=2)
    assert sorted(p.name for p in pytester.path.glob("*.db")) == []
