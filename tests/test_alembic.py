"""Alembic migrations as the template source (memdb_alembic), and the drift check.

Every project here is made by Alembic itself (``alembic init``, generic and async
templates) with its ``env.py`` left as generated unless the test is about ``env.py``.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config

from tests.helpers import digest, make_sqlite, write_ini

REVISIONS = {
    "0001_author.py": """
        revision = "0001"
        down_revision = None

        def upgrade():
            _log("0001")
            op.create_table(
                "author",
                sa.Column("id", sa.Integer, primary_key=True),
                sa.Column("name", sa.String(50), nullable=False),
            )
    """,
    "0002_book.py": """
        revision = "0002"
        down_revision = "0001"

        def upgrade():
            _log("0002")
            op.create_table(
                "book",
                sa.Column("id", sa.Integer, primary_key=True),
                sa.Column("author_id", sa.Integer, sa.ForeignKey("author.id"), nullable=False),
                sa.Column("title", sa.String(100), nullable=False),
            )
            author = sa.table("author", sa.column("name", sa.String))
            op.bulk_insert(author, [{"name": "migrated"}])
    """,
}
"""Two revisions; each appends its id to ``migrations.log`` beside the alembic.ini."""

HEADER = """
import sqlalchemy as sa
from alembic import op

branch_labels = None
depends_on = None


def _log(what):
    with open({log!r}, "a") as log:
        log.write(what + "\\n")
"""

MODELS = """
from sqlalchemy import ForeignKey, String, event
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "author"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


class Book(Base):
    __tablename__ = "book"
    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("author.id"))
    title: Mapped[str] = mapped_column(String(100))


@event.listens_for(Base.metadata, "before_create")
def _create_all(target, connection, **kw):
    with open("create_all.log", "a") as log:
        log.write("create_all\\n")
"""

DRIFTED_MODELS = """
from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "author"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    email: Mapped[str] = mapped_column(String(200))


class Book(Base):  # no title: the migrations add one
    __tablename__ = "book"
    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("author.id"))


class Tag(Base):
    __tablename__ = "tag"
    id: Mapped[int] = mapped_column(primary_key=True)
"""

SCHEMA_TESTS = """
import pytest
from sqlalchemy import inspect, text

def tables(session):
    return sorted(inspect(session.connection()).get_table_names())

@pytest.mark.parametrize("n", range(3))
def test_migrated(memdb_sync_session, n):
    assert tables(memdb_sync_session) == ["alembic_version", "author", "book"]
    version = memdb_sync_session.execute(text("SELECT version_num FROM alembic_version"))
    assert version.scalar_one() == "0002"
    names = memdb_sync_session.execute(text("SELECT name FROM author")).scalars().all()
    assert names == ["migrated"]  # the data migration; no test's rows
    memdb_sync_session.execute(text(f"INSERT INTO author (name) VALUES ('test{n}')"))
    memdb_sync_session.execute(text("INSERT INTO book (author_id, title) VALUES (1, 'b')"))
    memdb_sync_session.commit()
"""

RUN = ("-p", "no:cacheprovider")


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> list[str]:
    """The inner run's arguments for one backend: nothing for SQLite, the PostgreSQL switch
    (``memdb_postgresql``) on the session's server else."""
    if request.param == "sqlite":
        return []
    server = request.getfixturevalue("pg_server")
    return [f"--memdb-postgresql={server.url('postgres', 'psycopg')}"]


def _alembic_project(
    pytester: pytest.Pytester,
    template: str = "generic",
    *,
    folder: str = ".",
    revisions: dict[str, str] | None = None,
) -> Path:
    """``alembic init`` (by Alembic's own API) in ``folder``, plus the revisions.

    The alembic.ini's path; the scripts are in ``migrations`` beside it.
    """
    ini = pytester.path / folder / "alembic.ini"
    ini.parent.mkdir(parents=True, exist_ok=True)
    command.init(Config(str(ini)), str(ini.parent / "migrations"), template=template)
    header = HEADER.format(log=str(ini.parent / "migrations.log"))
    for name, body in (REVISIONS if revisions is None else revisions).items():
        path = ini.parent / "migrations" / "versions" / name
        path.write_text(header + textwrap.dedent(body))
    return ini


def _log(ini: Path) -> list[str]:
    path = ini.parent / "migrations.log"
    return path.read_text().split() if path.exists() else []


