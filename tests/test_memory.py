"""Memory stays bounded in ``copy`` mode: each test's copy is freed at its teardown."""

from __future__ import annotations

import pytest

from tests.helpers import make_sqlite, write_ini

TESTS = 600
ROWS = 20_000  # about 1 MB of fixture file: a leaked copy per test would add up to ~600 MB


@pytest.mark.slow
def test_rss_is_flat_over_hundreds_of_copy_mode_tests(pytester: pytest.Pytester) -> None:
    source = make_sqlite(pytester.path / "data" / "app.sqlite", users=ROWS)
    size_mb = source.stat().st_size / 2**20
    write_ini(pytester, memdb_file="data/app.sqlite")
    pytester.makeconftest(
        """
        import os, resource

        def rss_mb():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

        SEEN = []

        def pytest_runtest_teardown(item, nextitem):
            SEEN.append(rss_mb())

        def pytest_sessionfinish(session):
            with open("rss.txt", "w") as f:
                f.write(" ".join(f"{x:.1f}" for x in SEEN))
        """
    )
    pytester.makepyfile(
        f"""
        import pytest
        from sqlalchemy import text

        @pytest.mark.parametrize("i", range({TESTS}))
        async def test_one_write(memdb_session, i):
            await memdb_session.execute(text("INSERT INTO user (name) VALUES ('x')"))
            await memdb_session.commit()
            n = (await memdb_session.execute(text("SELECT count(*) FROM user"))).scalar()
            assert n == {ROWS} + 1
        """
    )
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=TESTS)
    rss = [float(x) for x in (pytester.path / "rss.txt").read_text().split()]
    assert len(rss) == TESTS
    warm, end = rss[99], rss[-1]
    # Each copy holds the whole file; if copies were kept, 500 of them would add 500x.
    assert end - warm < 10 * size_mb + 20, (size_mb, warm, end, rss[::50])
