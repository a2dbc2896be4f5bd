"""Options (command line over ini, where relative paths start), help, header, lazy
imports, echo, and the errors a user meets with a bad file or a bad setting.

Every error must reach the user as a plain message on the test that asked for a
database, naming the resolved path, the option it came from and what is wrong,
while tests that do not use memdb still pass and the file is left as it was.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest

import pytest_memdb.core.registry  # noqa: F401  (see INNER_ARGS)
from tests.helpers import digest, make_sqlite, write_ini

# pytester restores sys.modules after each in-process run, so a module first
# imported inside an inner run is imported again by the next one. SQLAlchemy is
# imported once above instead, and hypothesis's plugin (it imports hypothesis at
# the end of every run) is switched off: that keeps each inner run well under a second.
INNER_ARGS = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest")

COUNTING_TEST = """
from pathlib import Path

from sqlalchemy import text


def test_count(memdb, memdb_sync_session):
    assert memdb.source == Path({source!r})
    assert memdb_sync_session.execute(text("SELECT count(*) FROM user")).scalar() == {users}
"""


def counting_test(source: Path, users: int) -> str:
    return COUNTING_TEST.format(source=str(source.resolve()), users=users)


# --- which option wins, and where relative paths start --------------------------------


def test_command_line_file_beats_ini_file(pytester: pytest.Pytester, app_db: Path) -> None:
    other = make_sqlite(pytester.path / "other.sqlite", users=6)
    write_ini(pytester, memdb_file="data/app.sqlite")
    pytester.makepyfile(counting_test(other, users=6))

    result = pytester.runpytest(*INNER_ARGS, "--memdb-file", "other.sqlite")

    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"memdb: file={other} (--memdb-file), isolation=copy, restore=*"])


def test_ini_file_is_used_without_command_line(pytester: pytest.Pytester, app_db: Path) -> None:
    make_sqlite(pytester.path / "other.sqlite", users=6)
    write_ini(pytester, memdb_file="data/app.sqlite")
    pytester.makepyfile(counting_test(app_db, users=3))

    result = pytester.runpytest(*INNER_ARGS)

    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [f"memdb: file={app_db} (memdb_file in pytest.ini), isolation=copy, restore=*"]
    )


ISOLATION_TESTS = """
from sqlalchemy import text

EXPECTED = {expected!r}


def count(session):
    return session.execute(text("SELECT count(*) FROM user")).scalar_one()


def test_1_writes(memdb, memdb_sync_session):
    assert memdb.isolation == EXPECTED
    memdb_sync_session.execute(text("INSERT INTO user (name) VALUES ('kept?')"))
    memdb_sync_session.commit()
    assert count(memdb_sync_session) == 4


def test_2_sees_write_only_in_session_mode(memdb, memdb_sync_session):
    assert memdb.isolation == EXPECTED
    assert count(memdb_sync_session) == (4 if EXPECTED == "session" else 3)
