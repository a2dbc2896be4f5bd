"""What kind of SQL statement a string is, from its first keyword.

Standard library only. Rollback mode (does it write?), copy mode (does it leave
state on its connection?) and query counting (is it transaction control?) all
ask the same question of a statement, so they share one reading of it.
"""

from __future__ import annotations


def leading_verb(statement: str) -> str:
    """The statement's first keyword, upper-cased ('' when there is none).

    Leading whitespace, parentheses, semicolons and ``--`` / ``/* */`` comments are
    skipped: ``/* by the app */ PRAGMA foreign_keys=ON`` is a ``PRAGMA``.
    """
    words = from_first_keyword(statement).split(None, 1)
    return words[0].upper() if words else ""


def from_first_keyword(statement: str) -> str:
    """``statement`` without what :func:`leading_verb` skips before its first keyword."""
    rest = statement
    while True:
        rest = rest.lstrip(" \t\r\n(;")
        if rest.startswith("--"):
            rest = rest.partition("\n")[2]
        elif rest.startswith("/*"):
            rest = rest.partition("*/")[2]
        else:
            return rest
