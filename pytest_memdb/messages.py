"""The errors and warnings a user meets, each written once here, with a stable id.

Each :class:`Message` is a ``str.format`` template. What the plugin prints is the template
filled in, then a line that links to the message's entry on the docs site's errors page
(``.../reference/errors/#<id>``); that entry quotes the template filled in with the
message's ``example`` values. ``tests/test_messages.py`` checks both ways: every message
is quoted on ``docs/reference/errors.md`` as it renders, every quote there is a message of
this module, and every message is used by the plugin. An id never changes once released:
it is the anchor users follow.

Cheap to import (the plugin module imports it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

DOCS = "https://pytest-memdb.github.io/pytest-memdb/reference/errors/"
"""The errors page of the docs site (``docs/reference/errors.md``)."""


@dataclass(frozen=True)
class Message:
    """One error text: ``message(**fields)`` is what the user reads."""

    id: str
    template: str
    example: Mapping[str, object] = field(default_factory=dict)
    """Values the errors page's quote is rendered with: what a user would typically see."""

    @property
    def link(self) -> str:
        return f"{DOCS}#{self.id}"

    def text(self, **fields: object) -> str:
        """The message alone, as the errors page quotes it."""
        return self.template.format(**fields)

    def __call__(self, **fields: object) -> str:
        """The message as printed: the text, and where it is explained."""
        return f"{self.text(**fields)}\nSee {self.link}"

    def example_text(self) -> str:
        return self.text(**self.example)


MESSAGES: dict[str, Message] = {}
"""Every message, by id, in the order the errors page lists them."""


def _message(id: str, template: str, **example: object) -> Message:
    message = Message(id, template, example)
    MESSAGES[id] = message
    return message


# --- set-up: what the template is built from --------------------------------------------

NO_SOURCE = _message(
    "no-source",
    "pytest-memdb: no SQLite fixture file, metadata or migrations are configured (ini "
    "options memdb_file, memdb_metadata, memdb_alembic; command line --memdb-file, "
    "--memdb-metadata).\n"
    "Set one in your ini file:\n"
    "    [pytest]\n"
    "    memdb_file = tests/data/app.sqlite\n"
    "    memdb_metadata = myapp.models:Base\n"
    "    memdb_alembic = alembic.ini\n"
    "or on the command line: pytest --memdb-file tests/data/app.sqlite "
    "(or --memdb-metadata myapp.models:Base)\n"
    "or for one test: @pytest.mark.memdb(file='tests/data/app.sqlite')",
)

BAD_VALUE = _message(
    "bad-value",
    "pytest-memdb: {origin} got {value!r}; allowed values: {allowed}.",
    origin="memdb_isolation",
    value="rolback",
    allowed="copy, rollback, session",
)

UNKNOWN_OPTION = _message(
    "unknown-option",
    "pytest-memdb: unknown option {key!r} in {ini_name}.{hint} The options are: {options}.",
    key="memdb_restor",
    ini_name="pytest.ini",
    hint=" Did you mean 'memdb_restore'?",
    options="memdb_file, memdb_metadata, memdb_load, memdb_pragmas, memdb_isolation, "
    "memdb_echo, memdb_bind, memdb_session_class, memdb_sync_session_class, memdb_alembic, "
    "memdb_alembic_revision, memdb_cache, memdb_takeover, memdb_restore, memdb_factories, "
    "memdb_strict",
)

BAD_BOOL = _message(
    "bad-bool",
    "pytest-memdb: {name} in {ini_name}: {error}; expected true or false (pytest also reads "
    "yes/no, on/off, 1/0, y/n, t/f).",
    name="memdb_strict",
    ini_name="pytest.ini",
    error="invalid truth value 'maybe'",
)

BAD_DOTTED_PATH = _message(
    "bad-dotted-path",
    "pytest-memdb: {origin} got {value!r}; expected a dotted path such as "
    "'myapp.models:Base' (a module importable from the ini file's folder, a colon, and "
    "a DeclarativeBase subclass or a MetaData in it).",
    origin="memdb_metadata in pytest.ini",
    value="myapp.models.Base",
)

