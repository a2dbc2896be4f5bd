"""Alembic migrations as a template's source (``memdb_alembic``), and the drift check.

Imported only when a target names an ``alembic.ini``; Alembic itself is imported on the
first call, so a run without ``memdb_alembic`` never pays for it or needs it installed.

Backend-free: the backend hands :func:`run_migrations` a :class:`MigrationSite`, which
makes the database each attempt migrates (:class:`BuildDatabase`: its URLs, an engine on
it, which connections it allows, what happens to it when the migrations succeeded). On
SQLite (:mod:`pytest_memdb.sqlite.migrating`) that is a shared copy of the private
template, backed up into it afterwards: an unchanged ``env.py`` from ``alembic init``
(generic and ``-t async``) opens its own engine from ``sqlalchemy.url``, which cannot
reach a private in-memory database. On PostgreSQL
(:mod:`pytest_memdb.postgresql.sources`) it is the template database itself, which
any connection to its URL reaches until it is sealed.

The build database's sync or async URL is put in ``sqlalchemy.url`` and a connection to
it is offered in ``config.attributes["connection"]`` (Alembic's "sharing a connection"
recipe).

Why a process-wide ``do_connect`` guard: ``env.py`` is the user's code and may connect
wherever it likes (a hard-coded URL, the app's settings). While migrations run, every
SQLAlchemy connection attempt in the process is checked *before* the driver connects
(so no file is created and nothing is migrated) and refused unless the build database
allows it.
"""

from __future__ import annotations

import logging.config
import re
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Engine, MetaData, event
from sqlalchemy.engine import URL

from pytest_memdb.core.config import Target
from pytest_memdb.errors import MemdbError
from pytest_memdb.messages import ALEMBIC_ENV, ALEMBIC_MISSING, SCHEMA_DRIFT, SEEDING_FAILED

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

_ASYNC_ENV = re.compile(r"\b(async_engine_from_config|create_async_engine|AsyncEngine)\b")
THREAD_NAME = "pytest-memdb-alembic"
"""The name of the thread ``env.py`` runs on (:func:`_in_helper_thread`)."""


class BuildDatabase(Protocol):
    """The database one run of ``env.py`` migrates, as the backend makes it."""

    @property
    def sync_url(self) -> str:
        """Its URL for a sync engine (what a generic ``env.py`` gets in ``sqlalchemy.url``)."""
        ...

    @property
    def async_url(self) -> str:
        """Its URL for an async engine (what an async ``env.py`` gets)."""
        ...

    def engine(self) -> Engine:
        """A new sync engine on it (the shared connection's, the drift check's); disposed
        by the caller."""
        ...

    def allows(self, dialect: Any, cargs: Any, cparams: dict[str, Any]) -> bool:
        """Whether a connection SQLAlchemy is about to make (``do_connect``'s arguments)
        while the migrations run may go ahead: one to this database, or one that is not
        ``env.py``'s (the backend's own, on another thread)."""
        ...

    def finish(self, where: str) -> None:
        """The migrations succeeded: make them the template's (a copy, or nothing)."""
        ...

    def close(self) -> None:
        """Free what the attempt made (success or not)."""
        ...


class MigrationSite(Protocol):
    """Where a backend's template is migrated: a fresh :class:`BuildDatabase` per attempt."""

    def build(self) -> BuildDatabase: ...


def run_migrations(
    target: Target, site: MigrationSite, *, metadata: MetaData | None = None
) -> None:
    """Migrate the template ``site`` builds on (it may hold a fixture file's content) to
    the revision.

    With ``metadata`` (``memdb_metadata`` too), the migrated schema is then compared with
    the models by Alembic's autogenerate comparison, and any difference is an error.
    """
    assert target.alembic is not None
    ini = target.alembic
    where = (
        f"{target.alembic_origin} {str(ini)!r} (revision {target.alembic_revision!r})"
        if target.alembic_origin
        else f"{str(ini)!r} (revision {target.alembic_revision!r})"
    )
    _require_alembic(where)
    config, script = load_project(ini, where)
    env_py = Path(script.env_py_location)
    try:
        wants_async = bool(_ASYNC_ENV.search(env_py.read_text(encoding="utf-8")))
    except OSError as exc:
        raise MemdbError(
            f"pytest-memdb: {where}: the migration environment {str(env_py)!r} cannot be read "
            f"({exc.strerror or exc}); script_location must be a folder made by `alembic init`."
        ) from None
    # The URL follows what env.py builds (a sync engine cannot use aiosqlite, and
    # async_engine_from_config refuses pysqlite); an env.py the source check misjudges
    # fails before it touches the database, and is run once more with the other driver.
    for attempt, use_async in enumerate((wants_async, not wants_async)):
        build = site.build()
        try:
            outcome = _in_helper_thread(
                partial(_upgrade, config, script, target.alembic_revision, build, use_async)
            )
            if outcome.error is not None:
                if attempt == 0 and _wrong_driver(outcome.error) and not outcome.refused:
                    continue
                raise _failure(where, outcome, script)
            if metadata is not None:
                check_drift(build, metadata, outcome.compare_opts, where, target)
            build.finish(where)
            return
        finally:
            build.close()


