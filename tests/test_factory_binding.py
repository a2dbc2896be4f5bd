"""``memdb_factories`` (issue 13, part 3): factory_boy and polyfactory factories bound to
each test's session, in every isolation mode, with real inner pytest runs.

Every outer test writes a small app (``app/models.py``, ``app/factories.py``) into the
pytester project and runs a real inner suite in a subprocess. The inner tests count rows
through the test's own session: each asserts the *exact* number of rows the template
plus its own factories make, so a row another test left behind fails it, whatever order
the tests run in (``-p randomly``) and whichever xdist worker runs them (``-n 2``).
"""

from __future__ import annotations

import textwrap

import pytest

from tests.helpers import write_ini

MODES = ("copy", "rollback", "session")

MODELS = """
    from sqlalchemy import ForeignKey
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


    class Base(DeclarativeBase):
        pass


    class Author(Base):
        __tablename__ = "author"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str]


    class Book(Base):
        __tablename__ = "book"
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str]
        author_id: Mapped[int] = mapped_column(ForeignKey("author.id"))
        author: Mapped[Author] = relationship()
"""

FACTORIES = """
    import factory
    from factory.alchemy import SQLAlchemyModelFactory
    from polyfactory.factories.sqlalchemy_factory import SQLAlchemyFactory
    from sqlalchemy.orm import Session

    from app.models import Author, Book

    OWN_SESSION = Session()  # never used for I/O: stands for the factory's own Meta setting


    class BaseFactory(SQLAlchemyModelFactory):  # abstract: skipped
        class Meta:
            abstract = True
            sqlalchemy_session = OWN_SESSION


    class AuthorFactory(BaseFactory):
        class Meta:
            model = Author

        name = factory.Sequence(lambda n: f"author {n}")


    class BookFactory(BaseFactory):
        class Meta:
            model = Book

        title = factory.Sequence(lambda n: f"book {n}")
        author = factory.SubFactory(AuthorFactory)


    class FlushAuthorFactory(AuthorFactory):
        class Meta:
            sqlalchemy_session_persistence = "flush"


    class CommitAuthorFactory(AuthorFactory):
        class Meta:
            sqlalchemy_session_persistence = "commit"


    def own_session_factory():
        return OWN_SESSION


    class MadeAuthorFactory(AuthorFactory):  # its own Meta names a session factory
        class Meta:
            sqlalchemy_session = None
            sqlalchemy_session_factory = own_session_factory


    class PolyBase(SQLAlchemyFactory[Author]):  # a base factory: skipped
        __is_base_factory__ = True
        __set_primary_key__ = False


    class AuthorPoly(PolyBase):
        __model__ = Author
        __session__ = OWN_SESSION


    class BookPoly(SQLAlchemyFactory[Book]):
        __set_primary_key__ = False
        __set_foreign_keys__ = False  # the author comes from the relationship
        __set_relationships__ = True  # polyfactory 3's default; not 2.15's (the lower bound)


    class FlushBookPoly(BookPoly):
        # polyfactory 3.3 and later can flush instead of committing; before (the lower
        # bound, 2.15, in CI's floor pass), it always commits: the rows are there either way.
        if hasattr(BookPoly, "__persistence_method__"):
            __persistence_method__ = BookPoly.__persistence_method__.FLUSH
"""

COUNTS = """
    from sqlalchemy import func, select

    from app.models import Author, Book


    def counts(session):
        return tuple(
            session.scalar(select(func.count()).select_from(model)) for model in (Author, Book)
        )


    async def acounts(session):
        return tuple(
            [await session.scalar(select(func.count()).select_from(m)) for m in (Author, Book)]
        )
"""