def _env_py(ini: Path) -> Path:
    return ini.parent / "migrations" / "env.py"


@pytest.mark.parametrize(
    ("template", "isolation"),
    [
        ("generic", "copy"),
        ("generic", "rollback"),
        # 4-6 s on PostgreSQL; SQLite's async env.py has a test of its own below
        pytest.param("async", "copy", marks=pytest.mark.slow),
    ],
)
def test_generic_env_py_migrates_once_and_every_test_sees_the_schema(
    pytester: pytest.Pytester, backend: list[str], template: str, isolation: str
) -> None:
    """``env.py`` as ``alembic init`` writes it (generic and async), on both backends."""
    ini = _alembic_project(pytester, template)
    generated = _env_py(ini).read_text()
    write_ini(pytester, memdb_alembic="alembic.ini", memdb_isolation=isolation)
    pytester.makepyfile(test_schema=SCHEMA_TESTS)

    result = pytester.runpytest(*RUN, *backend)

    result.assert_outcomes(passed=3)
    assert _log(ini) == ["0001", "0002"]  # once per template, not once per test
    assert _env_py(ini).read_text() == generated
    assert ("engine_from_config(" if template == "generic" else "asyncio.run(") in generated


def test_async_env_py_works_unchanged_even_inside_a_running_loop(
    pytester: pytest.Pytester,
) -> None:
    ini = _alembic_project(pytester, "async")
    assert "asyncio.run(" in _env_py(ini).read_text()
    write_ini(pytester, memdb_alembic="alembic.ini")
    pytester.makepyfile(
        test_schema=SCHEMA_TESTS
        + """

async def test_template_built_inside_a_running_loop(request):
    from pytest_memdb.plugin.state import registry, settings_key

    target = request.config.stash[settings_key].target_for(request.node)
    # A second template (another fixture's): built here, while this test's loop runs.
    other = type(target)(**{**target.__dict__, "fixture": "other"})
    template = registry(request.config).template(other)
    tables = template.database.anchor.execute(
        "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name"
    ).fetchall()
    assert [name for (name,) in tables] == ["alembic_version", "author", "book"]


async def test_async_session_sees_it(memdb_session):
    from sqlalchemy import text

    rows = await memdb_session.execute(text("SELECT name FROM author"))
    assert rows.scalars().all() == ["migrated"]
"""
    )

    result = pytester.runpytest(*RUN)

    result.assert_outcomes(passed=5)
    assert _log(ini) == ["0001", "0002", "0001", "0002"]  # two templates, once each


SHARING_SYNC = """
from alembic import context
from sqlalchemy import create_engine

config = context.config
target_metadata = None


def run_migrations_online():
    connectable = config.attributes.get("connection", None)
    if connectable is None:  # the app's real database, never reached under pytest-memdb
        connectable = create_engine({real_url!r})
        with connectable.connect() as connection:
            context.configure(connection=connection, target_metadata=target_metadata)
            with context.begin_transaction():
                context.run_migrations()
    else:
        context.configure(connection=connectable, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
"""

SHARING_ASYNC = """
import asyncio

from alembic import context
from sqlalchemy.ext.asyncio import create_async_engine

config = context.config
target_metadata = None


def do_run_migrations(connection):
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations():
    engine = create_async_engine({real_url!r})
    async with engine.connect() as connection:
        await connection.run_sync(do_run_migrations)
    await engine.dispose()


def run_migrations_online():
    connectable = config.attributes.get("connection", None)
    if connectable is None:
        asyncio.run(run_async_migrations())
    else:
        do_run_migrations(connectable)


run_migrations_online()
"""


@pytest.mark.parametrize(
    ("env", "driver"), [(SHARING_SYNC, "sqlite"), (SHARING_ASYNC, "aiosqlite")]
)
def test_env_py_sharing_a_connection_takes_the_plugins(
    pytester: pytest.Pytester, env: str, driver: str
) -> None:
    ini = _alembic_project(pytester, "generic")
    real = pytester.path / "real.db"
    scheme = "sqlite" if driver == "sqlite" else "sqlite+aiosqlite"
    _env_py(ini).write_text(env.format(real_url=f"{scheme}:///{real}"))
    write_ini(pytester, memdb_alembic="alembic.ini", memdb_isolation="rollback")
    pytester.makepyfile(test_schema=SCHEMA_TESTS)

    result = pytester.runpytest(*RUN)

    result.assert_outcomes(passed=3)
    assert _log(ini) == ["0001", "0002"]
    assert not real.exists()


