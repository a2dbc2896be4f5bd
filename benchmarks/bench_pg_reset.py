"""``memdb.reset()`` in copy mode on PostgreSQL: a clone made ahead renamed into place
(:meth:`pytest_memdb.postgresql.clones.ClonePool.renew`) against the synchronous drop and
clone it replaced. Starts its own throwaway server; a template of one 1000-row table.

Usage: python benchmarks/bench_pg_reset.py [ROUNDS]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import Engine, text

from pytest_memdb.postgresql.clones import ClonePool, Cluster
from tests.pg_helpers import pg_server


def _seed(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE item (id serial PRIMARY KEY, name text)"))
        conn.execute(
            text("INSERT INTO item (name) SELECT 'x' || g FROM generate_series(1, 1000) g")
        )


def main(rounds: int) -> None:
    with pg_server() as pg:
        cluster = Cluster(pg.url(), prefix="memdb_bench", run_id="bench")
        template = cluster.create_template(_seed)
        pool = ClonePool(cluster, template)
        name = pool.take()
        old: list[float] = []
        new: list[float] = []
        for _ in range(rounds):
            pool.wait_ready()
            start = time.perf_counter()
            with cluster.admin.connect() as conn:
                cluster.drop(name, conn=conn)
                cluster.create(name, template=template.name, conn=conn)
            old.append(time.perf_counter() - start)
            time.sleep(0.2)  # the pool's background work done: a clone is ready again
            pool.wait_ready()
            start = time.perf_counter()
            pool.renew(name)
            new.append(time.perf_counter() - start)
            time.sleep(0.2)
        pool.close()
        cluster.close()
    load = Path("/proc/loadavg").read_text().split()[0]
    print(f"reset in copy mode, medians of {rounds} (load {load}):")
    print(f"  drop and clone (before): {statistics.median(old) * 1000:7.1f} ms")
    print(f"  renew (a clone ready):   {statistics.median(new) * 1000:7.1f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 12)
