"""Errors the plugin raises on purpose, so fixtures can turn them into clean test errors."""

from __future__ import annotations


class MemdbError(Exception):
    """A problem with the user's configuration or fixture file, explained in plain words.

    The plugin reports these with ``pytest.fail(..., pytrace=False)``: the message
    is the whole story, and a traceback into our internals would only hide it.
    """


class FixtureFileError(MemdbError):
    """The configured SQLite fixture file cannot be used as a template."""


class IsolationError(MemdbError):
    """A test escaped its isolation; the database was restored, and the test is reported.

    Raised when the test's database is handed back (its teardown), after the plugin made
    the database equal to the template again, so later tests are not affected.
    """


class MemdbWarning(UserWarning):
    """Something that works, but probably not as the user meant (rows written where no test
    will see them): shown in pytest's warnings summary, under the test it concerns."""
