"""PostgreSQL templates and clones (:mod:`pytest_memdb.postgresql.clones`) on a real server."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import Engine, text

from pytest_memdb.postgresql import clones
from pytest_memdb.postgresql.clones import CloneError, ClonePool, Cluster, Mark
from tests.pg_helpers import PgServer, pg_server


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    with pg_server() as server:
        yield server


_runs = iter(range(1, 10_000))


@pytest.fixture
def cluster(pg: PgServer) -> Iterator[Cluster]:
    run = next(_runs)
    made = Cluster(pg.url(), prefix=f"memdb_t{run}", run_id=f"run{run}")
    yield made
    made.close()


def _databases(pg: PgServer) -> dict[str, str | None]:
    with pg.connect() as conn:
        rows = conn.execute(
            "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database"
        ).fetchall()
    return dict(rows)


def _seed(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE item (id serial PRIMARY KEY, name text NOT NULL)"))
        conn.execute(text("INSERT INTO item (name) VALUES ('seeded')"))


def _names(pg: PgServer, database: str) -> list[str]:
    with pg.connect(database) as conn:
        return [row[0] for row in conn.execute("SELECT name FROM item ORDER BY id")]


def test_a_clone_has_the_template_s_rows_and_clones_are_independent(pg, cluster) -> None:
    template = cluster.create_template(_seed)
    pool = ClonePool(cluster, template)
    try:
        first, second = pool.take(), pool.take()
        with pg.connect(first, autocommit=True) as conn:
            conn.execute("INSERT INTO item (name) VALUES ('only in first')")
        assert _names(pg, first) == ["seeded", "only in first"]
        assert _names(pg, second) == ["seeded"]
        with pg.connect() as conn:
            row = conn.execute(
                "SELECT datistemplate, datallowconn FROM pg_database WHERE datname = %s",
                (template.name,),
            ).fetchone()
        assert row == (True, False)
        marks = _databases(pg)
        for name in (template.name, first, second):
            parsed = Mark.parse(marks[name])
            assert parsed is not None
            assert parsed.run_id == cluster.run_id
            assert parsed.alive()
    finally:
        pool.close()


def test_take_returns_the_clone_made_ahead_and_give_back_drops_it(pg, cluster) -> None:
    pool = ClonePool(cluster, cluster.create_template(_seed))
    try:
        taken = []
        for _ in range(4):
            assert pool.wait_ready(timeout_s=30)
            taken.append(pool.take())
        assert pool.stats.takes == 4
        assert pool.stats.waited == 0  # each was made ahead, in the background
        for name in taken:
            pool.give_back(name)
    finally:
        pool.close()
    assert not set(taken) & set(_databases(pg))
    assert pool.stats.dropped + pool.stats.made >= 4


def test_a_take_with_nothing_ready_waits_and_is_counted(cluster) -> None:
    pool = ClonePool(cluster, cluster.create_template(_seed))
    try:
        pool.take()  # at once after start: the first clone is being made
        assert pool.stats.waited == 1
    finally:
        pool.close()


def test_a_layer_is_a_template_of_a_template(pg, cluster) -> None:
    base = cluster.create_template(_seed)

    def more(engine: Engine) -> None:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO item (name) VALUES ('layer')"))

    layer = cluster.create_template(more, parent=base)
    assert layer.parent == base.name
    pool = ClonePool(cluster, layer)
    try:
        assert _names(pg, pool.take()) == ["seeded", "layer"]
    finally:
        pool.close()
    base_pool = ClonePool(cluster, base)
    try:
        assert _names(pg, base_pool.take()) == ["seeded"]
    finally:
        base_pool.close()


def test_nobody_can_connect_to_a_sealed_template_so_no_one_blocks_a_clone(pg, cluster) -> None:
    template = cluster.create_template(_seed)
    with pytest.raises(psycopg.OperationalError, match="not currently accepting connections"):
        pg.connect(template.name)
    pool = ClonePool(cluster, template)
    try:
        assert _names(pg, pool.take()) == ["seeded"]
    finally:
        pool.close()


def test_a_connection_the_build_leaked_is_ended_when_the_template_is_sealed(cluster) -> None:
    leaked = []

    def build(engine: Engine) -> None:
        _seed(engine)
        leaked.append(engine.connect())  # never closed; dispose() leaves it
        leaked[0].execute(text("SELECT 1"))

    template = cluster.create_template(build)
    pool = ClonePool(cluster, template)
    try:
        pool.take()
    finally:
        pool.close()
        leaked[0].invalidate()


def test_another_s_session_on_the_template_is_named_after_a_bounded_wait(pg, cluster) -> None:
    holder: list[psycopg.Connection] = []

    def build(engine: Engine) -> None:
        _seed(engine)
        holder.append(pg.connect(engine.url.database, application_name="someone-s-psql"))

    with pytest.raises(CloneError) as caught:
        cluster.create_template(build, seal_wait_s=0.5)
    pid = holder[0].info.backend_pid
    holder[0].close()
    message = str(caught.value)
    assert f"pid {pid}" in message
    assert "someone-s-psql" in message
    assert "still has sessions connected after 0.5 s" in message


def test_sweep_drops_a_dead_run_s_databases_and_nothing_unmarked(pg, cluster) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    dead_pid = int(dead.stdout)
    host = Mark.parse(clones.mark("x")).host  # type: ignore[union-attr]
    with pg.connect(autocommit=True) as conn:
        for name, comment in [
            ("memdb_dead_w_1", f"pytest-memdb:gone:{host}:{dead_pid}:"),
            ("memdb_dead_tpl_1", f"pytest-memdb:gone:{host}:{dead_pid}:"),
            ("memdb_reused_pid", f"pytest-memdb:gone:{host}:1:12345678"),
            ("memdb_other_host", f"pytest-memdb:gone:elsewhere-{host}:{dead_pid}:"),
            ("memdb_unmarked", None),
            ("memdb_not_ours", "pytest-memdb: a note a person wrote"),
        ]:
            conn.execute(f'CREATE DATABASE "{name}"')
            if comment is not None:
                conn.execute(f"COMMENT ON DATABASE \"{name}\" IS '{comment}'")
        conn.execute('ALTER DATABASE "memdb_dead_tpl_1" IS_TEMPLATE true')
    live = cluster.create_template(_seed)  # this run's: alive
    dropped = clones.sweep(pg.url())
    assert sorted(dropped) == ["memdb_dead_tpl_1", "memdb_dead_w_1", "memdb_reused_pid"]
    left = _databases(pg)
    for name in ("memdb_other_host", "memdb_unmarked", "memdb_not_ours", live.name):
        assert name in left
    with pg.connect(autocommit=True) as conn:
        for name in ("memdb_other_host", "memdb_unmarked", "memdb_not_ours"):
            conn.execute(f'DROP DATABASE "{name}"')


def test_closing_the_cluster_drops_every_database_of_the_run(pg) -> None:
    cluster = Cluster(pg.url(), prefix="memdb_close", run_id="closing")
    base = cluster.create_template(_seed)
    layer = cluster.create_template(lambda engine: None, parent=base)
    pool = ClonePool(cluster, layer)
    taken = pool.take()
    assert pool.wait_ready(timeout_s=30)
    made = set(cluster.made)
    assert {base.name, layer.name, taken} <= made
    pool.close()
    cluster.close()
    assert not [name for name in _databases(pg) if name.startswith("memdb_close")]


def test_concurrent_takes_get_distinct_clones(cluster) -> None:
    pool = ClonePool(cluster, cluster.create_template(_seed), ready=2)
    got: list[str] = []
    try:
        threads = [threading.Thread(target=lambda: got.append(pool.take())) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(set(got)) == 6
    finally:
        pool.close()


def test_a_failed_background_clone_is_raised_by_the_next_take(cluster) -> None:
    pool = ClonePool(cluster, clones.Template("memdb_no_such_template"))
    try:
        with pytest.raises(CloneError, match="cloning 'memdb_no_such_template' failed"):
            pool.take(timeout_s=30)
    finally:
        pool.close()


def test_renew_puts_a_fresh_clone_under_the_same_name_and_ends_its_sessions(pg, cluster) -> None:
    """``memdb.reset()`` in copy mode: the test's database name is the template's content
    again; a connection left on the old one is ended; the old one is dropped (given back),
    and the run still knows every database it made (the cluster drops them all at close)."""
    template = cluster.create_template(_seed)
    pool = ClonePool(cluster, template)
    try:
        name = pool.take()
        left_open = pg.connect(name, autocommit=True)
        left_open.execute("INSERT INTO item (name) VALUES ('written')")
        assert _names(pg, name) == ["seeded", "written"]

        pool.renew(name)

        assert _names(pg, name) == ["seeded"]
        with pytest.raises(psycopg.OperationalError):
            left_open.execute("SELECT 1")
        left_open.close()
        pool.close()  # drops what was given back: the old database
        assert sorted(cluster.made) == sorted([template.name, name])
        assert set(_databases(pg)) & {*cluster.made} == {template.name, name}
        assert not [db for db in _databases(pg) if db.startswith(f"{cluster.prefix}_old")]
    finally:
        pool.close()