def _require_alembic(where: str) -> None:
    try:
        import alembic
        import alembic.autogenerate
        import alembic.config
        import alembic.runtime.environment
        import alembic.script  # noqa: F401
    except ImportError as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise MemdbError(ALEMBIC_MISSING(where=where, error=error)) from None


def load_project(ini: Path, where: str) -> tuple[Config, ScriptDirectory]:
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    if not ini.is_file():
        state = "is not a file" if ini.exists() else "does not exist"
        raise MemdbError(
            f"pytest-memdb: {where}: the alembic.ini {state}. Give the path of your "
            "alembic.ini, relative to the ini file's folder (alembic init writes one)."
        )
    config = Config(str(ini))
    try:
        location = config.get_main_option("script_location")
    except Exception as exc:  # configparser: a broken file, a missing [alembic] section
        raise MemdbError(
            f"pytest-memdb: {where}: reading the alembic.ini failed: {type(exc).__name__}: {exc}"
        ) from exc
    if not location:
        raise MemdbError(
            f"pytest-memdb: {where}: the alembic.ini has no script_location in its "
            "[alembic] section, so there are no migrations to run (alembic init writes "
            "script_location = %(here)s/alembic)."
        )
    try:
        with sys_path_kept():
            script = ScriptDirectory.from_config(config)
    except CommandError as exc:
        relative = (
            ""
            if Path(location).is_absolute()
            else (
                f" (Alembic reads a relative script_location from the current folder, "
                f"{str(Path.cwd())!r}; write %(here)s/{location} for the alembic.ini's folder)"
            )
        )
        raise MemdbError(
            f"pytest-memdb: {where}: script_location {location!r} cannot be used: "
            f"{str(exc).strip()}{relative}"
        ) from None
    return config, script


class _Outcome:
    """What one run of ``env.py`` did, handed back from the helper thread."""

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.refused: list[str] = []
        """URLs the guard stopped (``env.py`` connecting elsewhere)."""
        self.compare_opts: dict[str, Any] = {}
        self.url_set = ""
        self.url_after = ""


def _upgrade(
    config: Config, script: ScriptDirectory, revision: str, build: BuildDatabase, use_async: bool
) -> _Outcome:
    """Run ``env.py`` once, upgrading the build database; never raises (see ``error``)."""
    from alembic.runtime.environment import EnvironmentContext

    outcome = _Outcome()
    url = build.async_url if use_async else build.sync_url
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    outcome.url_set = url

    def upgrade(rev: Any, context: Any) -> Any:
        return script._upgrade_revs(revision, rev)  # what alembic.command.upgrade does

    engine = build.engine()
    try:
        with (
            _guard(build, outcome),
            _no_logging_config(),
            sys_path_kept(),
            engine.connect() as connection,
            connection.begin(),
        ):
            config.attributes["connection"] = connection
            with EnvironmentContext(
                config, script, fn=upgrade, as_sql=False, destination_rev=revision
            ) as environment:
                script.run_env()
                outcome.compare_opts = _compare_opts(environment)
    except BaseException as exc:  # reported by the caller, in the caller's thread
        outcome.error = exc
    finally:
        config.attributes.pop("connection", None)
        engine.dispose()
        outcome.url_after = config.get_main_option("sqlalchemy.url") or ""
    return outcome


def _compare_opts(environment: Any) -> dict[str, Any]:
    """The comparison settings ``env.py`` gave ``context.configure`` (version table name,
    ``include_object``...), so the drift check sees what ``alembic check`` would."""
    try:
        opts = environment.get_context().opts
    except Exception:  # env.py never called context.configure: the defaults
        return {}
    keys = (
        "version_table",
        "version_table_schema",
        "include_object",
        "include_name",
        "include_schemas",
        "compare_type",
        "compare_server_default",
    )
    return {key: opts[key] for key in keys if key in opts}


