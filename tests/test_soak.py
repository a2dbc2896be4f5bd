"""Soak: 2,000 copy-mode tests over a 10 MB fixture file, in one pytest process.

Each inner test writes to its copy and reads it back. The inner run records, after every
test's teardown, the process's resident memory, open file descriptors and threads, and
once more after pytest-memdb has closed everything at the end of the session. Memory
must be flat (a copy kept per test would add 10 MB a test, 10 GB over the run), and
the descriptors and threads at the end must be the ones there before the first test.
"""

from __future__ import annotations

import collections
import json
import sqlite3
import statistics

import pytest

from tests.helpers import digest, make_sqlite, write_ini

TESTS = 2000
BLOB_ROWS = 2500  # 4 KB each: about 10 MB of fixture file

CONFTEST = """
import json, os, threading

import pytest

SAMPLES = []
START = {}


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def fds():
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            found[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the listing's own descriptor, closed already
            pass
    return found


def threads():
    return sorted(t.name for t in threading.enumerate())


def pytest_configure(config):
    START.update(fds=fds(), threads=threads())
    # Clean-ups run last-in first-out: pytest-memdb registers its own at the first memdb
    # fixture, later than this one, so this runs after it has closed everything.
    config.add_cleanup(report)


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    others = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    SAMPLES.append((rss_mb(), len(fds()), others))


def report():
    end = {"fds": fds(), "threads": threads()}
    with open("soak.json", "w") as f:
        json.dump({"samples": SAMPLES, "start": START, "end": end}, f)
"""

INNER = f"""
import pytest
from sqlalchemy import text


@pytest.mark.parametrize("i", range({TESTS}))
async def test_write_and_read(memdb_session, i):
    await memdb_session.execute(text("INSERT INTO user (name) VALUES (:i)"), {{"i": str(i)}})
    await memdb_session.execute(text("DELETE FROM payload WHERE id = :id"), {{"id": i + 1}})
    await memdb_session.commit()
    users = (await memdb_session.execute(text("SELECT count(*) FROM user"))).scalar()
    blobs = (await memdb_session.execute(text("SELECT count(*) FROM payload"))).scalar()
    assert (users, blobs) == (4, {BLOB_ROWS - 1})
"""


@pytest.mark.slow
def test_two_thousand_copy_mode_tests_keep_memory_fds_and_threads_flat(
    pytester: pytest.Pytester,
) -> None:
    source = make_sqlite(pytester.path / "data" / "app.sqlite")
    conn = sqlite3.connect(source)
    conn.execute("CREATE TABLE payload (id INTEGER PRIMARY KEY, data BLOB)")
    conn.executemany("INSERT INTO payload (data) VALUES (randomblob(4000))", [()] * BLOB_ROWS)
    conn.commit()
    conn.close()
    size_mb = source.stat().st_size / 2**20
    assert 9 < size_mb < 12, size_mb
    before = digest(source)
    write_ini(pytester, memdb_file="data/app.sqlite", memdb_isolation="copy")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_soak_inner=INNER)

    result = pytester.runpytest_subprocess(
        "-q", "-p", "no:cacheprovider", "-W", "error::ResourceWarning", timeout=900
    )

    result.assert_outcomes(passed=TESTS)
    report = json.loads((pytester.path / "soak.json").read_text())
    samples = report["samples"]
    assert len(samples) == TESTS
    rss = [s[0] for s in samples]
    warm = statistics.median(rss[100:1050])
    late = statistics.median(rss[1050:])
    # A copy kept per test would add ~10 MB a test; even one kept per 100 tests would add
    # 95 MB between these two medians. Allow two copies' worth of noise.
    assert late - warm < 2 * size_mb + 5, (size_mb, warm, late, rss[::100])
    assert max(rss[100:]) - min(rss[100:]) < 3 * size_mb + 10, rss[::100]
    # Per test: the same descriptors and threads after every teardown as after the second.
    fd_counts = collections.Counter(s[1] for s in samples[1:])
    assert list(fd_counts) == [samples[1][1]], fd_counts
    # Threads: copy mode keeps its copy's pooled connections, and their aiosqlite worker
    # threads, from test to test; a worker told to stop at teardown may not have exited
    # yet when the sample is taken. Thread names are numbered, never reused: a name seen
    # at more than two teardowns outlived its test, and only the pool's may do that.
    lingering = collections.Counter(name for s in samples for name in s[2])
    long_lived = [name for name, seen in lingering.items() if seen > 2]
    assert len(long_lived) <= 2, lingering.most_common(5)
    threads = [len(s[2]) + 1 for s in samples]
    assert max(threads[1:]) <= 4, collections.Counter(threads)
    # At the end: exactly what was open before the first test.
    start, end = report["start"], report["end"]
    assert end["threads"] == start["threads"] == ["MainThread"], (start, end)
    assert end["fds"] == start["fds"], (start, end)
    assert digest(source) == before
    print(
        f"soak: {TESTS} tests, fixture {size_mb:.1f} MB, RSS median {warm:.1f} -> "
        f"{late:.1f} MB (min {min(rss):.1f}, max {max(rss):.1f}), fds per test "
        f"{samples[1][1]}, threads after teardown {collections.Counter(threads)}, "
        f"fds at start/end "
        f"{len(start['fds'])}/{len(end['fds'])}, threads at end {end['threads']}"
    )