# One inner suite for every mode. In copy and rollback each test starts from an empty
# template, so a test that finds (0, 0) before its factories ran proves the tests before
# it left nothing; in session mode rows persist by design, so counts are relative there.
SUITE = """
    import pytest
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session

    from app.counting import acounts, counts
    from app.factories import (
        OWN_SESSION,
        AuthorFactory,
        AuthorPoly,
        BookFactory,
        BookPoly,
        CommitAuthorFactory,
        FlushAuthorFactory,
        FlushBookPoly,
    )
    from pytest_memdb.errors import MemdbError


    @pytest.fixture
    def start(memdb):
        # the rows the database holds at the start: none, unless in session mode
        return memdb.isolation != "session"


    def expect(start, before, made):
        if start:
            assert before == (0, 0), f"rows another test left behind: {before}"
        return tuple(b + m for b, m in zip(before, made))


    def test_factory_boy_sync(memdb_sync_session, memdb_factories, start):
        before = expect(start, counts(memdb_sync_session), (0, 0))
        books = BookFactory.create_batch(2)
        assert memdb_factories.session is memdb_sync_session
        assert BookFactory._meta.sqlalchemy_session is memdb_sync_session
        assert all(book in memdb_sync_session for book in books)
        assert counts(memdb_sync_session) == expect(False, before, (2, 2))


    @pytest.mark.parametrize("factory", [FlushAuthorFactory, CommitAuthorFactory])
    def test_factory_boy_sync_flush_and_commit(memdb_sync_session, start, factory):
        before = expect(start, counts(memdb_sync_session), (0, 0))
        author = factory()
        assert author.id is not None  # flushed or committed: it has its key already
        assert counts(memdb_sync_session) == expect(False, before, (1, 0))


    async def test_factory_boy_async(memdb_session, memdb_factories, start):
        before = expect(start, await acounts(memdb_session), (0, 0))
        book = BookFactory()
        assert isinstance(memdb_factories.session, AsyncSession)
        assert memdb_factories.session is memdb_session
        assert book in memdb_session  # the AsyncSession's own Session holds it
        assert await acounts(memdb_session) == expect(False, before, (1, 1))  # autoflush


    @pytest.mark.parametrize("factory", [FlushAuthorFactory, CommitAuthorFactory])
    async def test_factory_boy_async_flush_and_commit_need_run_sync(
        memdb_session, start, factory
    ):
        before = expect(start, await acounts(memdb_session), (0, 0))
        with pytest.raises(MemdbError, match="sqlalchemy_session_persistence = '(flush|commit)'"):
            factory()
        authors = await memdb_session.run_sync(lambda _: factory.create_batch(2))
        assert all(author.id is not None for author in authors)
        assert await acounts(memdb_session) == expect(False, before, (2, 0))


    def test_polyfactory_sync(memdb_sync_session, start):
        before = expect(start, counts(memdb_sync_session), (0, 0))
        AuthorPoly.create_sync()  # commits, polyfactory's default
        FlushBookPoly.create_batch_sync(2)
        assert counts(memdb_sync_session) == expect(False, before, (3, 2))


    async def test_polyfactory_async(memdb_session, start):
        before = expect(start, await acounts(memdb_session), (0, 0))
        author = await AuthorPoly.create_async()
        assert author in memdb_session
        await FlushBookPoly.create_batch_async(2)
        await BookPoly.create_async()
        assert await acounts(memdb_session) == expect(False, before, (4, 3))
        with pytest.raises(MemdbError, match="create_async"):
            AuthorPoly.create_sync()


    @pytest.fixture
    async def two_books(memdb_session):
        return await BookPoly.create_batch_async(2)


    async def test_an_async_fixture_made_them(two_books, memdb_session, memdb):
        if memdb.isolation != "session":
            assert await acounts(memdb_session) == (2, 2)
        assert all(book in memdb_session for book in two_books)


    def test_bound_while_the_test_runs(memdb_factories):
        assert AuthorFactory._meta.sqlalchemy_session is not OWN_SESSION
        assert set(memdb_factories.factories) >= {AuthorFactory, BookFactory, AuthorPoly}
        assert "__session__" in vars(BookPoly)


    def test_a_test_without_memdb_fixtures(memdb):
        # autouse: the modules' factories are bound in every test; the rows are in the
        # sync session (the test uses neither session fixture), which it can commit
        assert AuthorFactory()._sa_instance_state.session is not None
"""


def _project(pytester: pytest.Pytester, **ini: str) -> None:
    pytester.mkpydir("app")
    for name, text in (("models", MODELS), ("factories", FACTORIES), ("counting", COUNTS)):
        (pytester.path / "app" / f"{name}.py").write_text(textwrap.dedent(text))
    ini.setdefault("memdb_metadata", "app.models:Base")
    write_ini(pytester, **ini)


SUITE_TESTS = 11


@pytest.mark.parametrize(
    ("switch", "mode"),
    [
        *(pytest.param("sqlite", mode, id=f"sqlite-{mode}") for mode in MODES),
        # a subprocess run on PostgreSQL: 6-10 s (rollback), 10-15 s (copy, a clone per
        # test) with a CI run on the same 2 cores
        *(
            pytest.param("postgresql", mode, id=f"postgresql-{mode}", marks=pytest.mark.slow)
            for mode in ("copy", "rollback")
        ),
    ],
    indirect=["switch"],
)
def test_factories_write_where_the_test_reads(
    pytester: pytest.Pytester, mode: str, switch: list[str]
) -> None:
    """Every library, sync and async, every persistence, in each isolation mode; in copy
    and rollback, no test sees another's rows (each checks it starts from none). On
    PostgreSQL too: a clone per test, and rollback's held session."""
    _project(pytester, memdb_factories="app.factories", memdb_isolation=mode)
    pytester.makepyfile(test_suite=textwrap.dedent(SUITE))
    result = pytester.runpytest_subprocess(
        *switch, "-p", "no:cacheprovider", "-p", "no:randomly", "-W", "error::ResourceWarning"
    )
    result.assert_outcomes(passed=SUITE_TESTS)
    result.stdout.no_fnmatch_line("*Warning*")


