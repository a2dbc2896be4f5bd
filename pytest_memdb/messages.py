"""The errors a user meets first, each written once here, with a stable id.

Each :class:`Message` is a ``str.format`` template. What the plugin prints is the template
filled in, then a line that links to the message's entry in the README's Troubleshooting
section (``...#troubleshooting-<id>``); that entry quotes the template filled in with the
message's ``example`` values. ``tests/test_messages.py`` checks both ways: every message
is quoted there as it renders, every quote there is a message of this module, and every
message is used by the plugin. An id never changes once released: it is the anchor users
follow, and the future docs site's errors page keeps it.

Cheap to import (the plugin module imports it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

DOCS = "https://github.com/pytest-memdb/pytest-memdb"


@dataclass(frozen=True)
class Message:
    """One error text: ``message(**fields)`` is what the user reads."""

    id: str
    template: str
    example: Mapping[str, object] = field(default_factory=dict)
    """Values the README's quote is rendered with: what a user would typically see."""

    @property
    def anchor(self) -> str:
        return f"troubleshooting-{self.id}"

    @property
    def link(self) -> str:
        return f"{DOCS}#{self.anchor}"

    def text(self, **fields: object) -> str:
        """The message alone, as the README quotes it."""
        return self.template.format(**fields)

    def __call__(self, **fields: object) -> str:
        """The message as printed: the text, and where it is explained."""
        return f"{self.text(**fields)}\nSee {self.link}"

    def example_text(self) -> str:
        return self.text(**self.example)


MESSAGES: dict[str, Message] = {}
"""Every message, by id, in the order the README lists them."""


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

SEEDING_FAILED = _message(
    "seeding-failed",
    "pytest-memdb: seeding the template failed {step}: {error}",
    step="while running statement 2 of the SQL script '/src/app/tests/seed.sql' (entry "
    "'tests/seed.sql' in memdb_load in pytest.ini): INSERT INTO user (id, name) VALUES (1, 'ada')",
    error="IntegrityError: UNIQUE constraint failed: user.id",
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
    "template plus those rows (the README's section on layers).",
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

# --- what a test did ----------------------------------------------------------------------

ROLLBACK_ESCAPE = _message(
    "rollback-escape",
    "pytest-memdb: this test's SQL ended the plugin's outer transaction (rollback "
    "isolation): {how}. That happens with ROLLBACK, COMMIT or END run as text, INSERT OR "
    "ROLLBACK on a conflict, a trigger's RAISE(ROLLBACK, ...), or an interrupted write: "
    "SQLite then committed or discarded what the test had written, not the plugin, so the "
    "test did not run as rollback isolation promises. The plugin began a new outer "
    "transaction for the rest of the test, and the database was restored from the "
    "template for the next test. A test that needs its own transaction control runs in "
    'copy isolation: @pytest.mark.memdb(isolation="copy").',
    how="the statement 'COMMIT' ended it",
)

TEST_ENDED = _message(
    "test-ended",
    "pytest-memdb: this session or sessionmaker was handed to a test that has ended; its "
    "database is another test's now. Work a test starts (an asyncio task, a thread, a "
    "background task) must finish before the test returns: await or join it in the test.",
)