def test_a_revision_other_than_head(pytester: pytest.Pytester) -> None:
    ini = _alembic_project(pytester, "generic")
    write_ini(pytester, memdb_alembic="alembic.ini", memdb_alembic_revision="0001")
    pytester.makepyfile(
        """
        from sqlalchemy import text

        def test_first_revision_only(memdb_sync_session):
            rows = memdb_sync_session.execute(
                text("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")
            )
            assert rows.scalars().all() == ["alembic_version", "author"]
            version = memdb_sync_session.execute(text("SELECT version_num FROM alembic_version"))
            assert version.scalar_one() == "0001"
        """
    )

    result = pytester.runpytest(*RUN)

    result.assert_outcomes(passed=1)
    assert _log(ini) == ["0001"]


def test_migrations_run_on_the_fixture_file_and_leave_it_alone(pytester: pytest.Pytester) -> None:
    app_db = make_sqlite(pytester.path / "data" / "app.sqlite")
    before = digest(app_db)
    revisions = {
        **REVISIONS,
        "0003_authors_from_users.py": """
            revision = "0003"
            down_revision = "0002"

            def upgrade():
                _log("0003")
                op.execute("INSERT INTO author (name) SELECT name FROM user ORDER BY id")
        """,
    }
    ini = _alembic_project(pytester, "generic", revisions=revisions)
    write_ini(pytester, memdb_file="data/app.sqlite", memdb_alembic="alembic.ini")
    pytester.makepyfile(
        """
        from sqlalchemy import text

        def test_file_then_migrations(memdb_sync_session):
            users = memdb_sync_session.execute(text("SELECT count(*) FROM user")).scalar()
            names = memdb_sync_session.execute(text("SELECT name FROM author ORDER BY id"))
            assert users == 3
            assert names.scalars().all() == ["migrated", "ada", "brian", "grace"]
        """
    )

    result = pytester.runpytest(*RUN)

    result.assert_outcomes(passed=1)
    assert _log(ini) == ["0001", "0002", "0003"]
    assert digest(app_db) == before


def test_load_steps_and_the_hook_run_after_the_migrations(
    pytester: pytest.Pytester, backend: list[str]
) -> None:
    _alembic_project(pytester, "generic")
    (pytester.path / "seed.sql").write_text(
        "INSERT INTO book (author_id, title) VALUES (1, 'seeded by sql');\n"
    )
    pytester.makepyfile(
        seeding="""
        from sqlalchemy import text

        def seed(conn):
            conn.execute(text("INSERT INTO author (name) VALUES ('seeded by callable')"))
        """
    )
    pytester.makeconftest(
        """
        from sqlalchemy import text

        def pytest_memdb_template(connection, config, target):
            books = connection.execute(text("SELECT count(*) FROM book")).scalar()
            connection.execute(text(f"INSERT INTO author (name) VALUES ('hook saw {books}')"))
        """
    )
    write_ini(
        pytester,
        memdb_alembic="alembic.ini",
        memdb_load="\n    seed.sql\n    seeding:seed",
    )
    pytester.makepyfile(
        """
        import pytest
        from sqlalchemy import text

        @pytest.mark.parametrize("n", range(2))
        def test_seeded(memdb_sync_session, n):
            names = memdb_sync_session.execute(text("SELECT name FROM author ORDER BY id"))
            assert names.scalars().all() == ["migrated", "seeded by callable", "hook saw 1"]
        """
    )

    result = pytester.runpytest(*RUN, *backend)

    result.assert_outcomes(passed=2)


def test_models_that_match_the_migrations_pass_and_create_all_is_not_run(
    pytester: pytest.Pytester, backend: list[str]
) -> None:
    ini = _alembic_project(pytester, "generic")
    pytester.makepyfile(models=MODELS)
    write_ini(pytester, memdb_alembic="alembic.ini", memdb_metadata="models:Base")
    pytester.makepyfile(test_schema=SCHEMA_TESTS)

    result = pytester.runpytest(*RUN, *backend)

    result.assert_outcomes(passed=3)
    assert _log(ini) == ["0001", "0002"]
    assert not (pytester.path / "create_all.log").exists()


