"""Importing what the options name (``package.module:attr``), as if from the ini file's folder.

Imports SQLAlchemy (for ``MetaData``): load lazily. One trap gets its own check: a module
imported under two names. With the rootdir and a test folder both on ``sys.path``,
``app.models`` and ``models`` can be one file loaded twice, as two modules with two
``Base`` classes; the tests register their models on one, and a template built from the
other's metadata is silently half empty. So when the module an option names is not
loaded yet but its file is, under another name, that module is used (never imported a
second time); when both names are loaded, the run stops with an error naming both.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from sqlalchemy import MetaData

from pytest_memdb.errors import MemdbError
from pytest_memdb.messages import IMPORT_FAILED, NOT_A_METADATA


def import_object(dotted: str, origin: str, base_dir: Path) -> Any:
    """``package.module:Name`` imported as if from ``base_dir`` (the ini file's folder)."""
    module = import_module(dotted.partition(":")[0], origin, base_dir, dotted=dotted)
    return attribute_of(module, dotted, origin)


def attribute_of(module: ModuleType, dotted: str, origin: str) -> Any:
    """What ``dotted``'s attribute path (after the colon) names in ``module``, now."""
    module_name, _, attribute = dotted.partition(":")
    found: Any = module
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise MemdbError(
                f"pytest-memdb: {origin} {dotted!r}: module {module_name!r} has no attribute "
                f"{attribute!r}."
            ) from None
    return found


def import_module(
    module_name: str, origin: str, base_dir: Path, *, dotted: str | None = None
) -> ModuleType:
    """Module ``module_name`` imported as if from ``base_dir``, with the loaded-twice check.

    ``dotted`` is what the option said (``module:attr``), for the messages; the module's
    name when the option names a module.
    """
    dotted = module_name if dotted is None else dotted
    folder = str(base_dir)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        return _loaded_as_other(module_name, dotted, origin) or importlib.import_module(module_name)
    except MemdbError:
        raise
    except Exception as exc:
        raise MemdbError(
            IMPORT_FAILED(
                origin=origin,
                dotted=dotted,
                module=module_name,
                folder=folder,
                error=f"{type(exc).__name__}: {exc}",
            )
        ) from exc
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)


def _loaded_as_other(module_name: str, dotted: str, origin: str) -> ModuleType | None:
    """The module already loaded from ``module_name``'s file under another name, if any."""
    loaded = sys.modules.get(module_name)
    if loaded is not None:
        path = _file_of(loaded)
    else:
        try:
            spec = importlib.util.find_spec(module_name)
        except (ImportError, ValueError):
            return None  # the import itself reports it
        path = os.path.realpath(spec.origin) if spec is not None and spec.origin else None
    if path is None:
        return None
    base = os.path.basename(path)  # realpath only where the name could match: ~50 us each
    others = sorted(
        name
        for name, module in list(sys.modules.items())
        if name != module_name
        and module is not loaded
        and os.path.basename(str(getattr(module, "__file__", None))) == base
        and _file_of(module) == path
    )
    if not others:
        return None
    if loaded is not None:
        raise MemdbError(
            f"pytest-memdb: {origin} {dotted!r}: the file {path} is loaded twice, as "
            f"module {module_name!r} and as {others[0]!r}: two copies of every class in it, "
            "so the template could miss the models registered on the other copy. Import it "
            f"under one name everywhere (name {others[0]!r} in the option, or fix sys.path: "
            "rootdir vs. test-folder imports, see pytest's --import-mode)."
        )
    return sys.modules[others[0]]


def _file_of(module: object) -> str | None:
    file = getattr(module, "__file__", None)
    return os.path.realpath(file) if isinstance(file, str) else None


def import_metadata(dotted: str, origin: str, base_dir: Path) -> MetaData:
    """The ``MetaData`` that ``dotted`` names, directly or as a declarative base's."""
    found = import_object(dotted, origin, base_dir)
    if isinstance(found, MetaData):
        return found
    metadata = getattr(found, "metadata", None) if isinstance(found, type) else None
    if isinstance(metadata, MetaData):
        return metadata
    raise MemdbError(NOT_A_METADATA(origin=origin, dotted=dotted, found=describe(found)))


def describe(obj: object) -> str:
    """What an object is, for an error message: 'a function (<function f ...>)'."""
    name = type(obj).__name__
    kind = (
        "a class" if isinstance(obj, type) else f"{'an' if name[0] in 'AEIOUaeiou' else 'a'} {name}"
    )
    return f"{kind} ({obj!r})"