"""


@pytest.mark.parametrize(
    ("ini", "cli", "expected"),
    [
        ("rollback", None, "rollback"),
        ("rollback", "session", "session"),
        ("session", "copy", "copy"),
        ("copy", "rollback", "rollback"),
    ],
)
def test_command_line_isolation_beats_ini(
    pytester: pytest.Pytester, app_db: Path, ini: str, cli: str | None, expected: str
) -> None:
    write_ini(pytester, memdb_file="data/app.sqlite", memdb_isolation=ini)
    pytester.makepyfile(ISOLATION_TESTS.format(expected=expected))
    args = ["--memdb-isolation", cli] if cli else []

    result = pytester.runpytest(*INNER_ARGS, *args)

    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"memdb: file=* isolation={expected}, restore=*"])


@pytest.fixture
def nested_project(pytester: pytest.Pytester, app_db: Path) -> Path:
    """The ini at the project root; a ``sub`` folder with its own, different ``data/app.sqlite``.

    Resolving the ini's ``data/app.sqlite`` against the wrong folder would find
    the seven-user file instead of the three-user one.
    """
    write_ini(pytester, memdb_file="data/app.sqlite")
    sub = pytester.mkpydir("sub")
    make_sqlite(sub / "data" / "app.sqlite", users=7)
    return sub


@pytest.mark.parametrize("rootdir", [False, True])
def test_ini_relative_path_starts_at_the_ini_folder_from_a_subfolder(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    app_db: Path,
    nested_project: Path,
    rootdir: bool,
) -> None:
    (nested_project / "test_sub.py").write_text(counting_test(app_db, users=3))
    monkeypatch.chdir(nested_project)
    args = [f"--rootdir={nested_project}"] if rootdir else []

    result = pytester.runpytest(*INNER_ARGS, *args)

    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"memdb: file={app_db} (memdb_file in pytest.ini)*"])


def test_ini_given_with_c_resolves_against_its_own_folder(pytester: pytest.Pytester) -> None:
    """``-c config/pytest.ini``: the ini's folder, not the rootdir or the cwd, is the base."""
    config = pytester.mkdir("config")
    db = make_sqlite(config / "fixtures" / "app.sqlite", users=5)
    make_sqlite(pytester.path / "fixtures" / "app.sqlite", users=2)
    (config / "pytest.ini").write_text(
        "[pytest]\nmemdb_file = fixtures/app.sqlite\nasyncio_mode = auto\n"
        "asyncio_default_fixture_loop_scope = function\n"
    )
    test_file = pytester.makepyfile(counting_test(db, users=5))

    result = pytester.runpytest(*INNER_ARGS, "-c", "config/pytest.ini", str(test_file))

    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"memdb: file={db} (memdb_file in pytest.ini)*"])


def test_command_line_relative_path_starts_at_the_current_folder(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, nested_project: Path
) -> None:
    sub_db = nested_project / "data" / "app.sqlite"
    (nested_project / "test_sub.py").write_text(counting_test(sub_db, users=7))
    monkeypatch.chdir(nested_project)

    result = pytester.runpytest(*INNER_ARGS, "--memdb-file", "data/app.sqlite")

    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"memdb: file={sub_db} (--memdb-file), isolation=copy, restore=*"])


# --- help, report header, switching the plugin off --------------------------------------


def test_help_lists_options_and_ini_settings(pytester: pytest.Pytester) -> None:
    write_ini(pytester)
    result = pytester.runpytest("--help")

    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            "*--memdb-file=PATH*",
            "*--memdb-isolation=MODE*",
            "*copy, rollback, session*",
            "*--memdb-echo*",
        ]
    )
    result.stdout.fnmatch_lines(
        ["*memdb_file (string):*", "*memdb_isolation (string):*", "*memdb_echo (bool):*"]
    )


def test_header_shows_file_and_isolation_when_configured(
    pytester: pytest.Pytester, app_db: Path
) -> None:
    write_ini(pytester, memdb_file="data/app.sqlite", memdb_isolation="rollback")
    pytester.makepyfile("def test_plain():\n    pass\n")

    result = pytester.runpytest(*INNER_ARGS)

    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [f"memdb: file={app_db} (memdb_file in pytest.ini), isolation=rollback, restore=*"]
    )


def test_header_has_no_memdb_line_without_a_file(pytester: pytest.Pytester) -> None:
    write_ini(pytester, memdb_isolation="session")
    pytester.makepyfile("def test_plain():\n    pass\n")

    result = pytester.runpytest(*INNER_ARGS)

    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["plugins:*memdb-*"])
    result.stdout.no_fnmatch_line("*memdb:*")


def test_plugin_can_be_switched_off(pytester: pytest.Pytester, app_db: Path) -> None:
    write_ini(pytester, memdb_file="data/app.sqlite")
    pytester.makepyfile(
        """
        def test_wants_db(memdb_session):
            pass

        def test_plain():
            pass
        """
    )

    result = pytester.runpytest(*INNER_ARGS, "-p", "no:memdb")

    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*fixture 'memdb_session' not found*"])
    result.stdout.no_fnmatch_line("*memdb: file=*")
    result.stdout.no_fnmatch_line("*INTERNALERROR*")