def test_session_mode_keeps_what_factories_committed(pytester: pytest.Pytester) -> None:
    """``session`` mode undoes nothing, by design: a later test sees the rows."""
    _project(pytester, memdb_factories="app.factories", memdb_isolation="session")
    pytester.makepyfile(
        test_order=textwrap.dedent(
            """
            from app.counting import counts
            from app.factories import CommitAuthorFactory


            def test_1_commits(memdb_sync_session):
                CommitAuthorFactory.create_batch(2)


            def test_2_sees_them(memdb_sync_session):
                assert counts(memdb_sync_session) == (2, 0)
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(passed=2)


@pytest.mark.parametrize("mode", ["copy", "rollback"])
def test_under_randomly(pytester: pytest.Pytester, mode: str) -> None:
    _project(pytester, memdb_factories="app.factories", memdb_isolation=mode)
    pytester.makepyfile(test_suite=textwrap.dedent(SUITE))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "randomly")
    result.stdout.fnmatch_lines(["Using --randomly-seed=*"])
    result.assert_outcomes(passed=SUITE_TESTS)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["copy", "rollback"])
def test_under_xdist(pytester: pytest.Pytester, mode: str) -> None:
    _project(pytester, memdb_factories="app.factories", memdb_isolation=mode)
    pytester.makepyfile(test_suite=textwrap.dedent(SUITE))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    result.stdout.fnmatch_lines(["*2 workers*"])
    result.assert_outcomes(passed=SUITE_TESTS)


PUT_BACK_CONFTEST = """
    import pytest

    from app import factories as f

    SEEN = []


    def state():
        return (
            f.AuthorFactory._meta.sqlalchemy_session is f.OWN_SESSION,
            f.AuthorFactory._meta.sqlalchemy_session_factory is None,
            f.BookFactory._meta.sqlalchemy_session is f.OWN_SESSION,
            f.MadeAuthorFactory._meta.sqlalchemy_session is None,
            f.MadeAuthorFactory._meta.sqlalchemy_session_factory is f.own_session_factory,
            vars(f.AuthorPoly)["__session__"] is f.OWN_SESSION,
            "__async_session__" not in vars(f.AuthorPoly),
            "__session__" not in vars(f.BookPoly),
            "__session__" not in vars(f.FlushBookPoly),
            "__session__" not in vars(f.PolyBase),
        )


    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logfinish(nodeid):  # after the test's teardown
        SEEN.append(state())


    def pytest_sessionfinish(session):
        print(f"\\nPUT-BACK tests={len(SEEN)} all-original={all(all(s) for s in SEEN)}")
"""


@pytest.mark.parametrize("mode", MODES)
def test_factories_are_put_back_after_each_test(pytester: pytest.Pytester, mode: str) -> None:
    """A factory's own session settings (its Meta's, a polyfactory class attribute, or
    none, inherited) return exactly after every test, passed or failed."""
    _project(pytester, memdb_factories="app.factories", memdb_isolation=mode)
    pytester.makeconftest(textwrap.dedent(PUT_BACK_CONFTEST))
    pytester.makepyfile(
        test_put_back=textwrap.dedent(
            """
            from app.factories import AuthorFactory, AuthorPoly, BookFactory, MadeAuthorFactory


            def test_sync(memdb_sync_session):
                BookFactory()
                assert MadeAuthorFactory()._sa_instance_state.session is memdb_sync_session
                AuthorPoly.create_sync()
                assert AuthorFactory._meta.sqlalchemy_session is memdb_sync_session


            async def test_async(memdb_session):
                BookFactory()
                await AuthorPoly.create_async()


            def test_fails(memdb_sync_session):
                BookFactory()
                assert False, "on purpose"
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["PUT-BACK tests=3 all-original=True"])


