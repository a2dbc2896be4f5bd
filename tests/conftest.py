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