BAD_PRAGMA = _message(
    "bad-pragma",
    "pytest-memdb: {origin}: {problem}",
    origin="memdb_pragmas in pytest.ini",
    problem="unknown pragma 'foreign_key' in 'foreign_key=ON' (SQLite would silently ignore it).",
)

FACTORIES_NOT_INSTALLED = _message(
    "factories-not-installed",
    "pytest-memdb: {origin} names factory modules, but neither factory_boy nor polyfactory "
    "can be imported. Install them: pip install 'pytest-memdb[factories]'",
    origin="memdb_factories in pytest.ini",
)

FIXTURE_FILE = _message(
    "fixture-file",
    "pytest-memdb: the fixture file {path!r} (from {origin}): {problem}.",
    path="/src/app/tests/data/app.sqlite",
    origin="memdb_file in pytest.ini",
    problem="it does not exist",
)

IMPORT_FAILED = _message(
    "import-failed",
    "pytest-memdb: {origin} {dotted!r}: importing module {module!r} (from {folder}) "
    "failed: {error}",
    origin="memdb_metadata in pytest.ini",
    dotted="myapp.models:Base",
    module="myapp.models",
    folder="/src/app",
    error="ModuleNotFoundError: No module named 'myapp'",
)

NOT_A_METADATA = _message(
    "not-a-metadata",
    "pytest-memdb: {origin} {dotted!r} is {found}; expected a DeclarativeBase subclass "
    "(class Base(DeclarativeBase)) or a sqlalchemy.MetaData.",
    origin="memdb_metadata in pytest.ini",
    dotted="myapp.models:engine",
    found="an Engine (Engine(sqlite:///app.db))",
)

SEEDING_FAILED = _message(
    "seeding-failed",
    "pytest-memdb: seeding the template failed {step}: {error}",
    step="while running statement 2 of the SQL script '/src/app/tests/seed.sql' (entry "
    "'tests/seed.sql' in memdb_load in pytest.ini): INSERT INTO user (id, name) VALUES (1, 'ada')",
    error="IntegrityError: UNIQUE constraint failed: user.id",
)

ALEMBIC_MISSING = _message(
    "alembic-missing",
    "pytest-memdb: {where} needs Alembic, which cannot be imported ({error}). Install it "
    "with: pip install 'pytest-memdb[alembic]'",
    where="memdb_alembic in pytest.ini '/src/app/alembic.ini' (revision 'head')",
    error="ModuleNotFoundError: No module named 'alembic'",
)

ALEMBIC_RECIPE = """\
    def run_migrations_online() -> None:
        connectable = config.attributes.get("connection", None)
        if connectable is not None:  # pytest-memdb (or any caller) lends its connection
            context.configure(connection=connectable, target_metadata=target_metadata)
            with context.begin_transaction():
                context.run_migrations()
            return
        ...  # your own engine, as before"""
"""Alembic's "sharing a connection" recipe (its cookbook), as :data:`ALEMBIC_ENV` shows it."""

ALEMBIC_ENV = _message(
    "alembic-env",
    "pytest-memdb: {where}: env.py ({env_py}) tried to connect to {url} instead of the "
    "database pytest-memdb builds the template in; it was stopped before connecting, so "
    "nothing was migrated. pytest-memdb puts that database's URL in sqlalchemy.url and "
    "lends a connection to it in config.attributes['connection']. Make env.py take it "
    '(Alembic\'s "sharing a connection" recipe), at the top of run_migrations_online():\n'
    + ALEMBIC_RECIPE.replace("{", "{{").replace("}", "}}")
    + "\nor build its engine from config's sqlalchemy.url instead of its own URL.",
    where="memdb_alembic in pytest.ini '/src/app/alembic.ini' (revision 'head')",
    env_py="/src/app/migrations/env.py",
    url="sqlite:///production.db",
)