# --- lazy imports (fresh interpreter per run) -------------------------------------------


def test_runs_without_memdb_fixtures_do_not_import_sqlalchemy(
    pytester: pytest.Pytester, app_db: Path
) -> None:
    write_ini(pytester, memdb_file="data/app.sqlite")
    pytester.makepyfile(
        """
        import sys

        def test_nothing_heavy_loaded():
            heavy = [m for m in ("sqlalchemy", "aiosqlite", "pytest_memdb.core.registry")
                     if m in sys.modules]
            assert heavy == []
            assert "pytest_memdb.plugin" in sys.modules
        """
    )

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"memdb: file={app_db} (memdb_file in pytest.ini)*"])


def test_runs_with_memdb_fixtures_import_sqlalchemy(
    pytester: pytest.Pytester, app_db: Path
) -> None:
    write_ini(pytester, memdb_file="data/app.sqlite")
    pytester.makepyfile(
        """
        import sys

        def test_loaded(memdb_url):
            assert memdb_url.startswith("sqlite+aiosqlite:///file:/memdb-")
            assert "sqlalchemy" in sys.modules
            assert "aiosqlite" in sys.modules
        """
    )

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    result.assert_outcomes(passed=1)


# --- echo ---------------------------------------------------------------------------------

ECHO_TESTS = """
from sqlalchemy import text


def test_sync(memdb_sync_session):
    memdb_sync_session.execute(text("SELECT count(*) AS echo_probe_sync FROM user")).scalar()


async def test_async(memdb_session):
    await memdb_session.execute(text("SELECT count(*) AS echo_probe_async FROM user"))
"""


def test_echo_on_the_command_line_prints_sql(pytester: pytest.Pytester, app_db: Path) -> None:
    write_ini(pytester, memdb_file="data/app.sqlite")
    pytester.makepyfile(ECHO_TESTS)

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s", "--memdb-echo")

    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*SELECT count(*) AS echo_probe_sync FROM user*",
            "*SELECT count(*) AS echo_probe_async FROM user*",
        ]
    )


def test_echo_from_ini_shows_sql_in_failure_output(pytester: pytest.Pytester, app_db: Path) -> None:
    write_ini(pytester, memdb_file="data/app.sqlite", memdb_echo="true")
    pytester.makepyfile(
        ECHO_TESTS
        + """

def test_fails_after_query(memdb_sync_session):
    memdb_sync_session.execute(text("SELECT name AS echo_probe_failing FROM user")).all()
    assert False, "deliberate"
"""
    )

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        ["*Captured * call*", "*SELECT name AS echo_probe_failing FROM user*"]
    )


def test_without_echo_no_sql_is_printed(pytester: pytest.Pytester, app_db: Path) -> None:
    write_ini(pytester, memdb_file="data/app.sqlite")
    pytester.makepyfile(ECHO_TESTS)

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s")

    result.assert_outcomes(passed=2)
    result.stdout.no_fnmatch_line("*echo_probe*")


# --- errors: a test asking for a broken database errors, nothing else does ---------------

ERROR_TESTS = """
{header}

def test_uses_db(memdb_sync_session):
    pass


def test_uses_url(memdb_url):
    pass


def test_plain():
    assert 1 + 1 == 2
"""

ORIGINS = {
    "ini": "memdb_file in pytest.ini",
    "cli": "--memdb-file",
    "marker": "@pytest.mark.memdb(file=...)",
}


def _garble_pages(path: Path) -> None:
    """Keep page 1 (header and schema) and overwrite every later page with noise."""
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    assert len(data) // page_size > 3, "need a few pages to garble"
    noise = random.Random(2024)
    data[page_size:] = bytes(noise.randrange(256) for _ in range(len(data) - page_size))
    path.write_bytes(bytes(data))


def _schema_format(path: Path, number: int) -> None:
    """Patch the header's schema format number (offset 44): only 1 to 4 exist."""
    data = bytearray(path.read_bytes())
    data[44:48] = number.to_bytes(4, "big")
    path.write_bytes(bytes(data))


