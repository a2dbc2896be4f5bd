"""A read blocked by a pending write says what happened and the way out."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import write_ini


@pytest.mark.parametrize("isolation", ["copy", "session"])
def test_database_is_locked_explains_itself(
    pytester: pytest.Pytester, app_db: Path, isolation: str
) -> None:
    write_ini(pytester, memdb_file="data/app.sqlite", memdb_isolation=isolation)
    pytester.makepyfile(
        """
        import pytest
        from sqlalchemy import text
        from sqlalchemy.exc import OperationalError

        async def test_read_past_a_pending_write(memdb_session, memdb_sessionmaker):
            await memdb_session.execute(text("INSERT INTO user (name) VALUES ('pending')"))
            async with memdb_sessionmaker() as app_session:  # as the app would
                with pytest.raises(OperationalError) as caught:
                    await app_session.execute(text("SELECT count(*) FROM user"))
            print("ERROR", str(caught.value).replace("\\n", " "))
            await memdb_session.rollback()
        """
    )

    result = pytester.runpytest("-s", "-p", "no:cacheprovider")

    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR (pytest-memdb: another connection to this in-memory database holds an "
            "uncommitted write.*or use memdb_isolation = rollback, where reads never wait.) "
            "(sqlite3.OperationalError) database is locked*"
        ]
    )