SCHEMA_DRIFT = _message(
    "schema-drift",
    "pytest-memdb: the migrated schema does not match the models: the migrations of "
    "{where} and {metadata!r} ({origin}) differ ({count} difference(s), from Alembic's "
    "autogenerate comparison):\n{differences}\nAdd a migration for them (alembic revision "
    "--autogenerate) or change the models.",
    where="memdb_alembic in pytest.ini '/src/app/alembic.ini' (revision 'head')",
    metadata="myapp.models:Base",
    origin="memdb_metadata in pytest.ini",
    count=1,
    differences="  - column author.email: in the models, missing from the migrated table",
)

# --- tests and fixtures that cannot work as written -------------------------------------

ASYNC_TEST_NOT_RUN = _message(
    "async-test-not-run",
    "pytest-memdb: {test} is an `async def` test (it uses {fixtures}), and no plugin ran "
    "it: pytest-asyncio runs only tests marked @pytest.mark.asyncio unless its "
    "asyncio_mode is auto, and anyio's plugin only tests marked @pytest.mark.anyio. Set "
    "`asyncio_mode = auto` in the [pytest] section of your ini file (as the README's quick "
    "start does), or mark the test, or its module (pytestmark = pytest.mark.asyncio), with "
    "@pytest.mark.asyncio, or with @pytest.mark.anyio to run it with anyio's plugin.",
    test="tests/test_books.py::test_add_a_book",
    fixtures="memdb_session",
)

SCOPE_MISMATCH = _message(
    "scope-mismatch",
    "pytest-memdb: the {scope}-scoped fixture {fixture} asks for {wanted}, which is "
    "{wanted_scope}-scoped: pytest cannot give it to a fixture that outlives it "
    "(ScopeMismatch). Data written once for the tests of a {layer_scope} goes through a "
    "layer: ask for {layer} instead, in a {layer_scope}-scoped fixture, and write through it "
    "(`with {layer}.sync_session() as session:`, or `async with {layer}.session() as "
    "session:` in an async fixture). Each test that asks for {fixture} then starts from the "
    "template plus those rows (the docs' how-to on layers).",
    scope="session",
    fixture="authors",
    wanted="memdb_session",
    wanted_scope="function",
    layer_scope="session",
    layer="memdb_suite",
)

ASYNCIO_ONLY = _message(
    "asyncio-only",
    "pytest-memdb: {test} runs on anyio's {backend!r} backend, but the engines and "
    "sessions of pytest-memdb use aiosqlite, which runs on asyncio only (on trio, the first "
    'query fails with "There is no current event loop"). Run the tests that use memdb on '
    'asyncio: define `@pytest.fixture def anyio_backend(): return "asyncio"` in your '
    "conftest.py, or parametrize the test with "
    '@pytest.mark.parametrize("anyio_backend", ["asyncio"]).',
    test="tests/test_api.py::test_create_book[trio]",
    backend="trio",
)

ASYNC_SESSION_IN_DEF_TEST = _message(
    "async-session-in-def-test",
    "pytest-memdb: {test} is a plain `def` test, and memdb_session is an AsyncSession: its "
    "methods return coroutines a def test cannot await, so nothing would run (the test "
    "would pass without its queries). Use memdb_sync_session (a Session on the same "
    "database) in a def test, or write the test as `async def`.",
    test="tests/test_books.py::test_count_books",
)

FACTORY_NEEDS_IO = _message(
    "factory-needs-io",
    "pytest-memdb: {factory} has {what}, which needs database I/O, but in this test it "
    "writes through memdb_session, an AsyncSession, and synchronous factory code cannot "
    "wait for async I/O. Either set sqlalchemy_session_persistence = None (the rows are "
    "written when the test awaits memdb_session.flush() or commit(), or runs a query), or "
    "create them in `await memdb_session.run_sync(lambda _: {factory}.create())`, or use "
    "memdb_sync_session in this test (factories then write through it).",
    factory="AuthorFactory",
    what="sqlalchemy_session_persistence = 'commit'",
)

