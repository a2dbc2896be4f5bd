"""The fixture files: SQLite databases of about the requested sizes, generated once.

Built with the generated suite's own models (so the schema is what the tests expect),
filled with ``executemany`` in one transaction, then ``VACUUM``ed; kept in the scratch
folder under a name that holds the row counts and :data:`DATA_VERSION`, so later runs
with the same parameters reuse them (the 100 MB file takes about 10 s to build).
"""

from __future__ import annotations

import importlib.util
import random
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from memdb_bench.common import log

DATA_VERSION = 1
"""Bump when the generated data changes, so cached fixture files are rebuilt."""
BYTES_PER_BOOK = 650
"""File bytes per book (with its share of authors and its two reviews), measured."""

_VOCABULARY = (
    "the a of and to in is it that was for on with as his her they at be this from "
    "have or by one had not but what all were when we there can an your which their "
    "said if do will each about how up out them then she many some so these would other "
    "into has more two like him see time could no make than first been its who now people "
    "my made over did down only way find use may water long little very after words called "
    "just where most know get through back much before go good new write our used me man "
    "too any day same right look think also around another came come work three word must "
    "because does part even place well such here take why things help put years different "
    "away again off went old number great tell men say small every found still between name "
    "should home big give air line set own under read last never us left end along while "
    "might next sound below saw something thought both few those always looked show large "
    "often together asked house world going want school important until form food keep "
    "children feet land side without boy once animals life enough took sometimes four head "
    "above kind began almost live page got earth need far hand high year mother light parts "
    "country father let night following picture being study second eyes soon times story "
    "boys since white days ever paper hard near sentence better best across during today "
    "others however sure means knew try told young miles sun ways thing whole hear example "
    "heard several change answer room sea against top turned learn point city play toward "
    "five using himself usually plot chapter novel author ending characters slow brilliant"
)
WORDS = tuple(_VOCABULARY.split())
COUNTRIES = ("GB", "US", "FR", "DE", "IT", "ES", "NL", "SE", "NO", "PL", "JP", "BR", "IN")


@dataclass(frozen=True)
class Fixture:
    """A generated fixture file and its row counts."""

    target_mb: float
    path: Path
    authors: int
    books: int
    reviews: int

    @property
    def label(self) -> str:
        return f"{self.target_mb:g} MB"

    @property
    def size_mb(self) -> float:
        return self.path.stat().st_size / 1e6


def fixture_for(target_mb: float, data_dir: Path, models: Any) -> Fixture:
    """The fixture file of about ``target_mb`` MB, generated unless already there."""
    books = max(20, round(target_mb * 1e6 / BYTES_PER_BOOK))
    authors = max(5, books // 8)
    reviews = 2 * books
    path = data_dir / f"bench-v{DATA_VERSION}-{authors}a-{books}b-{reviews}r.sqlite"
    if not path.exists():
        started = time.perf_counter()
        partial = path.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        generate(partial, authors, books, reviews, models)
        partial.rename(path)
        log(
            f"generated {path.name}: {path.stat().st_size / 1e6:.1f} MB "
            f"in {time.perf_counter() - started:.1f} s"
        )
    return Fixture(target_mb, path, authors, books, reviews)


def generate(path: Path, authors: int, books: int, reviews: int, models: Any) -> None:
    """Create the schema from the suite's models and fill it in one transaction."""
    from sqlalchemy import create_engine

    engine = create_engine(f"sqlite:///{path}")
    models.Base.metadata.create_all(engine)
    engine.dispose()
    rng = random.Random(20240101)
    epoch = datetime(2015, 1, 1)

    def sentence(low: int, high: int) -> str:
        return " ".join(rng.choices(WORDS, k=rng.randint(low, high)))

    author_rows = (
        (i, sentence(2, 3).title(), rng.choice(COUNTRIES), rng.randint(1900, 2000))
        for i in range(1, authors + 1)
    )
    book_rows = (
        (
            i,
            rng.randint(1, authors),
            sentence(2, 7).capitalize(),
            f"978{(i * 7919 + 12345) % 10**10:010d}",  # unique: 7919 is coprime to 10**10
            rng.randint(1950, 2024),
            rng.randint(499, 4999),
        )
        for i in range(1, books + 1)
    )
    review_rows = (
        (
            i,
            rng.randint(1, books),
            rng.randint(1, 5),
            sentence(20, 60).capitalize() + ".",
            (epoch + timedelta(seconds=rng.randint(0, 9 * 365 * 86400))).isoformat(" "),
        )
        for i in range(1, reviews + 1)
    )
    conn = sqlite3.connect(path)
    with conn:  # one transaction
        conn.executemany("INSERT INTO authors VALUES (?, ?, ?, ?)", author_rows)
        conn.executemany("INSERT INTO books VALUES (?, ?, ?, ?, ?, ?)", book_rows)
        conn.executemany(
            "INSERT INTO reviews (id, book_id, rating, body, created_at) VALUES (?, ?, ?, ?, ?)",
            review_rows,
        )
    conn.execute("VACUUM")
    conn.close()


def load_models(common: Path) -> Any:
    """The generated ``models.py``, imported from its file: the fixture files are built
    with the very models the suite's tests (and create_all way) use."""
    spec = importlib.util.spec_from_file_location("bench_models", common / "models.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"bench: cannot import {common / 'models.py'}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
