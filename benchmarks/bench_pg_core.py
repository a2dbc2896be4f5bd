"""PostgreSQL core costs: clone strategies, ClonePool.take(), rollback begin/end per test.

Run from the repository root: ``python benchmarks/bench_pg_core.py`` (starts its own server
with tests/pg_helpers.py; PostgreSQL 15's server binaries needed).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import sessionmaker

from pytest_memdb.postgresql.clones import ClonePool, Cluster
from pytest_memdb.postgresql.rollback import RollbackIsolation
from tests.pg_helpers import pg_server


def median_ms(times: list[float]) -> str:
    return f"{statistics.median(times) * 1e3:.2f} ms (min {min(times) * 1e3:.2f})"


def seed(rows: int):
    def build(engine) -> None:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE item (id serial PRIMARY KEY, name text)"))
            conn.execute(
                text(
                    "INSERT INTO item (name)"
                    " SELECT repeat('x', 80) || g FROM generate_series(1, :n) g"
                ),
                {"n": rows},
            )

    return build


def main() -> None:
    with pg_server() as pg:
        cluster = Cluster(pg.url(), prefix="bench", run_id="bench")
        small = cluster.create_template(seed(100))
        big = cluster.create_template(seed(400_000))
        with cluster.admin.connect() as conn:
            for tpl in (small, big):
                size = conn.exec_driver_sql(
                    f"SELECT pg_size_pretty(pg_database_size('{tpl.name}'))"
                ).scalar()
                for strategy in ("WAL_LOG", "FILE_COPY"):
                    made, dropped = [], []
                    for i in range(9):
                        name = f"bench_{strategy}_{i}"
                        start = time.perf_counter()
                        conn.exec_driver_sql(
                            f"CREATE DATABASE {name} TEMPLATE {tpl.name} STRATEGY {strategy}"
                        )
                        made.append(time.perf_counter() - start)
                        start = time.perf_counter()
                        conn.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
                        dropped.append(time.perf_counter() - start)
                    shown = f"{median_ms(made)}; drop {median_ms(dropped)}"
                    print(f"clone {size:>7} {strategy:9}: {shown}")
        for tpl, label in ((small, "small"), (big, "64 MB")):
            pool = ClonePool(cluster, tpl)
            takes = []
            for _ in range(15):
                start = time.perf_counter()
                name = pool.take()
                takes.append(time.perf_counter() - start)
                time.sleep(0.15)  # a test's body
                pool.give_back(name)
            waited = pool.stats.waited
            print(f"take() {label}, tests of 150 ms: {median_ms(takes)}, waited {waited}/15")
            pool.close()
        pool = ClonePool(cluster, small)
        iso = RollbackIsolation(pool)
        for label, body in (
            ("empty test", lambda: None),
            ("one session write+commit", lambda: _write(iso)),
        ):
            cycle = []
            for _ in range(300):
                start = time.perf_counter()
                iso.begin_test()
                body()
                iso.end_test()
                cycle.append(time.perf_counter() - start)
            print(f"rollback begin+end, {label}: {median_ms(cycle)}")
        ops = []
        for _ in range(200):
            iso.begin_test()
            start = time.perf_counter()
            _write(iso)
            ops.append(time.perf_counter() - start)
            iso.end_test()
        print(f"a session write+commit inside a test: {median_ms(ops)}")
        from sqlalchemy import create_engine

        direct = create_engine(cluster.url_for(pool.take()))  # the same Session, no plugin
        plain = []
        for _ in range(200):
            start = time.perf_counter()
            with sessionmaker(direct)() as session:
                session.execute(text("INSERT INTO item (name) VALUES ('x')"))
                session.commit()
            plain.append(time.perf_counter() - start)
        print(f"the same on a plain pooled engine (BEGIN, INSERT, COMMIT): {median_ms(plain)}")
        direct.dispose()
        Async = async_sessionmaker(iso.async_engine)

        async def async_write() -> None:
            async with Async() as session:
                await session.execute(text("INSERT INTO item (name) VALUES ('x')"))
                await session.commit()

        async_ops = []
        for _ in range(100):
            iso.begin_test()
            start = time.perf_counter()
            asyncio.run(async_write())
            async_ops.append(time.perf_counter() - start)
            iso.end_test()
        print(f"an AsyncSession write+commit in a new loop: {median_ms(async_ops)}")
        iso.close()
        pool.close()
        cluster.close()


def _write(iso: RollbackIsolation) -> None:
    with sessionmaker(iso.sync_engine)() as session:
        session.execute(text("INSERT INTO item (name) VALUES ('x')"))
        session.commit()


if __name__ == "__main__":
    main()
