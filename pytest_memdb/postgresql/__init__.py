"""The PostgreSQL backend (``memdb_postgresql``): a throwaway server the plugin can start
(``server.py``, ``watchdog.py``), templates and their clones (``clones.py``), rollback
isolation on one held session (``rollback.py``), and the seam the registry uses
(``backend.py``)."""
