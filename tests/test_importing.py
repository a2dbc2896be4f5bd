"""Options naming a module that is loaded under another name (rootdir vs. test-folder
imports): the module already loaded from that file is used, or the run says both names."""

from __future__ import annotations

import pytest

from tests.helpers import write_ini

MODELS = """
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "item"
    id: Mapped[int] = mapped_column(primary_key=True)
"""

# The tests put the package folder itself on sys.path and import ``models``, as a suite
# whose conftest does so (or pytest's rootdir-relative imports) would; then they register
# one more model on that copy's Base.
TESTS = """
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "app"))

import models  # the same file as app.models, under another name
{extra_import}
from sqlalchemy import text
from sqlalchemy.orm import Mapped, mapped_column


class Extra(models.Base):
    __tablename__ = "extra"
    id: Mapped[int] = mapped_column(primary_key=True)


async def test_every_model_is_in_the_template(memdb_session):
    rows = await memdb_session.execute(
        text("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
    )
    assert list(rows.scalars()) == ["extra", "item"]
"""


def project(pytester: pytest.Pytester, extra_import: str = "") -> None:
    pytester.mkpydir("app")
    (pytester.path / "app" / "models.py").write_text(MODELS)
    write_ini(pytester, memdb_metadata="app.models:Base")
    pytester.makepyfile(test_models=TESTS.format(extra_import=extra_import))


def test_the_module_already_loaded_from_the_file_is_used(pytester: pytest.Pytester) -> None:
    project(pytester)
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_a_file_loaded_under_both_names_is_an_error_naming_both(pytester: pytest.Pytester) -> None:
    project(pytester, extra_import="import app.models")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "pytest-memdb: memdb_metadata in pytest.ini 'app.models:Base': the file "
            "*models.py is loaded twice, as module 'app.models' and as 'models'*"
        ]
    )
