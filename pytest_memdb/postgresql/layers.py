"""A layer's database on PostgreSQL: what :mod:`pytest_memdb.core.layers` needs of a backend.

Imports SQLAlchemy and psycopg: load lazily. The layer is a database on the server,
``CREATE DATABASE <prefix>_layer_<n> TEMPLATE <what it is laid on>`` (the template, or a
wider layer's checkpoint), written through engines like a ``session``-mode clone's. A
checkpoint is ``CREATE DATABASE <prefix>_tpl_<n> TEMPLATE <layer>``, sealed like any
template, under a :class:`~pytest_memdb.postgresql.backend.PgTemplate`: the tests of the
layer's scope get clones of it in every isolation mode, as from any template. PostgreSQL
clones only a database nobody is connected to: while the checkpoint is made, the layer
refuses connections (``ALLOW_CONNECTIONS false``) and the sessions left on it are ended
(an engine a fixture built from the layer's URL reconnects); one that holds an uncommitted
write is the fixture's error instead, as on SQLite. Putting the layer back is
``DROP DATABASE ... WITH (FORCE)`` (which ends the connections left on it, a leaked one
included, and waits 5 s at most for them) and a clone of the checkpoint under the same
name, so the layer's URL and engines keep working.

Whether anything wrote to the layer (:meth:`PgLayerDatabase.changed`, at every boundary).
PostgreSQL has no per-database ``PRAGMA data_version``; its ``pg_stat`` counters are sent
lazily (a commit may show up to a second later), so they cannot say. What can:

* every write is done by a transaction with an xid, and no transaction can commit without
  ``pg_snapshot_xmax(pg_current_snapshot())`` (one past the latest xid that ended, on the
  whole server) moving on. When it has not moved since the layer was last seen equal to
  its checkpoint, and no session on the layer holds an xid (an uncommitted write, which
  counts as a change: ``pg_stat_activity.backend_xid`` is live, not a lazy counter) or an
  ``ACCESS EXCLUSIVE`` lock (which keeps the layer from being read: a change too, as a
  write held open is on SQLite; ``pg_locks``), nothing was committed to it: one query, on
  a connection kept open to the layer;
* else a fingerprint of the layer, compared with the one taken when it was laid, frozen or
  put back: for each table (and materialized view) of the layer and for the layer's own
  rows in each catalog that DDL writes (:data:`CATALOGS`), ``count(*)`` and the greatest
  ``xmin``. A committed ``INSERT`` or ``UPDATE`` writes row versions whose ``xmin`` is an
  xid newer than any before it (rows replaced by equal ones too), a ``DELETE`` lowers the
  count, DDL writes catalog rows; sequences (``nextval`` and ``setval`` take no xid) are
  compared by value (``pg_sequences``) at every look. Not a list of escapes: any committed
  change to the layer's rows, sequences or schema changes what is compared. One more
  query; the layer's tables are scanned, so it grows with the layer (layers hold a few
  shared rows, not a data set).

Measured with ``benchmarks/bench_pg_layers.py`` (PostgreSQL 15, 2 cores shared with other
runs, load average 6.5; medians of 200 checks and of 7 checkpoints and put-backs, over two
runs): a check when no transaction ended on the server since the last look 0.3 ms; with
the fingerprint 0.9 ms for a layer of 3 tables and 100 rows, 2.8-6 ms for 10,000 rows
(scanning the whole of ``pg_attribute``, ``pg_proc`` and ``pg_description`` rather than
the layer's own rows cost 3-8 ms more); a checkpoint 100-300 ms and a put-back 130-400 ms
(a clone, and a drop and a clone: the cost of ``CREATE DATABASE`` on a loaded machine, see
:mod:`pytest_memdb.postgresql.clones`). A run checks each live layer at each boundary (each
fixture's set-up, the start and end of each test phase), and in a run something almost
always ended between two looks (a clone made ahead, another test's write): about 1 ms a
boundary for a small layer, and a test has 4-6 boundaries.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from pytest_memdb.core._loop import run_sync
from pytest_memdb.core.janitor import MemdbHandle
from pytest_memdb.core.layers import LayerTemplate
from pytest_memdb.postgresql.backend import PgTemplate
from pytest_memdb.postgresql.clones import APPLICATION, STATEMENT_TIMEOUT_S, quote
from pytest_memdb.postgresql.clones import Template as PgTemplateDatabase
from pytest_memdb.postgresql.rollback import conninfo
from pytest_memdb.postgresql.working import MovableEngines, PgDatabase

CATALOGS = (
    ("pg_class", "oid"),
    ("pg_attribute", "attrelid"),
    ("pg_attrdef", "oid"),
    ("pg_constraint", "oid"),
    ("pg_index", "indexrelid"),
    ("pg_type", "oid"),
    ("pg_proc", "oid"),
    ("pg_namespace", "oid"),
    ("pg_trigger", "oid"),
    ("pg_rewrite", "oid"),
    ("pg_enum", "oid"),
    ("pg_sequence", "seqrelid"),
    ("pg_description", "objoid"),
    ("pg_extension", "oid"),
    ("pg_policy", "oid"),
    ("pg_largeobject_metadata", "oid"),
)
"""The catalogs DDL writes (a table, column, default, constraint, index, type, function,
schema, trigger, view, enum label, sequence, comment, extension, policy, large object), each
with the indexed column that says whose row it is: a change to the layer's schema adds or
replaces a row of one of the layer's objects (OIDs from 16384 on, ``FirstNormalObjectId``;
the rows of the built-in objects are not looked at: an index scan reads only the layer's
own, where a whole scan of ``pg_attribute``, ``pg_proc`` and ``pg_description`` cost 3 ms)."""

QUIET = (
    "SELECT pg_snapshot_xmax(pg_current_snapshot())::text,"
    " EXISTS (SELECT FROM pg_stat_activity WHERE datname = current_database()"
    " AND pid <> pg_backend_pid() AND backend_xid IS NOT NULL)"
    " OR EXISTS (SELECT FROM pg_locks WHERE locktype = 'relation' AND granted"
    " AND mode = 'AccessExclusiveLock' AND pid <> pg_backend_pid() AND database ="
    " (SELECT oid FROM pg_database WHERE datname = current_database())),"
    " (SELECT coalesce(string_agg(format('%s.%s=%s', schemaname, sequencename,"
    " coalesce(last_value::text, '-')), ',' ORDER BY schemaname, sequencename), '')"
    " FROM pg_sequences)"
)
"""One past the latest xid that ended on the server, whether a session on the layer holds
an uncommitted write or a lock that keeps the layer from being read (both live, not lazy
counters), and the layer's sequences."""

