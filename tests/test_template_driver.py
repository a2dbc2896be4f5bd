"""The backend-free driver (:mod:`pytest_memdb.core.template`), without pytest's plugin:
a registry on real in-memory SQLite databases, handles opened and closed by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from pytest_memdb.core.config import MemdbConfig, Target
from pytest_memdb.core.template import TemplateBase
from pytest_memdb.errors import IsolationError
from tests.helpers import make_sqlite, sqlite_registry


def test_an_escape_found_by_a_reset_whose_restore_fails_is_reported_at_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reset finds that the test's ``COMMIT`` ended rollback's outer transaction, then its
    restore fails (a timeout, an interrupt): the reset raises that failure, and the test's
    end must still report the escape (it was lost: found by the layer machine, seed
    42014291857558415547504231445154850612)."""
    path = make_sqlite(tmp_path / "app.sqlite")
    registry = sqlite_registry(MemdbConfig(path, "test", "rollback", False, tmp_path))
    try:
        handle = registry.open(Target(path, "test", "rollback"))
        with handle.sync_engine.connect() as conn:
            conn.execute(text("INSERT INTO user (name) VALUES ('escaped')"))
            conn.exec_driver_sql("COMMIT")

        def fails(*args: object, **kwargs: object) -> bool:
            raise KeyboardInterrupt("the restore was interrupted")

        template = registry.template(Target(path, "test", "rollback"))
        assert isinstance(template, TemplateBase)
        with monkeypatch.context() as patch:  # the working database's restore fails once
            patch.setattr(type(template._working), "make_equal", fails)
            with pytest.raises(KeyboardInterrupt):
                handle.reset()
        with pytest.raises(IsolationError, match="COMMIT"):
            handle.close()
    finally:
        registry.close()
