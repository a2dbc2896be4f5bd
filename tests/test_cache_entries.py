"""``memdb_cache`` entries on disk: a bad entry is rebuilt and replaced, a cache folder
that cannot be used means building without it, and a valid entry is read with no lock.

Real sessions on a real cache folder; each build appends a line to ``builds.log`` (a
seed callable with a side effect), so the tests count builds, not time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import filelock
import pytest

from tests.helpers import write_ini

SEED = """
import os
import time
from pathlib import Path

from sqlalchemy import text

HERE = Path(__file__).parent


def seed(conn):
    (HERE / "started").write_text(str(os.getpid()))
    gate = HERE / "gate"
    if gate.exists():  # the test holds this build until it removes the gate (bounded)
        deadline = time.monotonic() + 60
        while gate.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    with (HERE / "builds.log").open("a") as log:
        log.write("built\\n")
    conn.execute(text("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT)"))
    conn.execute(text("INSERT INTO item (name) VALUES ('seeded')"))
"""

TESTS = """
import pytest
from sqlalchemy import text


@pytest.mark.parametrize("n", range(4))
async def test_sees_the_seeded_template(memdb_session, n):
    rows = (await memdb_session.execute(text("SELECT name FROM item"))).scalars().all()
    assert rows == ["seeded"]
"""


def builds(pytester: pytest.Pytester) -> int:
    log = pytester.path / "builds.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def folder(pytester: pytest.Pytester) -> Path:
    return pytester.path / ".pytest_cache" / "d" / "pytest-memdb"


def entry(pytester: pytest.Pytester) -> Path:
    (found,) = folder(pytester).glob("*.sqlite")
    return found


def project(pytester: pytest.Pytester, **ini: str) -> None:
    write_ini(pytester, memdb_load="seeding:seed", memdb_cache="true", **ini)
    pytester.makepyfile(seeding=SEED, test_cached=TESTS)


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flipped(path: Path) -> None:
    """The row's text changed in place, size kept: SQLite's quick_check cannot tell."""
    data = path.read_bytes()
    assert data.count(b"seeded") == 1
    path.write_bytes(data.replace(b"seeded", b"SEEDED"))


@pytest.mark.parametrize(
    ("damage", "workers"),
    [
        (_empty, ()),
        (_truncated, ()),
        (_flipped, ()),
        pytest.param(_truncated, ("-n", "2"), marks=pytest.mark.slow),  # xdist: 5.5 s
    ],
    ids=["empty", "truncated", "flipped", "truncated, xdist"],
)
def test_a_bad_entry_is_rebuilt_replaced_and_named(
    pytester: pytest.Pytester, damage: Callable[[Path], None], workers: tuple[str, ...]
) -> None:
    project(pytester)
    pytester.runpytest_subprocess(timeout=120).assert_outcomes(passed=4)
    damage(entry(pytester))

    result = pytester.runpytest_subprocess(*workers, timeout=120)

    result.assert_outcomes(passed=4, warnings=1)
    result.stdout.fnmatch_lines(["*the cached template * was bad (*); built it again*"])
    assert builds(pytester) == 2
    healed = pytester.runpytest_subprocess(timeout=120)
    healed.assert_outcomes(passed=4)
    assert builds(pytester) == 2, "the replaced entry is good"


def test_a_cache_folder_that_cannot_be_made_means_building_without_it(
    pytester: pytest.Pytester,
) -> None:
    """pytest itself warns and goes on; so does the plugin, once in the run, though two
    templates (the seeded one, and a marker's) try."""
    (pytester.path / "blocker").write_text("a file where the cache folder's parent should be")
    project(pytester, cache_dir="blocker/cache")
    pytester.makepyfile(
        test_other="""
        import pytest

        @pytest.mark.memdb(load=["seeding:seed", "extra.sql"])
        def test_another_template(memdb):
            pass
        """
    )
    (pytester.path / "extra.sql").write_text("INSERT INTO item (name) VALUES ('more');\n")

    result = pytester.runpytest_subprocess("-p", "no:randomly", timeout=120)

    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(
        ["*memdb_cache cannot use its folder *blocker*cache*; templates are built without it*"]
    )
    pytests_own = result.stdout.str().count("PytestCacheWarning: could not create cache path")
    assert result.parseoutcomes()["warnings"] == pytests_own + 1, "one warning, not one a test"
    assert builds(pytester) == 2


def test_a_valid_entry_is_read_while_another_run_holds_its_lock(
    pytester: pytest.Pytester,
) -> None:
    """A run stopped in --pdb (or suspended) while it holds the lock: others load the
    valid entry at once (a hang here ends at pytester's timeout)."""
    project(pytester)
    pytester.runpytest_subprocess(timeout=120).assert_outcomes(passed=4)
    (lock,) = folder(pytester).glob("*.lock")
    held = filelock.FileLock(str(lock))
    held.acquire(timeout=5)
    try:
        result = pytester.runpytest_subprocess(timeout=60)
    finally:
        held.release()
    result.assert_outcomes(passed=4)
    assert builds(pytester) == 1


def _read_until(stream: subprocess.Popen[str], wanted: str, timeout: float) -> list[str]:
    """The lines ``stream`` printed up to the first one containing ``wanted``."""
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        assert stream.stdout is not None
        for line in stream.stdout:
            lines.append(line)
            if wanted in line:
                found.set()
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    found.wait(timeout)
    assert found.is_set(), f"{wanted!r} never printed:\n{''.join(lines)}"
    return lines


def _pytest(pytester: pytest.Pytester, name: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:randomly", f"--basetemp={name}"],
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(pytester.path)},
    )


@pytest.mark.slow
def test_a_long_wait_for_a_builder_says_who_and_how_to_get_out(
    pytester: pytest.Pytester,
) -> None:
    """Run A builds (held at a gate by the test); run B, finding no entry, waits for A's
    lock, and after a few seconds says so: which entry, A's pid, how to get out. When A
    finishes, B loads A's template: one build for both."""
    project(pytester)
    gate = pytester.path / "gate"
    gate.write_text("")
    first = _pytest(pytester, "first")
    second: subprocess.Popen[str] | None = None
    try:
        deadline = time.monotonic() + 60
        while not (pytester.path / "started").exists() and time.monotonic() < deadline:
            assert first.poll() is None, first.communicate()[0]
            time.sleep(0.05)
        second = _pytest(pytester, "second")
        lines = _read_until(second, "pytest-memdb: waiting", timeout=60)
        said = "".join(lines[-1:])
        assert f"pid {first.pid}" in said
        assert "--cache-clear" in said
        assert f"kill {first.pid}" in said
    finally:
        gate.unlink(missing_ok=True)
        first_out = first.communicate(timeout=120)[0]
        second_out = second.communicate(timeout=120)[0] if second is not None else ""
    assert first.returncode == 0, first_out
    assert second is not None
    assert second.returncode == 0, second_out
    assert builds(pytester) == 1