def test_models_that_drifted_from_the_migrations_fail_every_test_listing_the_differences(
    pytester: pytest.Pytester, backend: list[str]
) -> None:
    ini = _alembic_project(pytester, "generic")
    pytester.makepyfile(models=DRIFTED_MODELS)
    write_ini(pytester, memdb_alembic="alembic.ini", memdb_metadata="models:Base")
    pytester.makepyfile(test_schema=SCHEMA_TESTS)

    result = pytester.runpytest(*RUN, *backend)

    result.assert_outcomes(errors=3)
    assert _log(ini) == ["0001", "0002"]  # built once, the failure remembered
    out = result.stdout.str()
    assert errors_saying(result, "the migrated schema does not match the models") == 3
    for line in (
        f"memdb_alembic in pytest.ini '{ini}' (revision 'head')",
        "'models:Base' (memdb_metadata in pytest.ini)",
        "  - table 'tag': in the models, not created by the migrations",
        "  - column author.email (VARCHAR(200)): in the models, missing from the migrated table",
        "  - column book.title (VARCHAR(100)): in the migrated table, not in the models",
        "alembic revision --autogenerate",
    ):
        assert line in out, line
    assert "Traceback" not in out


ELSEWHERE = 'config.set_main_option("sqlalchemy.url", {url!r})  # the app\'s own settings\n'


@pytest.mark.parametrize(
    ("template", "scheme"), [("generic", "sqlite"), ("async", "sqlite+aiosqlite")]
)
def test_env_py_that_connects_elsewhere_is_stopped_before_it_connects(
    pytester: pytest.Pytester, backend: list[str], template: str, scheme: str
) -> None:
    ini = _alembic_project(pytester, template)
    real = pytester.path / "app.db"
    env_py = _env_py(ini)
    env_py.write_text(
        env_py.read_text().replace(
            "config = context.config\n",
            "config = context.config\n" + ELSEWHERE.format(url=f"{scheme}:///{real}"),
        )
    )
    write_ini(pytester, memdb_alembic="alembic.ini")
    pytester.makepyfile(test_schema=SCHEMA_TESTS)

    result = pytester.runpytest(*RUN, *backend)

    result.assert_outcomes(errors=3)
    assert not real.exists()
    assert _log(ini) == []
    out = result.stdout.str()
    for fragment in (
        f"memdb_alembic in pytest.ini '{ini}' (revision 'head')",
        f"tried to connect to {scheme}:///{real}",
        "nothing was migrated",
        'connectable = config.attributes.get("connection", None)',
        "context.configure(connection=connectable, target_metadata=target_metadata)",
        "context.run_migrations()",
    ):
        assert fragment in out, fragment


def test_without_alembic_installed_the_error_says_what_to_install(
    pytester: pytest.Pytester,
) -> None:
    _alembic_project(pytester, "generic")
    pytester.makeconftest(
        """
        import sys

        for name in [m for m in sys.modules if m == "alembic" or m.startswith("alembic.")]:
            del sys.modules[name]
        sys.modules["alembic"] = None  # import alembic now raises ImportError
        """
    )
    write_ini(pytester, memdb_alembic="alembic.ini")
    pytester.makepyfile(test_schema=SCHEMA_TESTS)

    result = pytester.runpytest_subprocess(*RUN, timeout=120)

    result.assert_outcomes(errors=3)
    out = result.stdout.str()
    assert errors_saying(result, "needs Alembic, which cannot be imported") == 3
    assert "memdb_alembic in pytest.ini" in out
    assert "Install it with: pip install 'pytest-memdb[alembic]'" in out