POLYFACTORY_CREATE_SYNC = _message(
    "polyfactory-create-sync",
    "pytest-memdb: {factory}.create_sync() needs database I/O (polyfactory flushes or "
    "commits), but in this test factories write through memdb_session, an AsyncSession, "
    "whose I/O synchronous code cannot wait for. Use `await {factory}.create_async()` (or "
    "create_batch_async), or use memdb_sync_session in this test.",
    factory="AuthorPolyFactory",
)

# --- what a test did ----------------------------------------------------------------------

ROLLBACK_ESCAPE = _message(
    "rollback-escape",
    "pytest-memdb: this test's SQL ended the plugin's outer transaction (rollback "
    "isolation): {how}. That happens with ROLLBACK, COMMIT or END run as text (on SQLite "
    "also INSERT OR ROLLBACK on a conflict, a trigger's RAISE(ROLLBACK, ...), or an "
    "interrupted write): the database then committed or discarded what the test had "
    "written, not the plugin, so the test did not run as rollback isolation promises. The "
    "plugin began a new outer transaction for the rest of the test, and the next test "
    "starts from the template again (the database restored; on PostgreSQL, a new clone). A "
    "test that needs its own transaction control runs in copy isolation: "
    '@pytest.mark.memdb(isolation="copy").',
    how="the statement 'COMMIT' ended it",
)

TEST_ENDED = _message(
    "test-ended",
    "pytest-memdb: this session or sessionmaker was handed to a test that has ended; its "
    "database is another test's now. Work a test starts (an asyncio task, a thread, a "
    "background task) must finish before the test returns: await or join it in the test.",
)

RESET_BLOCKED = _message(
    "reset-blocked",
    "pytest-memdb: memdb.reset() could not restore {name}: a connection the test opened "
    "itself (an engine built from memdb_url, a raw sqlite3 connection) holds a read or a "
    "write open on it. Commit or close it before the reset.",
    name="memdb-main-4711-3f2a9c1e-3",
)

STRICT = _message(
    "strict",
    "pytest-memdb (memdb_strict): {who} opened the {kind} database {database!r} through "
    "SQLAlchemy, which is not one of {whose}, at {where}. {advice}{nested}",
    who="this test",
    kind="SQLite",
    database="/src/app/app.db",
    whose="its memdb databases (memdb-main-4711-3f2a9c1e-3)",
    where="/src/app/tests/test_api.py:12 (test_list_books)",
    advice="An engine the swap onto memdb missed? Name it (or the sessionmaker that uses it) "
    "in memdb_bind, list its URL in memdb_takeover, or build it from memdb_url.",
    nested="",
)

# --- warnings: the run goes on ----------------------------------------------------------

HOT_JOURNAL = _message(
    "hot-journal",
    "pytest-memdb: the fixture file {path!r} (from {origin}) has a hot journal beside it "
    "({journal!r}): a process that was writing to the file stopped (crashed or was killed) "
    "in the middle of a transaction, so the file holds part of an unfinished write. Its "
    "committed state was loaded instead: SQLite rolled the journal back in a private copy "
    "of both files (deleted since); your two files were only read and are unchanged. To "
    "repair the file itself, open it once read-write (for example: sqlite3 {path!r} "
    "'PRAGMA quick_check'), which rolls the journal back; do not delete the -journal file, "
    "or the unfinished write stays in the file.",
    path="/src/app/data/books.sqlite",
    origin="memdb_file in pytest.ini",
    journal="/src/app/data/books.sqlite-journal",
)

IGNORED_PRAGMA = _message(
    "ignored-pragma",
    "pytest-memdb: {statement!r} did nothing: SQLite ignores PRAGMA foreign_keys inside a "
    "transaction, and rollback isolation runs every test inside one, so foreign keys stay "
    "{state} in this test. Set it on every connection before the test's transaction "
    "begins: memdb_pragmas = foreign_keys={setting} in the ini file (or run the test in "
    'copy isolation: @pytest.mark.memdb(isolation="copy")).',
    statement="PRAGMA foreign_keys=ON",
    state="OFF",
    setting="ON",
)
