"""Generated bad input: damaged fixture files and odd option values (hypothesis).

Every case ends in one of two ways, and the property says which is allowed:

* a specific :class:`FixtureFileError` (or usage error) that names the option, the
  path and what is wrong with the file; or
* a database whose every schema row, table row and header pragma equals what
  SQLite itself reads from the same bytes (a flipped byte that SQLite's checks
  cannot notice may load: then the copy must be faithful, not "fixed" or partial).

Never a hang, an INTERNALERROR, a traceback, or a changed source file or folder.
Most properties call the core (``load_file``) directly, which is what a fixture
does; a few run real inner pytest sessions to check the same end to end.
"""

from __future__ import annotations

import functools
import inspect
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from pytest_memdb.core.config import ISOLATION_MODES, parse_isolation
from pytest_memdb.errors import FixtureFileError, MemdbError
from pytest_memdb.messages import BAD_VALUE, FIXTURE_FILE
from pytest_memdb.sqlite.loading import load_file
from pytest_memdb.sqlite.memory import unique_name
from tests.helpers import digest, make_sqlite, write_ini

INNER_ARGS = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest")
PYTESTER = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
ORIGIN = "--memdb-file"

# What SQLite or our checks may say about a damaged file: each is specific.
PROBLEMS = (
    "it is empty (0 bytes), not a SQLite database.",
    "it is not a SQLite database (its first bytes are ",
    "it is not a usable SQLite database (",
    "it is corrupt (",
    "it is in an unsupported file format (schema format ",
)


def build_source(path: Path) -> Path:
    """A fixture file with an index, overflow pages, a second table and a user_version."""
    make_sqlite(path, users=120)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE note (id INTEGER PRIMARY KEY, user_id INTEGER, body TEXT)")
    conn.executemany(
        "INSERT INTO note (user_id, body) VALUES (?, ?)",
        [(i % 120 + 1, f"note {i} " + "x" * (i * 97 % 5000)) for i in range(40)],
    )
    conn.execute("PRAGMA user_version = 42")
    conn.execute("PRAGMA application_id = 7")
    conn.commit()
    conn.close()
    return path


@functools.cache
def source() -> bytes:
    """The undamaged file's bytes (built once; not a fixture, so hypothesis does not print it)."""
    with tempfile.TemporaryDirectory() as scratch:
        data = build_source(Path(scratch, "app.sqlite")).read_bytes()
    assert len(data) // int.from_bytes(data[16:18], "big") >= 10, "want a file of many pages"
    return data


def read_all(conn: sqlite3.Connection) -> tuple[Any, ...]:
    """Everything a test could read: schema, every table's rows (as bytes), header pragmas."""
    conn.text_factory = bytes
    schema = conn.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
    ).fetchall()
    tables = {}
    for kind, name, *_ in schema:
        if kind == b"table":
            quoted = name.decode("utf-8", "replace").replace('"', '""')
            try:
                tables[name] = conn.execute(f'SELECT * FROM "{quoted}"').fetchall()
            except UnicodeDecodeError:
                # A damaged page can leave a column name that is not UTF-8, which
                # Python's sqlite3 cannot decode; compare the row count instead.
                count = conn.execute(f'SELECT count(*) FROM "{quoted}"').fetchone()
                tables[name] = [("column names not UTF-8", count)]
    pragmas = [
        conn.execute(f"PRAGMA {name}").fetchone()[0]
        for name in ("user_version", "application_id", "encoding", "page_size")
    ]
    return schema, tables, pragmas


def what_sqlite_reads(data: bytes) -> tuple[str, Any]:
    """What plain ``sqlite3`` reads from these bytes (on a private copy of them)."""
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch, "oracle.sqlite")
        copy.write_bytes(data)
        try:
            conn = sqlite3.connect(copy)
            try:
                return "ok", read_all(conn)
            finally:
                conn.close()
        except sqlite3.Error as exc:
            return "error", str(exc)


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


@contextmanager
def fresh_folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="memdb-bad-") as scratch:
        yield Path(scratch)


