from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import make_sqlite


@pytest.fixture
def app_db(pytester: pytest.Pytester) -> Path:
    """A three-user fixture file inside the pytester project, at ``data/app.sqlite``."""
    return make_sqlite(pytester.path / "data" / "app.sqlite")