def missing(root: Path) -> tuple[str, Path | None, str]:
    return "data/missing.sqlite", None, "it does not exist."


def folder(root: Path) -> tuple[str, Path | None, str]:
    (root / "data" / "folder.sqlite").mkdir(parents=True)
    return "data/folder.sqlite", None, "it is a folder, not a SQLite file."


def empty(root: Path) -> tuple[str, Path | None, str]:
    path = root / "data" / "empty.sqlite"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    return "data/empty.sqlite", path, "it is empty (0 bytes), not a SQLite database."


def text_file(root: Path) -> tuple[str, Path | None, str]:
    path = root / "data" / "users.sqlite"
    path.parent.mkdir(parents=True)
    path.write_text("id,name,email\n1,ada,ada@example.com\n")
    return "data/users.sqlite", path, "it is not a SQLite database (its first bytes are b'id,name*"


def corrupt(root: Path) -> tuple[str, Path | None, str]:
    path = make_sqlite(root / "data" / "corrupt.sqlite", users=2000)
    _garble_pages(path)
    return "data/corrupt.sqlite", path, "it is corrupt (*"


def future_format(root: Path) -> tuple[str, Path | None, str]:
    path = make_sqlite(root / "data" / "future.sqlite")
    _schema_format(path, 9)
    return "data/future.sqlite", path, "*unsupported file format*"


def symlink_loop(root: Path) -> tuple[str, Path | None, str]:
    loop = root / "data" / "loop.sqlite"
    loop.parent.mkdir(parents=True)
    loop.symlink_to(loop.name)
    return "data/loop.sqlite", None, "it cannot be inspected (Too many levels of symbolic links)."


def file_as_folder(root: Path) -> tuple[str, Path | None, str]:
    blocker = make_sqlite(root / "data" / "app.sqlite")
    return "data/app.sqlite/inner.sqlite", blocker, "it cannot be inspected (Not a directory)."


def no_permission(root: Path) -> tuple[str, Path | None, str]:
    path = make_sqlite(root / "data" / "secret.sqlite")
    path.chmod(0o000)
    return "data/secret.sqlite", path, "it cannot be read (Permission denied)."


BROKEN: list[Callable[[Path], tuple[str, Path | None, str]]] = [
    missing,
    folder,
    empty,
    text_file,
    corrupt,
    future_format,
    symlink_loop,
    file_as_folder,
]
if os.geteuid() != 0:  # root reads a chmod 000 file; the two cases above always run
    BROKEN.append(no_permission)


@pytest.mark.parametrize("origin", list(ORIGINS))
@pytest.mark.parametrize("broken", BROKEN, ids=lambda case: case.__name__)
def test_broken_file_errors_the_tests_that_use_it(
    pytester: pytest.Pytester,
    broken: Callable[[Path], tuple[str, Path | None, str]],
    origin: str,
) -> None:
    raw, keep, problem = broken(pytester.path)
    before = digest(keep) if keep is not None and os.access(keep, os.R_OK) else None
    mode = keep.stat().st_mode if keep is not None else None
    header = "import pytest\n"
    if origin == "marker":
        header += f"pytestmark = pytest.mark.memdb(file={raw!r})\n"
    write_ini(pytester, **({"memdb_file": raw} if origin == "ini" else {}))
    pytester.makepyfile(ERROR_TESTS.format(header=header))
    args = ["--memdb-file", raw] if origin == "cli" else []

    result = pytester.runpytest(*INNER_ARGS, *args)

    result.assert_outcomes(passed=1, errors=2)
    resolved = pytester.path / raw
    message = f"pytest-memdb: the fixture file {str(resolved)!r} (from {ORIGINS[origin]}): "
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_uses_db*",
            message + problem,
            "*ERROR at setup of test_uses_url*",
            message + problem,
        ]
    )
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
    result.stdout.no_fnmatch_line("*Traceback*")
    if keep is not None:
        assert keep.stat().st_mode == mode
        if before is not None:
            assert digest(keep) == before


