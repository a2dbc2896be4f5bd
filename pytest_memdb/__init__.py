"""pytest-memdb: a shipped SQLite file, copied into memory, for async SQLAlchemy tests and apps."""
