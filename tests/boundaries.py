"""Shared pieces of the ``test_boundaries_*`` modules: reading what each inner test did."""

from __future__ import annotations

import re

import pytest

SUMMARY = re.compile(r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS|RERUN) (\S+)(?: - (.*))?$")

WIDE = {"COLUMNS": "1000"}
"""A terminal wide enough that the short summary keeps each message whole."""


def outcomes(result: pytest.RunResult) -> dict[str, list[str]]:
    """Each inner test's outcomes from the ``-rA`` short summary, by the test's name (the
    part of its node id after the last ``::``): ``{"test_1": ["PASSED", "ERROR"]}`` for a
    test that passed and errored at teardown."""
    seen: dict[str, list[str]] = {}
    for line in result.outlines:
        match = SUMMARY.match(line)
        if match:
            name = match.group(2).rsplit("::", 1)[-1]
            seen.setdefault(name, []).append(match.group(1))
    return seen


def failed(result: pytest.RunResult, name: str) -> bool:
    """Whether the inner test ``name`` failed or errored (in set-up, call or teardown)."""
    return bool({"FAILED", "ERROR"} & set(outcomes(result).get(name, [])))


def passed_cleanly(result: pytest.RunResult, name: str) -> bool:
    """Whether the inner test ``name`` passed, with no error at its set-up or teardown."""
    return outcomes(result).get(name) == ["PASSED"]


def plugin_error_lines(result: pytest.RunResult, *fragments: str) -> list[str]:
    """The output lines with a ``pytest-memdb:`` message that holds every fragment."""
    return [
        line
        for line in result.outlines
        if "pytest-memdb:" in line and all(fragment in line for fragment in fragments)
    ]


def tail(result: pytest.RunResult) -> str:
    """The end of the inner run's output, for an assertion's message."""
    lines = [re.sub(r"([=_-])\1{20,}", r"\1\1\1", line) for line in result.outlines[-60:]]
    return "\n".join(lines)