def test_no_file_configured_says_how_to_set_one(pytester: pytest.Pytester) -> None:
    write_ini(pytester)
    pytester.makepyfile(ERROR_TESTS.format(header=""))

    result = pytester.runpytest(*INNER_ARGS)

    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_uses_db*",
            "pytest-memdb: no SQLite fixture file, metadata or migrations are configured (ini "
            "options memdb_file, memdb_metadata, memdb_alembic; command line --memdb-file, "
            "--memdb-metadata).",
            "Set one in your ini file:",
            "    [[]pytest[]]",
            "    memdb_file = tests/data/app.sqlite",
            "    memdb_metadata = myapp.models:Base",
            "    memdb_alembic = alembic.ini",
            "or on the command line: pytest --memdb-file tests/data/app.sqlite "
            "(or --memdb-metadata myapp.models:Base)",
            "or for one test: @pytest.mark.memdb(file='tests/data/app.sqlite')",
        ]
    )
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
    result.stdout.no_fnmatch_line("*Traceback*")


def test_fixture_error_message_is_shown_once(pytester: pytest.Pytester) -> None:
    """The plain message, not the message twice with "During handling of ..." between."""
    write_ini(pytester, memdb_file="data/missing.sqlite")
    pytester.makepyfile(ERROR_TESTS.format(header=""))

    result = pytester.runpytest(*INNER_ARGS)

    result.assert_outcomes(passed=1, errors=2)
    # One message per erroring test in the ERRORS section; the short summary may repeat it
    # in full on a line of its own (it does when CI is set), which is not a doubling.
    section = [line for line in result.outlines if not line.startswith("ERROR ")]
    message = "(from memdb_file in pytest.ini): it does not exist."
    assert sum(line.count(message) for line in section) == 2
    result.stdout.no_fnmatch_line("*During handling of the above exception*")


def test_a_broken_marker_file_leaves_the_configured_file_working(
    pytester: pytest.Pytester, app_db: Path
) -> None:
    write_ini(pytester, memdb_file="data/app.sqlite")
    pytester.makepyfile(
        """
        import pytest
        from sqlalchemy import text

        @pytest.mark.memdb(file="data/nope.sqlite")
        def test_marked(memdb):
            pass

        def test_default(memdb_sync_session):
            assert memdb_sync_session.execute(text("SELECT count(*) FROM user")).scalar() == 3
        """
    )

    result = pytester.runpytest(*INNER_ARGS)

    result.assert_outcomes(passed=1, errors=1)
    nope = pytester.path / "data" / "nope.sqlite"
    result.stdout.fnmatch_lines(
        [
            f"pytest-memdb: the fixture file {str(nope)!r} "
            "(from @pytest.mark.memdb(file=...)): it does not exist."
        ]
    )


# --- bad isolation names and marker arguments ---------------------------------------------


@pytest.mark.parametrize(
    ("ini", "args", "origin"),
    [
        ({"memdb_isolation": "bogus"}, [], "memdb_isolation"),
        ({}, ["--memdb-isolation", "bogus"], "--memdb-isolation"),
        ({"memdb_isolation": "copy"}, ["--memdb-isolation", "bogus"], "--memdb-isolation"),
    ],
    ids=["ini", "cli", "cli-over-valid-ini"],
)
def test_unknown_isolation_is_a_usage_error_at_start_up(
    pytester: pytest.Pytester, app_db: Path, ini: dict[str, str], args: list[str], origin: str
) -> None:
    write_ini(pytester, memdb_file="data/app.sqlite", **ini)
    pytester.makepyfile("def test_plain():\n    pass\n")

    result = pytester.runpytest(*INNER_ARGS, *args)

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"ERROR: pytest-memdb: {origin} got 'bogus'; allowed values: copy, rollback, session."]
    )
    result.stdout.no_fnmatch_line("*passed*")
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
    result.stderr.no_fnmatch_line("*INTERNALERROR*")