FAILING = {
    **REVISIONS,
    "0003_broken.py": """
        revision = "0003"
        down_revision = "0002"

        def upgrade():
            op.execute("INSERT INTO nowhere VALUES (1)")
    """,
}


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing ini", ["*@pytest.mark.memdb(alembic=...) '*nope.ini'*does not exist*"]),
        ("no script_location", ["*alembic.ini*has no script_location*"]),
        ("missing scripts folder", ["*script_location*cannot be used*"]),
        (
            "failing migration",
            [
                "*seeding the template failed while running the migrations of memdb_alembic in "
                "pytest.ini*(revision 'head') in revision 0003 (*0003_broken.py:*): "
                "OperationalError: *no such table: nowhere*"
            ],
        ),
        ("unknown revision", ["*(revision 'nosuch')*Can't locate revision*nosuch*"]),
    ],
)
def test_errors_name_the_option_the_path_and_the_revision(
    pytester: pytest.Pytester, case: str, expected: list[str]
) -> None:
    ini = _alembic_project(pytester, "generic", revisions=FAILING)
    options = {"memdb_alembic": "alembic.ini"}
    marker = ""
    if case == "missing ini":
        marker = "@pytest.mark.memdb(alembic='nope.ini')"
    elif case == "no script_location":
        ini.write_text(ini.read_text().replace("script_location", "# script_location"))
    elif case == "missing scripts folder":
        ini.write_text(
            re.sub(r"(?m)^script_location = .*$", "script_location = gone", ini.read_text())
        )
    elif case == "unknown revision":
        options["memdb_alembic_revision"] = "nosuch"
    write_ini(pytester, **options)
    pytester.makepyfile(
        f"""
        import pytest

        {marker}
        def test_one(memdb):
            pass

        {marker}
        def test_two(memdb):
            pass
        """
    )

    result = pytester.runpytest(*RUN)

    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(expected)
    assert "Traceback" not in result.stdout.str()


def test_a_factory_with_its_own_migrations(pytester: pytest.Pytester) -> None:
    ini = _alembic_project(pytester, "generic", folder="other")
    make_sqlite(pytester.path / "data" / "app.sqlite")
    write_ini(pytester, memdb_file="data/app.sqlite")
    pytester.makeconftest(
        """
        from pytest_memdb import memdb_factory

        other_db = memdb_factory("other_db", alembic="other/alembic.ini")
        """
    )
    pytester.makepyfile(
        """
        import pytest
        from sqlalchemy import text

        @pytest.mark.parametrize("n", range(2))
        def test_both(memdb, other_db, n):
            with other_db.sync_engine.connect() as conn:
                names = conn.execute(text("SELECT name FROM author")).scalars().all()
            with memdb.sync_engine.connect() as conn:
                users = conn.execute(text("SELECT count(*) FROM user")).scalar()
            assert (names, users) == (["migrated"], 3)
        """
    )

    result = pytester.runpytest(*RUN)

    result.assert_outcomes(passed=2)
    assert _log(ini) == ["0001", "0002"]


def test_alembic_ini_logging_does_not_reach_the_test_run(pytester: pytest.Pytester) -> None:
    # env.py's fileConfig(alembic.ini) would disable every logger that exists (the app's).
    _alembic_project(pytester, "generic")
    write_ini(pytester, memdb_alembic="alembic.ini")
    pytester.makepyfile(
        """
        import logging

        app_log = logging.getLogger("app")

        def test_app_logs_still_captured(memdb, caplog):
            with caplog.at_level(logging.INFO):
                app_log.info("hello from the app")
            assert not app_log.disabled
            assert "hello from the app" in caplog.text
        """
    )

    result = pytester.runpytest(*RUN)

    result.assert_outcomes(passed=1)


def test_drift_check_uses_the_version_table_env_py_names(pytester: pytest.Pytester) -> None:
    ini = _alembic_project(pytester, "generic")
    env_py = _env_py(ini)
    env_py.write_text(
        env_py.read_text().replace(
            "connection=connection, target_metadata=target_metadata",
            "connection=connection, target_metadata=target_metadata, version_table='app_version'",
        )
    )
    pytester.makepyfile(models=MODELS)
    write_ini(pytester, memdb_alembic="alembic.ini", memdb_metadata="models:Base")
    pytester.makepyfile(
        """
        from sqlalchemy import text

        def test_custom_version_table(memdb_sync_session):
            version = memdb_sync_session.execute(text("SELECT version_num FROM app_version"))
            assert version.scalar_one() == "0002"
        """
    )

    result = pytester.runpytest(*RUN)

    result.assert_outcomes(passed=1)


def errors_saying(result: pytest.RunResult, text: str) -> int:
    """How many error reports (not summary lines: with CI set, pytest does not shorten those)
    carry ``text``."""
    return sum(1 for line in result.outlines if line.startswith("pytest-memdb:") and text in line)