def test_the_fixture_binds_without_the_option(pytester: pytest.Pytester) -> None:
    """Without ``memdb_factories``, ``memdb_factories.bind(...)`` binds classes or modules
    for one test; other tests keep the factories' own settings."""
    _project(pytester)
    pytester.makepyfile(
        test_explicit=textwrap.dedent(
            """
            import pytest

            from app import factories
            from app.counting import acounts, counts
            from app.factories import OWN_SESSION, AuthorFactory, AuthorPoly, BookFactory
            from pytest_memdb.errors import MemdbError


            def test_classes(memdb_sync_session, memdb_factories):
                assert AuthorFactory._meta.sqlalchemy_session is OWN_SESSION  # not yet
                memdb_factories.bind(AuthorFactory, BookFactory)
                BookFactory()
                assert counts(memdb_sync_session) == (1, 1)
                assert memdb_factories.factories == [AuthorFactory, BookFactory]


            async def test_module(memdb_session, memdb_factories):
                memdb_factories.bind(factories)
                await AuthorPoly.create_async()
                BookFactory()
                assert await acounts(memdb_session) == (2, 1)


            def test_unbound():
                assert AuthorFactory._meta.sqlalchemy_session is OWN_SESSION
                assert vars(AuthorPoly)["__session__"] is OWN_SESSION


            def test_not_a_factory(memdb_factories):
                with pytest.raises(MemdbError, match="expected a factory_boy"):
                    memdb_factories.bind(OWN_SESSION)
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(passed=4)


def test_both_session_fixtures_mean_the_sync_one(pytester: pytest.Pytester) -> None:
    """A test with both sessions: factories use the sync one, so a factory that commits is
    read by the async one; one that only flushed would hold SQLite's write lock (in copy
    mode the async session's read then waits for the busy timeout), hence the rule."""
    _project(pytester, memdb_factories="app.factories")
    pytester.makepyfile(
        test_both=textwrap.dedent(
            """
            from app.counting import acounts
            from app.factories import CommitAuthorFactory


            async def test_both(memdb_session, memdb_sync_session, memdb_factories):
                assert memdb_factories.session is memdb_sync_session
                CommitAuthorFactory()
                assert await acounts(memdb_session) == (1, 0)
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_a_bad_module_path_stops_the_run(pytester: pytest.Pytester) -> None:
    _project(pytester, memdb_factories="app.factories:AuthorFactory")
    pytester.makepyfile(test_x="def test_x(): pass")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*memdb_factories in pytest.ini got 'app.factories:AuthorFactory'*module path*"]
    )


def test_a_module_that_does_not_import_is_a_test_error(pytester: pytest.Pytester) -> None:
    _project(pytester, memdb_factories="app.nosuch")
    pytester.makepyfile(test_x="def test_x(): pass")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*memdb_factories in pytest.ini 'app.nosuch': importing module 'app.nosuch'*"]
    )


def test_a_module_without_factories_is_a_test_error(pytester: pytest.Pytester) -> None:
    _project(pytester, memdb_factories="app.models")
    pytester.makepyfile(test_x="def test_x(): pass")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*'app.models': the module defines or imports no factory_boy*"])


BLOCK = """
    import sys

    for name in {names!r}:
        sys.modules[name] = None  # what an environment without the library gives: ImportError
"""


def test_without_either_library_the_option_says_what_to_install(
    pytester: pytest.Pytester,
) -> None:
    _project(pytester, memdb_factories="app.factories")
    pytester.makepyfile(
        block_libs=textwrap.dedent(BLOCK.format(names=["factory", "polyfactory"])),
        test_x="def test_x(): pass",
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "block_libs")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*memdb_factories in pytest.ini names factory modules, but neither factory_boy "
            "nor polyfactory can be imported. Install them: pip install 'pytest-memdb*"
        ]
    )
    assert "pip install 'pytest-memdb[factories]'" in result.stderr.str()


def test_without_the_library_a_module_imports_says_what_to_install(
    pytester: pytest.Pytester,
) -> None:
    """polyfactory is there, factory_boy is not: the run starts, and the module that
    imports factory_boy fails with the install hint."""
    _project(pytester, memdb_factories="app.factories")
    pytester.makepyfile(
        block_libs=textwrap.dedent(BLOCK.format(names=["factory"])),
        test_x="def test_x(): pass",
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "block_libs")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*importing module 'app.factories'*ModuleNotFoundError*Install the factory libraries*"]
    )
    assert "pip install 'pytest-memdb[factories]'" in result.stdout.str()


def test_a_module_loaded_under_another_name_is_not_imported_twice(
    pytester: pytest.Pytester,
) -> None:
    """``app/`` on ``sys.path`` too: the option's ``factories`` is the file the tests import
    as ``app.factories``, so the option binds the classes the tests use, not a second copy."""
    _project(pytester, memdb_factories="factories", pythonpath=". app")
    pytester.makepyfile(
        test_clash=textwrap.dedent(
            """
            import sys

            from app.factories import AuthorFactory


            def test_the_tests_classes_are_bound(memdb_sync_session):
                assert AuthorFactory()._sa_instance_state.session is memdb_sync_session
                assert "factories" not in sys.modules
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
