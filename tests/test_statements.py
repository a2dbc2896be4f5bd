"""One reading of a statement's first keyword serves rollback, copy and query counting."""

from __future__ import annotations

import pytest

from pytest_memdb.core.statements import leading_verb
from pytest_memdb.integrations.queries import TRANSACTION_CONTROL
from pytest_memdb.sqlite.savepoints import is_write


@pytest.mark.parametrize(
    ("statement", "verb"),
    [
        ("SELECT 1", "SELECT"),
        ("  (select 1)", "SELECT"),
        ("-- why\nINSERT INTO t VALUES (1)", "INSERT"),
        ("/* by the app */ pragma foreign_keys=ON", "PRAGMA"),
        ("/* a */ -- b\n /* c */ savepoint sa_1", "SAVEPOINT"),
        (";\n begin", "BEGIN"),
        ("", ""),
        ("-- only a comment", ""),
    ],
)
def test_leading_verb_skips_whitespace_parentheses_and_comments(statement: str, verb: str) -> None:
    assert leading_verb(statement) == verb


@pytest.mark.parametrize(
    ("statement", "writes"),
    [
        ("/* lookup */ SELECT * FROM user", False),
        ("-- add\nINSERT INTO user (name) VALUES ('x')", True),
        ("PRAGMA user_version", False),
        ("PRAGMA user_version = 3", True),
        ("-- nothing", False),
    ],
)
def test_rollback_mode_takes_a_savepoint_only_for_writes(statement: str, writes: bool) -> None:
    assert is_write(statement) is writes


def test_commented_transaction_control_is_still_transaction_control() -> None:
    assert leading_verb("/* sqlalchemy */ ROLLBACK TO SAVEPOINT sa_1") in TRANSACTION_CONTROL