_OWN = (
    "SELECT count(*) || '/' || coalesce(max(xmin::text::bigint), 0)"
    " FROM pg_catalog.{} WHERE {} >= 16384"
)

FINGERPRINT = (
    "SELECT concat_ws(';', "
    + ", ".join(f"({_OWN.format(catalog, key)})" for catalog, key in CATALOGS)
    + ", (SELECT string_agg(format('%s:%s', relation, query_to_xml(format("
    "'SELECT count(*) AS n, max(xmin::text::bigint) AS x FROM %s', relation),"
    " false, true, '')), ';' ORDER BY relation)"
    " FROM (SELECT c.oid::regclass::text AS relation FROM pg_class c"
    " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'm')"
    " AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
    " AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%')"
    " AS relations))"
)
"""For each of :data:`CATALOGS` (the layer's own rows) and each table of the layer, its row
count and greatest ``xmin``, in one statement (``query_to_xml`` runs the count on each
table)."""

LOOK_LOCK_MS = 500
"""How long a look at the layer waits for a lock another session holds on one of its tables
or sequences (``LOCK TABLE``, ``ALTER TABLE`` left in an open transaction) before it counts
as a change."""

CHECKPOINT_WAIT_S = 5.0
"""How long a checkpoint waits for the sessions it ended to leave the layer."""


class PgCheckpoint(PgTemplate):
    """A layer frozen: a template of its own, dropped when the layer's scope ends."""

    async def close_template(self) -> None:
        try:
            await super().close_template()
        finally:
            self.cluster.drop(self.template_database.name)


def _template(of: LayerTemplate) -> PgTemplate:
    if not isinstance(of, PgTemplate):  # a layer is laid on its own backend's templates only
        raise TypeError(f"a PostgreSQL layer is laid on a PostgreSQL template, not {of!r}")
    return of


