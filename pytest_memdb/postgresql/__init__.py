"""The PostgreSQL backend: a throwaway server the plugin can start, and the databases on it."""
