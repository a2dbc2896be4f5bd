from __future__ import annotations

from pathlib import Path

import pytest

# Import the plugin's heavy half once in the outer process: pytester restores sys.modules
# after every in-process run, so without this each inner run would import SQLAlchemy anew.
import pytest_memdb.registry  # noqa: F401
from tests.helpers import make_sqlite


@pytest.fixture
def app_db(pytester: pytest.Pytester) -> Path:
    """A three-user fixture file inside the pytester project, at ``data/app.sqlite``."""
    return make_sqlite(pytester.path / "data" / "app.sqlite")


@pytest.fixture
def pytester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """pytester, with pytest-randomly and pytest-rerunfailures (installed for the tests that
    run under them) off in the inner runs unless a test turns them on: most inner suites
    check what test 2 sees after test 1, and rerunfailures starts a server thread that the
    thread checks would count. pytester clears ``PYTEST_ADDOPTS`` when it is made, so it is
    set after."""
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:randomly -p no:rerunfailures")
    return pytester