class PgLayerDatabase:
    """One layer's database on the server (:class:`~pytest_memdb.core.layers.LayerDatabase`)."""

    def __init__(self, base: LayerTemplate, scope: str, label: str) -> None:
        """A clone of ``base`` (a template or a checkpoint)."""
        self._base = _template(base)
        self._scope = scope
        self._label = label
        self.cluster = self._base.cluster
        self.name = self.cluster.new_name("layer")
        self.cluster.create(self.name, template=self._base.template_database.name)
        database = PgDatabase(self.name, self.cluster.url_for(self.name))
        self._engines = MovableEngines(database, echo=self._base.echo)
        self.handle = MemdbHandle(
            database=database,
            source=self._base.source,
            isolation="session",
            engines=self._engines,
            release=lambda: None,
            classes=self._base.classes,
        )
        self._watch: psycopg.Connection[Any] | None = None
        self._seen_xmax = ""
        self._sequences = ""
        self._fingerprint = ""
        self._remember()

    # -- watching ------------------------------------------------------------------------
    def _connection(self) -> psycopg.Connection[Any]:
        """The plugin's own connection to the layer, kept open between boundaries (closed
        while the layer is cloned or dropped)."""
        if self._watch is None or self._watch.closed:
            timeout_ms = int(STATEMENT_TIMEOUT_S * 1000)
            self._watch = psycopg.connect(
                **conninfo(self.cluster.url_for(self.name)),
                autocommit=True,
                application_name=APPLICATION,
                connect_timeout=10,
                options=f"-c statement_timeout={timeout_ms} -c lock_timeout={LOOK_LOCK_MS}",
            )
        return self._watch

    def _unwatch(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.close()

    def _quiet(self) -> tuple[str, bool, str]:
        row = self._connection().execute(QUIET).fetchone()
        assert row is not None
        return str(row[0]), bool(row[1]), str(row[2])

    def _take_fingerprint(self) -> str:
        row = self._connection().execute(FINGERPRINT).fetchone()  # no parameters: % as is
        assert row is not None
        return str(row[0])

    def _remember(self) -> None:
        """The layer as it is now is what it should be (just laid, frozen or put back)."""
        self._seen_xmax, _, self._sequences = self._quiet()
        self._fingerprint = self._take_fingerprint()

    def changed(self) -> bool:
        """Whether the layer differs from what it was last seen as (see the module doc); a
        lock another session holds on it, which keeps it from being read, counts as a
        change (as a write held open does on SQLite): putting it back ends that session."""
        try:
            try:
                xmax, pending, sequences = self._quiet()
            except psycopg.errors.LockNotAvailable:
                raise
            except psycopg.OperationalError:  # the watch connection was ended (by a test)
                self._unwatch()
                xmax, pending, sequences = self._quiet()
            if pending or sequences != self._sequences:
                return True
            if xmax == self._seen_xmax:
                return False
            if self._take_fingerprint() != self._fingerprint:
                return True
        except psycopg.errors.LockNotAvailable:
            return True
        self._seen_xmax = xmax  # equal as of then: the next look starts from there
        return False

    # -- checkpoints and put-backs ---------------------------------------------------------
    def _let_go(self) -> None:
        """Close the plugin's own connections to the layer: the watch, and what the layer's
        engines pool (they connect again on next use)."""
        self._unwatch()
        run_sync(self._engines.aclose())

    def checkpoint(self) -> PgCheckpoint | None:
        self._let_go()
        name = self.cluster.new_name("tpl")
        with self.cluster.admin.connect() as conn:
            layer = quote(self.name)
            conn.exec_driver_sql(f"ALTER DATABASE {layer} ALLOW_CONNECTIONS false")
            try:
                if not self._end_sessions(conn):
                    return None
                self.cluster.create(name, template=self.name, conn=conn)
            finally:
                conn.exec_driver_sql(f"ALTER DATABASE {layer} ALLOW_CONNECTIONS true")
        self.cluster.seal(name)
        self._remember()
        return PgCheckpoint(
            self.cluster,
            PgTemplateDatabase(name, self.name),
            echo=self._base.echo,
            label=f"{self._label}-{self._scope}",
            classes=self._base.classes,
            stats=self._base.stats,
            source=self._base.source,
        )

    def _end_sessions(self, conn: Any) -> bool:
        """End the sessions left on the layer (it refuses new ones meanwhile); False, and
        none ended, when one holds an uncommitted write (the fixture's error)."""
        find = (
            "SELECT pid, backend_xid IS NOT NULL FROM pg_stat_activity"
            f" WHERE datname = '{self.name}' AND pid <> pg_backend_pid()"
        )
        deadline = time.monotonic() + CHECKPOINT_WAIT_S
        while sessions := conn.exec_driver_sql(find).all():
            if any(writing for _, writing in sessions):
                return False
            for pid, _ in sessions:
                conn.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)}, 1000)")
            if time.monotonic() > deadline:
                break  # CREATE DATABASE says who is still there
            time.sleep(0.01)
        return True

    def put_back(self, to: LayerTemplate) -> bool:
        """Drop the layer (its connections ended) and clone ``to`` under its name again."""
        source = _template(to).template_database.name
        self._let_go()
        with self.cluster.admin.connect() as conn:
            self.cluster.drop(self.name, conn=conn)
            self.cluster.create(self.name, template=source, conn=conn)
        self._remember()
        return True

    def close(self) -> None:
        self._unwatch()
        try:
            run_sync(self._engines.aclose())
        finally:
            self.cluster.drop(self.name)
