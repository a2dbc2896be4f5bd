"""The SQLite backend: in-memory databases, page restores, loading files, connections,
rollback's shared connection, the template and its working databases."""
