"""PostgreSQL backend: a throwaway server, template clones, rollback isolation."""