def load_and_judge(path: Path, data: bytes) -> str:
    """Load ``path`` (holding ``data``) as a fixture would; return "error" or "faithful".

    Fails the test on anything else: an unexpected exception, an unspecific or
    misaddressed message, a copy that differs from what SQLite reads, a changed file
    or a file left beside it.
    """
    before, beside = digest(path), listing(path.parent)
    try:
        database = load_file(path, unique_name("bad"), origin=ORIGIN)
    except FixtureFileError as exc:
        message = str(exc)
        prefix = f"pytest-memdb: the fixture file {str(path)!r} (from {ORIGIN}): "
        assert message.startswith(prefix), message
        assert message[len(prefix) :].startswith(PROBLEMS), message
        outcome = "error"
    else:
        try:
            copied = read_all(database.anchor)
        finally:
            database.close()
        assert what_sqlite_reads(data) == ("ok", copied), "the copy differs from the file"
        outcome = "faithful"
    assert digest(path) == before
    assert listing(path.parent) == beside
    return outcome


# --- damaged files, through the core -----------------------------------------------------

damage = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True)),
    st.tuples(
        st.just("header"),
        st.lists(st.tuples(st.integers(0, 99), st.integers(1, 255)), min_size=1, max_size=3),
    ),
    st.tuples(
        st.just("pages"),
        st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), min_size=1, max_size=6),
    ),
)


def damaged(data: bytes, how: tuple[str, Any]) -> bytes:
    kind, detail = how
    if kind == "truncate":
        return data[: int(len(data) * detail)]
    out = bytearray(data)
    if kind == "header":
        for offset, mask in detail:
            out[offset] ^= mask
    else:
        for where, mask in detail:
            out[min(100 + int((len(data) - 100) * where), len(data) - 1)] ^= mask
    return bytes(out)


@settings(max_examples=800, deadline=None)
@given(how=damage)
@example(how=("pages", [(0.032072508854712474, 128)]))  # a column name that is not UTF-8
def test_damaged_file_errors_specifically_or_copies_faithfully(how: tuple[str, Any]) -> None:
    data = damaged(source(), how)
    with fresh_folder() as folder:
        path = folder / "app.sqlite"
        path.write_bytes(data)
        outcome = load_and_judge(path, data)
    if how[0] == "truncate" and len(data) < len(source()) - 4096:
        assert outcome == "error", "a file missing whole pages must not load"
    event(f"{how[0]}: {outcome}")


def test_a_flipped_byte_in_a_value_loads_as_the_file_holds_it() -> None:
    """The faithful branch is real: a byte SQLite cannot check is copied, not repaired."""
    data = bytearray(source())
    at = data.index(b"note 39 xxx") + len("note 39 ")
    data[at] = ord("y")
    with fresh_folder() as folder:
        path = folder / "app.sqlite"
        path.write_bytes(bytes(data))
        assert load_and_judge(path, bytes(data)) == "faithful"
        database = load_file(path, unique_name("flip"), origin=ORIGIN)
        try:
            body = database.anchor.execute("SELECT body FROM note WHERE id = 40").fetchone()[0]
        finally:
            database.close()
    assert body.startswith("note 39 yxx")


@settings(max_examples=60, deadline=None)
@given(number=st.integers(5, 2**32 - 1))
def test_schema_format_from_the_future_is_refused(number: int) -> None:
    data = bytearray(source())
    data[44:48] = number.to_bytes(4, "big")
    with fresh_folder() as folder:
        path = folder / "future.sqlite"
        path.write_bytes(bytes(data))
        with pytest.raises(FixtureFileError) as info:
            load_file(path, unique_name("future"), origin=ORIGIN)
        assert str(info.value) == (
            f"pytest-memdb: the fixture file {str(path)!r} (from {ORIGIN}): it is in an "
            f"unsupported file format (schema format {number} in its header; "
            f"SQLite {sqlite3.sqlite_version} reads formats 1 to 4).\nSee {FIXTURE_FILE.link}"
        )
        assert path.read_bytes() == data
        assert listing(folder) == ["future.sqlite"]


@settings(max_examples=30, deadline=None)
@given(write=st.sampled_from([1, 2]), read=st.sampled_from([1, 2]))
def test_wal_flag_in_either_header_byte_loads_and_leaves_nothing_beside(
    write: int, read: int
) -> None:
    """Bytes 18/19 are the write/read format versions; 2 means WAL (found: 1/2 broke)."""
    data = bytearray(source())
    data[18:20] = bytes([write, read])
    with fresh_folder() as folder:
        path = folder / "app.sqlite"
        path.write_bytes(bytes(data))
        assert load_and_judge(path, bytes(data)) == "faithful"


# --- odd paths, through the core ---------------------------------------------------------

