"""What every backend shares: settings and targets, templates' sources, the isolation
strategies, layers, the handle, the registry, the cache.

The strategies (``isolation.py``) see a backend's working database only through its
``WorkingDatabase`` protocol. Not yet backend-free: ``cache``, ``cache_key``, ``janitor``,
``layers``, ``registry`` and ``templates`` still import SQLite modules.
"""
