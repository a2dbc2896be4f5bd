"""What the plugin tells the terminal: the report header's lines and the run's summary line."""

from __future__ import annotations

from pytest_memdb.core.config import MemdbConfig


def sources(settings: MemdbConfig) -> str:
    sources = []
    if settings.file is not None:
        sources.append(f"file={settings.file} ({settings.file_origin})")
    if settings.metadata is not None:
        sources.append(f"metadata={settings.metadata} ({settings.metadata_origin})")
    if settings.alembic is not None:
        sources.append(f"alembic={settings.alembic} ({settings.alembic_revision})")
    if settings.load:
        sources.append(f"{len(settings.load)} load step(s)")
    strict = ", strict=on (memdb_strict)" if settings.strict else ""
    if not sources:
        return "memdb: strict=on (memdb_strict)" if settings.strict else ""
    return (
        f"memdb: {', '.join(sources)}, isolation={settings.isolation}, "
        f"{restore_line(settings)}{strict}"
    )


def restore_line(settings: MemdbConfig) -> str:
    """Which restore copy and rollback use, as the issue asks the header to say."""
    if settings.postgresql is not None:
        if settings.isolation == "rollback":
            return "restore=rollback of the outer transaction (PostgreSQL)"
        return "restore=a new clone of the template (PostgreSQL)"
    if settings.restore == "backup":
        return "restore=backup (memdb_restore)"
    from pytest_memdb.sqlite import pages

    if pages.page_vfs() is None:
        return f"restore=backup (page restores not available: {pages.unavailable_reason})"
    return "restore=pages written (memdb-pages VFS)"