def _in_helper_thread(run: Callable[[], _Outcome]) -> _Outcome:
    """Run ``env.py`` on a short-lived thread of its own.

    ``asyncio.run`` (the async template's ``env.py``) fails when a loop is running in this
    thread, and otherwise leaves the thread without a current event loop (measured, Python
    3.11: ``asyncio.get_event_loop()`` afterwards raises "There is no current event loop"),
    and in the main thread installs its own SIGINT handler meanwhile. A fresh thread has
    neither problem. The guard lives inside that thread's run: a Ctrl-C here stops the
    wait, not the guard.
    """
    result: list[_Outcome] = []
    helper = threading.Thread(target=lambda: result.append(run()), name=THREAD_NAME, daemon=True)
    helper.start()
    helper.join()
    if not result:  # pragma: no cover - _upgrade catches everything
        raise MemdbError("pytest-memdb: the migrations stopped without a result.")
    return result[0]


@contextmanager
def _guard(build: BuildDatabase, outcome: _Outcome) -> Iterator[None]:
    """Refuse every SQLAlchemy connection ``build`` does not allow, before the driver is
    called.

    A ``do_connect`` listener on :class:`Engine` reaches every dialect and every engine,
    sync or async, made before or while ``env.py`` runs; it fires before the DBAPI's
    ``connect``, so a refused SQLite file is never created.
    """

    def check(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        if build.allows(dialect, cargs, cparams):
            return
        shown = _shown_url(dialect, cargs, cparams)
        outcome.refused.append(shown)
        raise MemdbError(f"pytest-memdb: refused a connection to {shown} while migrating.")

    event.listen(Engine, "do_connect", check)
    try:
        yield
    finally:
        event.remove(Engine, "do_connect", check)


def _shown_url(dialect: Any, cargs: Any, cparams: dict[str, Any]) -> str:
    """The refused database as a URL (the password hidden): ``do_connect`` gets no URL."""
    driver = dialect.name if _default_driver(dialect) else f"{dialect.name}+{dialect.driver}"
    if dialect.name == "sqlite":
        return f"{driver}:///{cargs[0] if cargs else cparams.get('database', '')}"
    try:
        port = cparams.get("port")
        return URL.create(
            driver,
            username=cparams.get("user") or cparams.get("username"),
            password="***" if cparams.get("password") else None,
            host=cparams.get("host"),
            port=int(port) if port else None,
            database=cparams.get("database") or cparams.get("dbname") or cparams.get("db"),
        ).render_as_string(hide_password=False)
    except Exception:
        return f"{driver} ({', '.join(map(str, cargs))})"


def _default_driver(dialect: Any) -> bool:
    """Whether ``dialect`` is what its bare name loads (``sqlite://`` is pysqlite's)."""
    try:
        return bool(URL.create(dialect.name).get_dialect().driver == dialect.driver)
    except Exception:
        return False


@contextmanager
def _no_logging_config() -> Iterator[None]:
    """``env.py``'s ``fileConfig(config.config_file_name)`` is skipped: pytest owns logging.

    ``fileConfig`` disables every logger that exists and is not named in alembic.ini
    (``disable_existing_loggers=True``: the app's loggers, so ``caplog`` would see nothing
    from them for the rest of the run) and closes every handler, pytest's capture and
    ``--log-file`` handlers included.
    """
    original = logging.config.fileConfig

    def skipped(*args: Any, **kwargs: Any) -> None:
        """pytest-memdb: alembic.ini's logging sections are not applied in a test run."""

    logging.config.fileConfig = skipped
    try:
        yield
    finally:
        logging.config.fileConfig = original


@contextmanager
def sys_path_kept() -> Iterator[None]:
    """Alembic prepends ``prepend_sys_path`` to ``sys.path``; the test run gets it back."""
    saved = list(sys.path)
    try:
        yield
    finally:
        sys.path[:] = saved


def _wrong_driver(error: BaseException) -> bool:
    """The error an engine of the other kind gives before it touches the database."""
    from sqlalchemy.exc import InvalidRequestError, MissingGreenlet

    if isinstance(error, MissingGreenlet):
        return True
    return isinstance(error, InvalidRequestError) and "requires an async driver" in str(error)


def _failure(where: str, outcome: _Outcome, script: ScriptDirectory) -> MemdbError:
    error = outcome.error
    assert error is not None
    if outcome.refused:
        return MemdbError(
            ALEMBIC_ENV(where=where, env_py=script.env_py_location, url=outcome.refused[0])
        )
    if isinstance(error, MemdbError):
        return error
    detail = f"{type(error).__name__}: {error}"
    culprit = _failing_revision(error, script)
    hint = ""
    if outcome.url_after and outcome.url_after != outcome.url_set:
        hint = (
            f" (env.py replaced sqlalchemy.url with {outcome.url_after!r}; it must migrate "
            "the database pytest-memdb gives it, see config.attributes['connection'])"
        )
    return MemdbError(
        SEEDING_FAILED(
            step=f"while running the migrations of {where}{culprit}", error=detail + hint
        )
    )


def _failing_revision(error: BaseException, script: ScriptDirectory) -> str:
    """`` in revision abc123 (path:line)`` for the migration script the error came from."""
    try:
        scripts = {Path(s.path).resolve(): s for s in script.walk_revisions()}
    except Exception:
        return ""
    found = ""
    tb: TracebackType | None = error.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        revision = scripts.get(Path(code.co_filename).resolve())
        if revision is not None:
            found = f" in revision {revision.revision} ({code.co_filename}:{tb.tb_lineno})"
        tb = tb.tb_next
    return found


def check_drift(
    build: BuildDatabase,
    metadata: MetaData,
    compare_opts: dict[str, Any],
    where: str,
    target: Target,
) -> None:
    """Stop when the migrated schema is not what the models describe.

    Uses Alembic's own autogenerate comparison (what ``alembic revision --autogenerate``
    and ``alembic check`` run), with the settings ``env.py`` passed to
    ``context.configure``.
    """
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = build.engine()
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts=dict(compare_opts))
            differences = compare_metadata(context, metadata)
    except Exception as exc:
        raise MemdbError(
            f"pytest-memdb: comparing the migrated schema of {where} with the models of "
            f"{target.metadata!r} ({target.metadata_origin}) failed: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        engine.dispose()
    if not differences:
        return
    lines = [f"  - {_describe(diff)}" for diff in _flatten(differences)]
    raise MemdbError(
        SCHEMA_DRIFT(
            where=where,
            metadata=target.metadata,
            origin=target.metadata_origin,
            count=len(lines),
            differences="\n".join(lines),
        )
    )


def _flatten(differences: list[Any]) -> Iterator[tuple[Any, ...]]:
    for diff in differences:
        if isinstance(diff, list):  # the modify_* changes of one column come grouped
            yield from (tuple(part) for part in diff)
        else:
            yield tuple(diff)


def _describe(diff: tuple[Any, ...]) -> str:
    """One difference in words; ``models``: the metadata, ``migrations``: the database."""
    kind = diff[0]
    if kind in ("add_table", "remove_table"):
        table = diff[1]
        if kind == "add_table":
            return f"table {table.name!r}: in the models, not created by the migrations"
        return f"table {table.name!r}: created by the migrations, not in the models"
    if kind in ("add_column", "remove_column"):
        _, _, table, column = diff
        what = f"column {table}.{column.name} ({column.type})"
        if kind == "add_column":
            return f"{what}: in the models, missing from the migrated table"
        return f"{what}: in the migrated table, not in the models"
    if kind.startswith("modify_") and len(diff) == 7:
        _, _, table, column, _, migrated, model = diff
        aspect = kind.removeprefix("modify_")
        return (
            f"column {table}.{column}: {aspect} is {_value(migrated)} after the migrations, "
            f"{_value(model)} in the models"
        )
    if kind in ("add_index", "remove_index", "add_constraint", "remove_constraint"):
        item = diff[1]
        noun = "index" if kind.endswith("index") else "constraint"
        columns = ", ".join(c.name for c in getattr(item, "columns", ()))
        table = getattr(getattr(item, "table", None), "name", "?")
        side = "in the models only" if kind.startswith("add") else "after the migrations only"
        return f"{noun} {item.name!r} on {table}({columns}): {side}"
    if kind in ("add_fk", "remove_fk"):
        fk = diff[1]
        columns = ", ".join(c.name for c in fk.columns)
        points = ", ".join(element.target_fullname for element in fk.elements)
        side = "in the models only" if kind == "add_fk" else "after the migrations only"
        return f"foreign key {fk.parent.name}({columns}) -> {points}: {side}"
    return repr(diff)


def _value(value: Any) -> str:
    text = getattr(value, "arg", value)  # a server default's text
    return repr(str(text)) if text is not None else "None"
