"""Build ``schema.sqlite`` ONCE from sqlalchemy-crud-plus's own test metadata.

Run from the root of the unpacked sdist (``python build_schema.py schema.sqlite``): the
same three ``create_all`` calls as the project's ``setup_database`` fixture, on a file.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sqlalchemy import create_engine

sys.path.insert(0, str(Path.cwd()))

from tests.models.basic import Base  # the project's own models
from tests.models.no_relationship import NoRelBase
from tests.models.relationship import RelationBase


def main(path: Path) -> None:
    path.unlink(missing_ok=True)
    engine = create_engine(f"sqlite:///{path}")
    for base in (Base, RelationBase, NoRelBase):
        base.metadata.create_all(engine)
    engine.dispose()
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "schema.sqlite"))
