"""Hooks pytest-memdb adds (declared through ``pytest_addhooks``, so pluggy checks them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from pytest_memdb.core.config import Target


def pytest_memdb_template(connection: Connection, config: pytest.Config, target: Target) -> None:
    """Seed a template database in Python, once per session (per xdist worker).

    Called for every template (the ``memdb`` fixture's and each ``memdb_factory``
    fixture's, per fixture file and metadata), after the fixture file was copied, the
    metadata's tables created and the ``memdb_load`` steps run, inside the same
    transaction: if an implementation raises, nothing of the seeding is kept and every
    test using that template errors with the exception. ``target`` says which template
    this is (``target.fixture``, ``target.file``, ``target.metadata``); implementations
    may leave it out of their signature.
    """
