"""Build ``schema.sqlite`` ONCE from fastapi-users-db-sqlalchemy's own test metadata.

Run from the root of the unpacked sdist (``python build_schema.py schema.sqlite``).
The project's tests declare three ``DeclarativeBase`` classes (``tests/test_users.py``:
``Base`` and ``OAuthBase``; ``tests/test_access_token.py``: ``Base``) that all map a
``user`` table; their ``user`` columns agree except that the access-token one lacks the
nullable ``first_name``, so one file holding the union (``create_all`` with its default
``checkfirst=True`` keeps the first ``user`` it creates) serves every test.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sqlalchemy import create_engine

sys.path.insert(0, str(Path.cwd()))

from tests import test_access_token, test_users  # the project's own test modules

METADATA = [
    test_users.Base.metadata,  # user (with first_name)
    test_users.OAuthBase.metadata,  # + oauth_account
    test_access_token.Base.metadata,  # + accesstoken
]


def main(path: Path) -> None:
    path.unlink(missing_ok=True)
    engine = create_engine(f"sqlite:///{path}")
    for metadata in METADATA:
        metadata.create_all(engine)
    engine.dispose()
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "schema.sqlite"))