ODD = "?#% ~&=;'\"\\\t\n:*[]{}é名🙂\u200b\u2028"
name_char = st.one_of(
    st.sampled_from(list(ODD)),
    st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)),
)
text_name = st.text(name_char, min_size=1, max_size=40)
# Names that are not valid UTF-8: how Python spells them is with surrogate escapes.
byte_name = st.lists(
    st.integers(1, 255).filter(lambda b: b != ord("/")), min_size=1, max_size=30
).map(bytes)
component = st.one_of(text_name, byte_name.map(os.fsdecode)).filter(
    lambda n: n not in (".", "..") and len(os.fsencode(n)) <= 255
)


@st.composite
def odd_location(draw: st.DrawFn) -> tuple[list[str], int, bool]:
    folders = draw(st.lists(component, max_size=3))
    padding = draw(st.integers(0, 3))  # 200-byte folders: 3 make the path longer than 504
    absolute_links = draw(st.booleans())
    return [*folders, draw(component)], padding, absolute_links


def place(root: Path, parts: list[str], padding: int, data: bytes) -> Path:
    folder = root.joinpath(*(["p" * 200] * padding), *parts[:-1])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / parts[-1]
    path.write_bytes(data)
    return path


@settings(max_examples=150, deadline=None)
@given(location=odd_location(), links=st.integers(0, 3))
def test_odd_paths_and_symlink_chains_load_the_file(
    location: tuple[list[str], int, bool], links: int
) -> None:
    parts, padding, absolute_links = location
    with fresh_folder() as root:
        real = place(root, parts, padding, source())
        path = real
        for i in range(links):
            link = root / f"link {i} #?"
            link.symlink_to(path if absolute_links else os.path.relpath(path, root))
            path = link
        assert load_and_judge(path, source()) == "faithful"


@settings(max_examples=40, deadline=None)
@given(length=st.integers(256, 1000), links=st.integers(1, 3))
def test_too_long_names_and_symlink_loops_are_named_errors(length: int, links: int) -> None:
    with fresh_folder() as root:
        too_long = root / ("n" * length)
        with pytest.raises(FixtureFileError) as info:
            load_file(too_long, unique_name("long"), origin=ORIGIN)
        assert str(info.value) == (
            f"pytest-memdb: the fixture file {str(too_long)!r} (from {ORIGIN}): "
            f"it cannot be inspected (File name too long).\nSee {FIXTURE_FILE.link}"
        )
        chain = [root / f"loop{i}.sqlite" for i in range(links)]
        for i, link in enumerate(chain):
            link.symlink_to(chain[(i + 1) % links].name)
        with pytest.raises(FixtureFileError) as info:
            load_file(chain[0], unique_name("loop"), origin=ORIGIN)
        assert str(info.value).endswith(
            f"{str(chain[0])!r} (from {ORIGIN}): "
            f"it cannot be inspected (Too many levels of symbolic links).\nSee {FIXTURE_FILE.link}"
        )
        assert listing(root) == sorted(p.name for p in chain)


# --- isolation names, through the core ---------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(
    value=st.one_of(
        st.text(max_size=20),
        st.sampled_from(ISOLATION_MODES).map(lambda m: f" {m.upper()}\t"),
        st.integers(),
        st.none(),
        st.lists(st.sampled_from(ISOLATION_MODES), max_size=2),
    )
)
def test_isolation_names_are_accepted_or_listed(value: object) -> None:
    if isinstance(value, str) and value.strip().lower() in ISOLATION_MODES:
        assert parse_isolation(value, "memdb_isolation") == value.strip().lower()
        return
    with pytest.raises(MemdbError) as info:
        parse_isolation(value, "memdb_isolation")
    assert str(info.value) == (
        f"pytest-memdb: memdb_isolation got {value!r}; allowed values: copy, rollback, session."
        f"\nSee {BAD_VALUE.link}"
    )


# --- end to end: inner pytest runs -------------------------------------------------------

COUNTING_TEST = """
import pytest
from sqlalchemy import text
{marker}

def test_reads_the_file(memdb, memdb_sync_session):
    assert str(memdb.source) == {source!r}
    assert memdb_sync_session.execute(text("SELECT count(*) FROM user")).scalar_one() == 120

def test_plain():
    pass
"""


def ini_safe(raw: str) -> bool:
    """Whether an ini line can carry ``raw`` as it is (no edge spaces, no line breaks)."""
    return raw == raw.strip() and raw.isprintable()