MARKER_TESTS = """
import pytest
from sqlalchemy import text


@pytest.mark.memdb({marker})
def test_marked(memdb):
    pass


def test_unmarked(memdb_sync_session):
    assert memdb_sync_session.execute(text("SELECT count(*) FROM user")).scalar() == 3


def test_plain():
    pass
"""


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        (
            "isolation='snapshot'",
            "pytest-memdb: @pytest.mark.memdb(isolation=...) got 'snapshot'; "
            "allowed values: copy, rollback, session.",
        ),
        (
            "fiel='data/app.sqlite'",
            "pytest-memdb: @pytest.mark.memdb takes only keyword arguments file, metadata, load, "
            "isolation, bind, alembic; "
            "got fiel.",
        ),
        (
            "'data/app.sqlite'",
            "pytest-memdb: @pytest.mark.memdb takes only keyword arguments file, metadata, load, "
            "isolation, bind, alembic; "
            "got 'data/app.sqlite'.",
        ),
    ],
    ids=["unknown-isolation", "unknown-keyword", "positional"],
)
def test_bad_marker_errors_only_that_test(
    pytester: pytest.Pytester, app_db: Path, marker: str, message: str
) -> None:
    before = digest(app_db)
    write_ini(pytester, memdb_file="data/app.sqlite")
    pytester.makepyfile(MARKER_TESTS.format(marker=marker))

    result = pytester.runpytest(*INNER_ARGS, "-v")

    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at setup of test_marked*", message])
    result.stdout.fnmatch_lines(["*test_unmarked PASSED*"])
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
    assert digest(app_db) == before


# --- the list of ini options, and boolean values ----------------------------------------


def _ini_options_in_help(pytester: pytest.Pytester) -> dict[str, str]:
    """``memdb_*`` ini options as ``pytest --help`` lists them: name -> type."""
    import re

    result = pytester.runpytest("--help")
    assert result.ret == 0
    found = {}
    for line in result.stdout.lines:
        match = re.match(r"^\s+(memdb_\w+) \((\w+)\):", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def test_every_registered_ini_option_is_known_to_the_typo_check(
    pytester: pytest.Pytester,
) -> None:
    """The typo check's list of options is the list pytest was given, so a new option can
    never be reported as unknown (or missing from its suggestions)."""
    from pytest_memdb.core.config import INI_OPTIONS

    write_ini(pytester)
    registered = _ini_options_in_help(pytester)

    assert "memdb_restore" in registered
    assert sorted(INI_OPTIONS) == sorted(registered)


def test_a_typo_of_memdb_restore_suggests_memdb_restore(
    pytester: pytest.Pytester, app_db: Path
) -> None:
    write_ini(pytester, memdb_file="data/app.sqlite", memdb_restor="backup")
    pytester.makepyfile("def test_plain():\n    pass\n")

    result = pytester.runpytest(*INNER_ARGS)

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*pytest-memdb: unknown option 'memdb_restor' in pytest.ini. Did you mean "
            "'memdb_restore'?*memdb_restore*"
        ]
    )


BOOL_OPTIONS = ["memdb_echo", "memdb_cache", "memdb_strict"]


def test_the_boolean_options_are_these(pytester: pytest.Pytester) -> None:
    write_ini(pytester)
    registered = _ini_options_in_help(pytester)
    assert sorted(name for name, kind in registered.items() if kind == "bool") == sorted(
        BOOL_OPTIONS
    )


@pytest.mark.parametrize("option", BOOL_OPTIONS)
def test_a_bad_boolean_names_the_option_the_value_and_the_allowed_values(
    pytester: pytest.Pytester, app_db: Path, option: str
) -> None:
    write_ini(pytester, memdb_file="data/app.sqlite", **{option: "maybe"})
    pytester.makepyfile("def test_plain():\n    pass\n")

    result = pytester.runpytest(*INNER_ARGS)

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"ERROR: pytest-memdb: {option} in pytest.ini: invalid truth value 'maybe'; "
            "expected true or false (pytest also reads yes/no, on/off, 1/0, y/n, t/f)."
        ]
    )
    result.stderr.no_fnmatch_line("*INTERNALERROR*")
