"""What every part of the benchmark shares: paths, pytest's flags, rotation, medians, logging.

Kept free of the other modules' imports, so any of them can use it without a cycle.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TypeVar

BENCHMARKS_DIR = Path(__file__).resolve().parent.parent
"""``benchmarks/``: the report goes below it, whichever way the package was started."""
OUT_DIR = BENCHMARKS_DIR / "out"
PYTEST_FLAGS = ("-q", "-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:randomly")
"""Every pytest run the benchmark starts: no cache (a run must not speed up the next one),
no Hypothesis plugin (its start-up is not what is measured)."""

T = TypeVar("T")


def rotate(items: Sequence[T], by: int) -> list[T]:
    """``items`` started ``by`` places later: each round runs its turns in another order, so
    a slow moment of a shared machine does not always hit the same way or method."""
    by %= max(1, len(items))
    return [*items[by:], *items[:by]]


def median(values: Iterable[float]) -> float:
    """The median, or NaN when a way or size did not run (the report shows ``n/a``)."""
    values = list(values)
    return statistics.median(values) if values else float("nan")


def write_if_changed(path: Path, text: str) -> None:
    """Rewrite a generated file only when its text changed: an unchanged file keeps its
    mtime, so the subprocesses' bytecode caches stay valid from run to run."""
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def log(message: str) -> None:
    """Progress to stderr: stdout carries the report."""
    print(f"# {message}", file=sys.stderr, flush=True)
