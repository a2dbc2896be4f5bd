"""Load: 70 concurrent async sessions (40 writers, 30 readers) per test, in each isolation mode.

Every commit must be there afterwards, readers must never see a commit disappear, and no
session may fail with ``database is locked``: the writers' transactions are short, so the
normal busy timeout (5 s) absorbs every wait. Deadlocks are bounded twice: by
``asyncio.wait_for`` inside each inner test and by the subprocess timeout outside, with
limits far above the run's time (correctness bounds, not performance thresholds).
"""

from __future__ import annotations

import pytest

from tests.helpers import digest, make_sqlite, write_ini

WRITERS, READERS, ROUNDS, TESTS_PER_MODE = 40, 30, 4, 3

LOAD_TESTS = f"""
import asyncio

import pytest
from sqlalchemy import text

WRITERS, READERS, ROUNDS = {WRITERS}, {READERS}, {ROUNDS}
MODES = ("copy", "rollback", "session")


async def count(session, tag):
    query = text("SELECT count(*) FROM user WHERE email = :tag")
    return (await session.execute(query, {{"tag": tag}})).scalar_one()


async def writer(sessionmaker, tag, w):
    for r in range(ROUNDS):
        async with sessionmaker() as session:
            await session.execute(
                text("INSERT INTO user (name, email) VALUES (:name, :tag)"),
                {{"name": f"{{tag}}:{{w}}:{{r}}", "tag": tag}},
            )
            await session.execute(
                text("UPDATE user SET name = name WHERE email = :tag"), {{"tag": tag}}
            )
            await session.commit()
        await asyncio.sleep(0)


async def reader(sessionmaker, tag):
    seen = []
    for _ in range(ROUNDS * 2):
        async with sessionmaker() as session:
            seen.append(await count(session, tag))
        await asyncio.sleep(0)
    assert seen == sorted(seen), f"a commit disappeared: {{seen}}"
    return seen


@pytest.mark.parametrize("i", range({TESTS_PER_MODE}))
@pytest.mark.parametrize(
    "mode", [pytest.param(m, marks=pytest.mark.memdb(isolation=m)) for m in MODES]
)
async def test_concurrent_sessions(request, memdb, memdb_sessionmaker, mode, i):
    assert memdb.isolation == mode
    tag = f"{{request.node.name}}-{{id(request)}}"
    async with memdb_sessionmaker() as session:
        base = (await session.execute(text("SELECT count(*) FROM user WHERE id <= 3"))).scalar()
        assert base == 3
        if mode != "session":
            assert (await session.execute(text("SELECT count(*) FROM user"))).scalar() == 3
    jobs = [writer(memdb_sessionmaker, tag, w) for w in range(WRITERS)]
    jobs += [reader(memdb_sessionmaker, tag) for _ in range(READERS)]
    results = await asyncio.wait_for(asyncio.gather(*jobs), timeout=120)
    assert all(seen[-1] <= WRITERS * ROUNDS for seen in results[WRITERS:])
    # Every commit is there, seen from a new session (and, in copy/session, a new connection).
    async with memdb.sessionmaker() as session:
        rows = await session.execute(
            text("SELECT name FROM user WHERE email = :tag"), {{"tag": tag}}
        )
        names = sorted(rows.scalars())
    expected = sorted(f"{{tag}}:{{w}}:{{r}}" for w in range(WRITERS) for r in range(ROUNDS))
    assert names == expected
    with memdb.sync_sessionmaker() as session:
        synced = session.execute(
            text("SELECT count(*) FROM user WHERE email = :tag"), {{"tag": tag}}
        ).scalar()
    assert synced == WRITERS * ROUNDS
    print("LOAD", mode, i, len(names), "sessions", WRITERS + READERS)
"""


@pytest.mark.slow
@pytest.mark.parametrize("workers", [None, 2], ids=["one-process", "xdist-n2"])
def test_seventy_concurrent_sessions_per_test_in_every_mode(
    pytester: pytest.Pytester, workers: int | None
) -> None:
    source = make_sqlite(pytester.path / "data" / "app.sqlite")
    before = digest(source)
    write_ini(pytester, memdb_file="data/app.sqlite")
    pytester.makepyfile(test_inner_load=LOAD_TESTS)
    args = ["-p", "no:cacheprovider", "-rP", "-W", "error::ResourceWarning"]
    if workers:
        args += ["-n", str(workers)]

    result = pytester.runpytest_subprocess(*args, timeout=600)

    total = 3 * TESTS_PER_MODE
    result.assert_outcomes(passed=total)
    lines = [line for line in result.outlines if line.startswith("LOAD ")]
    assert len(lines) == total
    assert {line.split()[3] for line in lines} == {str(WRITERS * ROUNDS)}
    if workers:
        result.stdout.fnmatch_lines([f"*{workers} workers [[]{total} items[]]*"])
    for output in (result.stdout, result.stderr):
        output.no_fnmatch_line("*is locked*")
        output.no_fnmatch_line("*INTERNALERROR*")
    assert digest(source) == before