@pytest.mark.slow
@settings(PYTESTER, max_examples=25)
@given(
    location=odd_location(),
    form=st.sampled_from(["relative", "absolute", "home"]),
    origin=st.sampled_from(["cli", "marker", "ini"]),
    isolation=st.sampled_from(ISOLATION_MODES),
)
def test_odd_paths_end_to_end(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    location: tuple[list[str], int, bool],
    form: str,
    origin: str,
    isolation: str,
) -> None:
    parts, padding, _ = location
    root = Path(tempfile.mkdtemp(dir=pytester.path, prefix="case "))
    if form == "home":
        monkeypatch.setenv("HOME", str(root))
    real = place(root, parts, padding, source())
    rel = real.relative_to(root)
    raw = {
        "relative": str(real.relative_to(pytester.path)),
        "absolute": str(real),
        "home": os.path.join("~", rel),
    }[form]
    if origin == "ini" and not ini_safe(raw):
        origin = "cli"
    write_ini(
        pytester, memdb_isolation=isolation, **({"memdb_file": raw} if origin == "ini" else {})
    )
    marker = f"pytestmark = pytest.mark.memdb(file={raw!r})" if origin == "marker" else ""
    pytester.makepyfile(test_odd=COUNTING_TEST.format(marker=marker, source=str(real.resolve())))
    args = [f"--memdb-file={raw}"] if origin == "cli" else []
    before, beside = digest(real), listing(real.parent)

    result = pytester.runpytest(*INNER_ARGS, *args)

    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=2)
    assert digest(real) == before
    assert listing(real.parent) == beside
    shutil.rmtree(root)


ORACLE_TEST = """
import sqlite3
from pathlib import Path

from test_bad_input_oracle import read_all


def test_copy_is_what_the_file_holds(memdb):
    with sqlite3.connect(memdb.database.sqlite_uri, uri=True) as conn:
        copied = read_all(conn)
    conn.close()
    with sqlite3.connect(Path({oracle!r})) as conn:
        expected = read_all(conn)
    conn.close()
    assert copied == expected

def test_plain():
    pass
"""


@pytest.mark.slow
@settings(PYTESTER, max_examples=20)
@given(how=damage, isolation=st.sampled_from(ISOLATION_MODES))
def test_damaged_file_end_to_end(
    pytester: pytest.Pytester, how: tuple[str, Any], isolation: str
) -> None:
    data = damaged(source(), how)
    case = Path(tempfile.mkdtemp(dir=pytester.path, prefix="case "))
    path, oracle = case / "data" / "app #1.sqlite", case / "oracle" / "app.sqlite"
    for target in (path, oracle):
        target.parent.mkdir()
        target.write_bytes(data)
    pytester.makepyfile(
        test_bad_input_oracle="import sqlite3\nfrom typing import Any\n\n"
        + inspect.getsource(read_all),
        test_damaged=ORACLE_TEST.format(oracle=str(oracle)),
    )
    write_ini(pytester, memdb_isolation=isolation)
    before = digest(path)

    result = pytester.runpytest(*INNER_ARGS, f"--memdb-file={path}")

    outcomes = result.parseoutcomes()
    if outcomes.get("errors"):
        result.assert_outcomes(passed=1, errors=1)
        prefix = f"pytest-memdb: the fixture file {str(path)!r} (from --memdb-file): "
        message = [line for line in result.outlines if line.startswith(prefix)]
        assert message, result.stdout.str()
        assert message[0][len(prefix) :].startswith(PROBLEMS)
        event("error")
    else:
        result.assert_outcomes(passed=2)
        event("faithful")
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
    result.stdout.no_fnmatch_line("*Traceback*")
    assert digest(path) == before
    assert listing(path.parent) == ["app #1.sqlite"]


# --- a file that changes between runs, or goes away after start-up ------------------------

COUNT_TESTS = """
from sqlalchemy import text

def count(session):
    return session.execute(text("SELECT count(*) FROM user")).scalar_one()

def test_1(memdb_sync_session):
    assert count(memdb_sync_session) == {users}

def test_2(memdb_sync_session):
    assert count(memdb_sync_session) == {users}
"""


