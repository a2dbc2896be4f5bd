"""PostgreSQL layers: what a boundary check, a checkpoint and a put-back cost.

Run from the repository root: ``python benchmarks/bench_pg_layers.py [URL]`` (without a
URL it starts its own server with tests/pg_helpers.py; PostgreSQL's server binaries
needed). A layer of 3 tables laid on a template with ``rows`` rows in them; the check
(:meth:`PgLayerDatabase.changed`) timed when no transaction ended on the server since the
last look (one query) and when one did elsewhere (the fingerprint too).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import Engine, text

import pytest_memdb.plugin  # noqa: F401  (first: core.config and the plugin import each other)
from pytest_memdb.postgresql.backend import PgTemplate
from pytest_memdb.postgresql.clones import Cluster
from pytest_memdb.postgresql.layers import PgLayerDatabase
from tests.pg_helpers import pg_server

ROUNDS = 200


def median_ms(times: list[float]) -> str:
    return f"{statistics.median(times) * 1e3:.2f} ms (min {min(times) * 1e3:.2f})"


def seed(rows: int) -> Callable[[Engine], None]:
    def build(engine: Engine) -> None:
        with engine.begin() as conn:
            for table in ("author", "book", "shelf"):
                conn.execute(text(f"CREATE TABLE {table} (id serial PRIMARY KEY, name text)"))
                conn.execute(
                    text(
                        f"INSERT INTO {table} (name) SELECT 'x' || g FROM generate_series(1, :n) g"
                    ),
                    {"n": rows // 3},
                )

    return build


@contextmanager
def server(argv: list[str]) -> Iterator[str]:
    if len(argv) > 1:
        yield argv[1]
        return
    with pg_server() as pg:
        yield pg.url()


def main() -> None:
    with server(sys.argv) as url:
        cluster = Cluster(url, prefix="benchlayers", run_id="bench")
        try:
            for rows in (100, 10_000):
                template = PgTemplate(
                    cluster, cluster.create_template(seed(rows)), echo=False, label="b"
                )
                layer = PgLayerDatabase(template, "module", "bench")
                quiet, busy = [], []
                with cluster.admin.connect() as other:
                    for _ in range(ROUNDS):
                        start = time.perf_counter()
                        assert not layer.changed()
                        quiet.append(time.perf_counter() - start)
                        other.exec_driver_sql("SELECT pg_current_xact_id()")  # an xid ends
                        start = time.perf_counter()
                        assert not layer.changed()
                        busy.append(time.perf_counter() - start)
                checkpoints, put_backs = [], []
                for _ in range(7):
                    with layer.handle.sync_engine.begin() as conn:
                        conn.execute(text("INSERT INTO book (name) VALUES ('more')"))
                    assert layer.changed()
                    start = time.perf_counter()
                    frozen = layer.checkpoint()
                    checkpoints.append(time.perf_counter() - start)
                    assert frozen is not None
                    assert not layer.changed()
                    with layer.handle.sync_engine.begin() as conn:
                        conn.execute(text("DELETE FROM book WHERE name = 'more'"))
                    assert layer.changed()
                    start = time.perf_counter()
                    layer.put_back(frozen)
                    put_backs.append(time.perf_counter() - start)
                    assert not layer.changed()
                    asyncio.run(frozen.aclose())
                print(f"{rows} rows: check, nothing ended on the server: {median_ms(quiet)}")
                print(f"{rows} rows: check, with the fingerprint: {median_ms(busy)}")
                print(f"{rows} rows: checkpoint {median_ms(checkpoints)}")
                print(f"{rows} rows: put back {median_ms(put_backs)}")
                layer.close()
                asyncio.run(template.aclose())
        finally:
            cluster.close()


if __name__ == "__main__":
    main()
