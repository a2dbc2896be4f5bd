"""Keeping the garbage collector from finalizing pooled connections at the wrong moment.

A session a test made and never closed keeps its pooled connection checked out. When the
collector takes the session (at any allocation, in whatever code runs then), SQLAlchemy's
finalizer detaches that connection from its pool record and terminates it. If that runs
while the plugin itself is closing the same record (disposing of rollback mode's
``StaticPool``, closing a copy-mode test's leftovers), SQLAlchemy's own checks fail
(``assert self.dbapi_connection is not None`` in the pool's close: once in about 50 runs
of the Hypothesis reset suite under load). Automatic collection is held off meanwhile; the
session is finalized later, when its record is closed already, and then does nothing.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    """No automatic garbage collection inside the block (an explicit ``gc.collect()``
    still runs). Nested use keeps it off until the outermost block ends."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()
