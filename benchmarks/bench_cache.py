"""``memdb_cache``: a 2 s migration chain under ``pytest -n 2``, cold and warm.

Builds a project with an unchanged ``alembic init`` env.py and three migrations that
take 2 s in all (each sleeps, as a slow data migration would), and a suite of 8 tests
on the migrated template. Runs it with two xdist workers, interleaved, RUNS times each:

* without the cache: each worker runs the migrations, in every run;
* cache cold (``--cache-clear --memdb-cache``): one worker migrates, the other waits for
  the file lock and loads what it wrote;
* cache warm (``--memdb-cache``, the cache left by the previous run): nobody migrates.

Prints the median wall time of each (``python -m pytest`` as a subprocess, start to end)
and how many times the migrations ran, counted by a line each appends to a log.

Usage: python benchmarks/bench_cache.py [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIGRATION = """\
import time

import sqlalchemy as sa
from alembic import op

revision = "{rev}"
down_revision = {down}


def upgrade():
    with open("{log}", "a") as log:
        log.write("migrated\\n")
    time.sleep({sleep})
    op.create_table("t{rev}", sa.Column("id", sa.Integer(), primary_key=True))
"""

TESTS = """\
import pytest
from sqlalchemy import text


@pytest.mark.parametrize("n", range(8))
def test_migrated(memdb_sync_session, n):
    tables = memdb_sync_session.execute(
        text("SELECT count(*) FROM sqlite_master WHERE name LIKE 't000%'")
    ).scalar()
    assert tables == 3
"""

INI = """\
[pytest]
memdb_alembic = alembic.ini
"""

WAYS = {
    "without the cache": [],
    "cache cold (--cache-clear --memdb-cache)": ["--cache-clear", "--memdb-cache"],
    "cache warm (--memdb-cache)": ["--memdb-cache"],
}


def make_project(root: Path, seconds: float) -> Path:
    from alembic import command
    from alembic.config import Config

    command.init(Config(str(root / "alembic.ini")), str(root / "migrations"))
    log = root / "migrations.log"
    revisions = ["0001", "0002", "0003"]
    for i, rev in enumerate(revisions):
        down = repr(revisions[i - 1]) if i else "None"
        (root / "migrations" / "versions" / f"{rev}.py").write_text(
            MIGRATION.format(rev=rev, down=down, log=log, sleep=seconds / len(revisions))
        )
    (root / "pytest.ini").write_text(INI)
    (root / "test_migrated.py").write_text(TESTS)
    return log


def run(root: Path, log: Path, args: list[str]) -> tuple[float, int]:
    before = len(log.read_text().splitlines()) if log.exists() else 0
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "2", *args],
        cwd=root,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"pytest failed ({args}):\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}")
    after = len(log.read_text().splitlines()) if log.exists() else 0
    return wall, (after - before) // 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="the chain's length (2)")
    options = parser.parse_args()
    walls: dict[str, list[float]] = {way: [] for way in WAYS}
    chains: dict[str, list[int]] = {way: [] for way in WAYS}
    with tempfile.TemporaryDirectory(prefix="memdb-bench-cache-") as scratch:
        root = Path(scratch)
        log = make_project(root, options.seconds)
        run(root, log, [])  # warm-up: bytecode, imports
        for _ in range(options.runs):
            for way, args in WAYS.items():  # cold must come right before warm
                wall, migrated = run(root, log, args)
                walls[way].append(wall)
                chains[way].append(migrated)
                print(f"{way}: {wall:.2f} s, migrations ran {migrated}x", file=sys.stderr)
    print(
        f"### A {options.seconds:g} s migration chain, 8 tests, pytest -n 2 "
        f"(median of {options.runs} runs)\n"
    )
    print("| way | wall time | migration chains run |")
    print("| --- | ---: | ---: |")
    for way in WAYS:
        runs = sorted(set(chains[way]))
        print(f"| {way} | {statistics.median(walls[way]):.2f} s | {'/'.join(map(str, runs))} |")


if __name__ == "__main__":
    main()