@pytest.mark.slow
@settings(PYTESTER, max_examples=6)
@given(
    first=st.integers(0, 50),
    second=st.integers(0, 50),
    isolation=st.sampled_from(ISOLATION_MODES),
)
def test_a_file_changed_between_runs_is_read_afresh(
    pytester: pytest.Pytester, first: int, second: int, isolation: str
) -> None:
    path = pytester.path / "data" / "app.sqlite"
    write_ini(pytester, memdb_file="data/app.sqlite", memdb_isolation=isolation)
    for users in (first, second):
        pytester.makepyfile(test_counts=COUNT_TESTS.format(users=users))
        path.unlink(missing_ok=True)
        make_sqlite(path, users=users)
        result = pytester.runpytest(*INNER_ARGS)
        result.assert_outcomes(passed=2)


VANISHING = """
import os
from pathlib import Path

from sqlalchemy import text

def count(session):
    return session.execute(text("SELECT count(*) FROM user")).scalar_one()

def test_1(memdb_sync_session):
    assert count(memdb_sync_session) == 5
    {after_first}

def test_2(memdb_sync_session):
    assert count(memdb_sync_session) == 5
"""


@pytest.mark.parametrize("isolation", ISOLATION_MODES)
@pytest.mark.parametrize("when", ["before-first-use", "after-first-use", "replaced-by-text"])
def test_a_file_that_goes_away_after_start_up(
    pytester: pytest.Pytester, isolation: str, when: str
) -> None:
    """Once copied, the template serves the run; gone before first use, a named error."""
    path = make_sqlite(pytester.path / "data" / "app.sqlite", users=5)
    write_ini(pytester, memdb_file="data/app.sqlite", memdb_isolation=isolation)
    gone = "Path('data/app.sqlite').unlink()"
    pytester.makeconftest(
        f"from pathlib import Path\n\ndef pytest_collection_finish(session):\n    {gone}\n"
        if when == "before-first-use"
        else ""
    )
    after_first = {
        "before-first-use": "pass",
        "after-first-use": gone,
        "replaced-by-text": "Path('data/app.sqlite').write_text('not a database')",
    }[when]
    pytester.makepyfile(test_vanish=VANISHING.format(after_first=after_first))

    result = pytester.runpytest(*INNER_ARGS)

    if when == "before-first-use":
        result.assert_outcomes(errors=2)
        message = f"pytest-memdb: the fixture file {str(path)!r} (from memdb_file in pytest.ini)"
        result.stdout.fnmatch_lines([f"{message}: it does not exist."] * 2)
    else:
        result.assert_outcomes(passed=2)
    result.stdout.no_fnmatch_line("*INTERNALERROR*")


# --- option values that cannot name a file -------------------------------------------------


@pytest.mark.parametrize("origin", ["cli", "ini", "marker"])
@pytest.mark.parametrize("raw", ["~no-such-user-here/app.sqlite", "data/a\x00b.sqlite"])
def test_path_values_that_name_no_file_are_reported(
    pytester: pytest.Pytester, app_db: Path, origin: str, raw: str
) -> None:
    if origin == "ini" and "\x00" in raw:
        raw = raw.replace("\x00", "")  # an ini file cannot hold a NUL; test the ~ case there
        raw = "~no-such-user-here/app.sqlite"
    write_ini(pytester, **({"memdb_file": raw} if origin == "ini" else {}))
    marker = f"pytestmark = pytest.mark.memdb(file={raw!r})" if origin == "marker" else ""
    pytester.makepyfile(test_odd=COUNTING_TEST.format(marker=marker, source=""))
    args = [f"--memdb-file={raw}"] if origin == "cli" else []
    before = digest(app_db)

    result = pytester.runpytest(*INNER_ARGS, *args)

    name = {"cli": "--memdb-file", "ini": "memdb_file in pytest.ini"}.get(
        origin, "@pytest.mark.memdb(file=...)"
    )
    problem = (
        "'~no-such-user-here' is not the home folder of any user on this system."
        if raw.startswith("~")
        else "a path cannot hold a NUL character."
    )
    expected = f"pytest-memdb: {name} got {raw!r}; {problem}"
    if origin == "marker":
        result.assert_outcomes(passed=1, errors=1)
        result.stdout.fnmatch_lines([expected])
    else:
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([f"ERROR: {expected}"])
    for output in (result.stdout, result.stderr):
        output.no_fnmatch_line("*INTERNALERROR*")
        output.no_fnmatch_line("*Traceback*")
    assert digest(app_db) == before
