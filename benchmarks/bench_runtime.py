"""Serving a shipped SQLite file to an async app: memory copy vs immutable mmap vs plain file.

Side by side in one run, on one generated file (default 100 MB), for each way of serving it:

* throughput: primary-key lookups/s and range queries/s (50 rows through an index), from
  20 concurrent asyncio tasks, each query in its own SQLAlchemy ``AsyncSession`` (as a
  request would be), one worker process;
* set-up: from ``setup()`` (or ``create_async_engine``) to the first answered query;
* memory per process: PSS from ``/proc/self/smaps_rollup``, with 1 and with 4 worker
  processes serving the same file at once, after the queries and again after a full scan
  (every page touched once: the worst case for mmap).

The ways: ``InMemoryDatabase()`` (memory copy, the default mode),
``InMemoryDatabase(mode="mmap")`` (``mode=ro&immutable=1`` + ``PRAGMA mmap_size``) and a
plain ``mode=ro`` file with a warm page cache (SQLite's defaults, no mmap). All three use
the same pool (aiosqlite, ``pool_size=0``: a connection per concurrent task). Rounds are
interleaved (the ways' order rotates), every number is the median over rounds, and the
page cache is warmed before every round. Each worker is a fresh interpreter (this script
with ``--worker``), driven in lock-step over stdin/stdout.

    python benchmarks/bench_runtime.py             # 100 MB, 5 rounds: about 4-5 minutes
    python benchmarks/bench_runtime.py --quick     # 5 MB, 1 round, short runs (< 30 s)

The Markdown table is printed (and written to ``--out``/runtime.md, raw samples to
runtime.json). No thresholds: it reports, it does not judge.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WAYS = {
    "memory": "memory copy: `InMemoryDatabase()`",
    "mmap": 'immutable mmap: `InMemoryDatabase(mode="mmap")`',
    "file": "plain file (`mode=ro`), warm page cache",
}
TASKS = 20
RANGE_WIDTH = 500  # ``created`` spans 10 x rows, so a window holds about 50 rows
DATA_VERSION = 1  # bump when the generated schema or data changes

PK_SQL = "SELECT id, category, created, name, body FROM items WHERE id = :id"
RANGE_SQL = "SELECT id, name FROM items WHERE created BETWEEN :lo AND :hi ORDER BY created LIMIT 50"
SCAN_SQL = (
    "SELECT count(*), sum(length(body)) FROM items",
    "SELECT count(*) FROM items INDEXED BY ix_items_created WHERE created >= 0",
)


# --- the generated file -------------------------------------------------------------------


def generate(path: Path, size_mb: float) -> int:
    """A file of about ``size_mb`` MB: ``items`` with a PK, an indexed column and text."""
    rows = max(1000, int(size_mb * 1_000_000 / 450))
    marker = DATA_VERSION * 1_000_000_000 + rows
    if path.exists():
        conn = sqlite3.connect(path)
        try:
            if conn.execute("PRAGMA user_version").fetchone()[0] == marker:
                return rows
        finally:
            conn.close()
        path.unlink()
    print(f"generating {path} ({rows} rows)...", file=sys.stderr)
    path.parent.mkdir(parents=True, exist_ok=True)
    work = path.with_name(path.name + ".building")
    work.unlink(missing_ok=True)
    conn = sqlite3.connect(work)
    conn.executescript(
        f"""
        CREATE TABLE items (
            id INTEGER PRIMARY KEY,
            category INTEGER NOT NULL,
            created INTEGER NOT NULL,
            name TEXT NOT NULL,
            body TEXT NOT NULL
        );
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows})
        INSERT INTO items
        SELECT i, abs(random()) % 100, abs(random()) % {rows * 10},
               'item ' || i, hex(randomblob(200))
        FROM n;
        CREATE INDEX ix_items_created ON items (created);
        PRAGMA user_version = {marker};
        """
    )
    conn.commit()
    conn.execute("VACUUM")
    conn.close()
    work.replace(path)
    return rows


def warm(path: Path) -> None:
    """Read the whole file, so the ways that read it from the page cache find it there."""
    with path.open("rb") as handle:
        while handle.read(1 << 20):
            pass


# --- a worker process ----------------------------------------------------------------------


def pss_kb() -> int:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise RuntimeError("no Pss line in /proc/self/smaps_rollup")


async def worker(way: str, path: Path, rows: int, seed: int) -> None:
    """Answer commands read from stdin, one JSON line each, until ``exit``."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
    from sqlalchemy.pool import AsyncAdaptedQueuePool

    from pytest_memdb import InMemoryDatabase
    from pytest_memdb.sqlite.memory import file_uri

    rng = random.Random(seed)
    pk, window, scans = text(PK_SQL), text(RANGE_SQL), [text(sql) for sql in SCAN_SQL]
    db: InMemoryDatabase | None = None
    engine: Any = None
    maker: async_sessionmaker[AsyncSession] | None = None

    async def one_pk() -> None:
        assert maker is not None
        async with maker() as session:
            (await session.execute(pk, {"id": rng.randint(1, rows)})).one()

    async def one_range() -> None:
        assert maker is not None
        low = rng.randrange(rows * 10 - RANGE_WIDTH)
        async with maker() as session:
            (await session.execute(window, {"lo": low, "hi": low + RANGE_WIDTH})).all()

    async def throughput(query: Any, seconds: float) -> float:
        counts = [0] * TASKS
        for phase, length in (("warm", min(0.3, seconds)), ("measure", seconds)):
            deadline = time.perf_counter() + length

            async def loop(slot: int, deadline: float = deadline, phase: str = phase) -> None:
                while time.perf_counter() < deadline:
                    await query()
                    if phase == "measure":
                        counts[slot] += 1

            start = time.perf_counter()
            await asyncio.gather(*(loop(slot) for slot in range(TASKS)))
            elapsed = time.perf_counter() - start
        return sum(counts) / elapsed

    async def setup() -> float:
        nonlocal db, engine, maker
        start = time.perf_counter()
        if way == "file":
            url = f"{file_uri(path, read_only=True).replace('%', '%25')}&uri=true"
            engine = create_async_engine(
                f"sqlite+aiosqlite:///{url}", poolclass=AsyncAdaptedQueuePool, pool_size=0
            )
            maker = async_sessionmaker(engine, expire_on_commit=False)
        else:
            db = InMemoryDatabase(mode="mmap" if way == "mmap" else "memory")
            db.setup(path)
            maker = db.get_sessionmaker()
        await one_pk()
        return (time.perf_counter() - start) * 1000

    async def scan() -> None:
        assert maker is not None
        async with maker() as session:
            for statement in scans:
                (await session.execute(statement)).all()

    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        command, *args = line.split() or ["exit"]
        reply: dict[str, Any] = {}
        if command == "setup":
            reply["ms"] = await setup()
        elif command == "pk":
            reply["qps"] = await throughput(one_pk, float(args[0]))
        elif command == "range":
            reply["qps"] = await throughput(one_range, float(args[0]))
        elif command == "scan":
            await scan()
        elif command == "pss":
            reply["kb"] = pss_kb()
        elif command == "exit":
            if db is not None:
                await db.aclose()
            if engine is not None:
                await engine.dispose()
            print(json.dumps({}), flush=True)
            return
        else:
            raise SystemExit(f"unknown command {command!r}")
        print(json.dumps(reply), flush=True)


class Workers:
    """``n`` worker processes serving one file one way, driven in lock-step."""

    def __init__(self, way: str, path: Path, rows: int, n: int, seed: int) -> None:
        self.procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--worker", way, str(path), str(rows), str(seed + i)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                bufsize=1,
            )
            for i in range(n)
        ]

    def all(self, command: str) -> list[dict[str, Any]]:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(command + "\n")
            proc.stdin.flush()
        replies = []
        for proc in self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"a worker died on {command!r} (exit {proc.wait()})")
            replies.append(json.loads(line))
        return replies

    def close(self) -> None:
        self.all("exit")
        for proc in self.procs:
            proc.wait(timeout=60)


# --- the run -------------------------------------------------------------------------------


def measure(way: str, path: Path, rows: int, *, workers: int, seconds: float) -> dict[str, Any]:
    """One round of one way: 1 worker (throughput, set-up, PSS), then ``workers`` at once."""
    seed = random.randrange(1 << 30)
    one = Workers(way, path, rows, 1, seed)
    try:
        baseline = one.all("pss")[0]["kb"]
        setup_ms = one.all("setup")[0]["ms"]
        pk_qps = one.all(f"pk {seconds}")[0]["qps"]
        range_qps = one.all(f"range {seconds}")[0]["qps"]
        pss_one = one.all("pss")[0]["kb"]
        one.all("scan")
        pss_one_scan = one.all("pss")[0]["kb"]
    finally:
        one.close()
    many = Workers(way, path, rows, workers, seed + 1000)
    try:
        many.all("setup")
        many_pk = [r["qps"] for r in many.all(f"pk {seconds}")]
        many.all(f"range {seconds}")
        pss_many = [r["kb"] for r in many.all("pss")]
        many.all("scan")
        pss_many_scan = [r["kb"] for r in many.all("pss")]
    finally:
        many.close()
    return {
        "baseline_kb": baseline,
        "setup_ms": setup_ms,
        "pk_qps": pk_qps,
        "range_qps": range_qps,
        "pss_one_kb": pss_one,
        "pss_one_scan_kb": pss_one_scan,
        "many_pk_qps_sum": sum(many_pk),
        "pss_many_kb": pss_many,
        "pss_many_scan_kb": pss_many_scan,
    }


def mb(kb: float) -> str:
    return f"{kb / 1024:.0f}"


def report(samples: dict[str, list[dict[str, Any]]], header: str, workers: int) -> str:
    def median(way: str, key: str) -> float:
        return statistics.median(s[key] for s in samples[way])

    def spread(way: str, key: str, unit: str = "") -> str:
        values = [s[key] for s in samples[way]]
        shown = f"{statistics.median(values):.0f}{unit}"
        if len(values) > 1:
            shown += f" ({min(values):.0f}-{max(values):.0f})"
        return shown

    def each(way: str, key: str) -> float:
        return statistics.median(kb for s in samples[way] for kb in s[key])

    def total(way: str, key: str) -> float:
        return statistics.median(sum(s[key]) for s in samples[way])

    lines = [
        header,
        "",
        f"| way | PK lookups/s | range queries/s | set-up | PSS, 1 worker | "
        f"PSS, {workers} workers, each | PSS, {workers} workers, sum |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for way, label in WAYS.items():
        lines.append(
            f"| {label} | {spread(way, 'pk_qps')} | {spread(way, 'range_qps')} "
            f"| {spread(way, 'setup_ms', ' ms')} "
            f"| {mb(median(way, 'pss_one_kb'))} / {mb(median(way, 'pss_one_scan_kb'))} MB "
            f"| {mb(each(way, 'pss_many_kb'))} / {mb(each(way, 'pss_many_scan_kb'))} MB "
            f"| {mb(total(way, 'pss_many_kb'))} / {mb(total(way, 'pss_many_scan_kb'))} MB |"
        )
    base = statistics.median(s["baseline_kb"] for way in WAYS for s in samples[way])
    lines += [
        "",
        "Throughput and set-up: median (lowest-highest) over the rounds. "
        f"PSS is shown after the queries / after one full scan (every page touched once). A "
        f"worker with everything imported and no database open: {mb(base)} MB. The plain "
        "file's pages sit in the OS page cache, which no process's PSS counts; mmap'd pages "
        "are counted, shared out among the processes that map them.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, help="generated file size (default 100)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5)")
    parser.add_argument("--seconds", type=float, help="per throughput measurement (default 3)")
    parser.add_argument("--workers", type=int, default=4, help="the multi-process run's size")
    parser.add_argument("--quick", action="store_true", help="5 MB, 1 round, 0.5 s")
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "pytest-memdb-bench"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        way, path, rows, seed = args.worker
        asyncio.run(worker(way, Path(path), int(rows), int(seed)))
        return
    size = args.size_mb or (5.0 if args.quick else 100.0)
    rounds = args.rounds or (1 if args.quick else 5)
    seconds = args.seconds or (0.5 if args.quick else 3.0)
    path = args.workdir / f"runtime-{size:g}mb.sqlite"
    rows = generate(path, size)
    samples: dict[str, list[dict[str, Any]]] = {way: [] for way in WAYS}
    order = list(WAYS)
    for number in range(rounds):
        for way in order[number % len(order) :] + order[: number % len(order)]:
            warm(path)
            print(f"round {number + 1}/{rounds}: {way}", file=sys.stderr)
            samples[way].append(measure(way, path, rows, workers=args.workers, seconds=seconds))
    import aiosqlite
    import sqlalchemy

    header = (
        f"{path.stat().st_size / 1e6:.0f} MB file ({rows} rows), {TASKS} concurrent tasks, "
        f"{seconds:g} s per throughput figure, median of {rounds} interleaved round(s); "
        f"SQLite {sqlite3.sqlite_version}, Python {platform.python_version()}, "
        f"SQLAlchemy {sqlalchemy.__version__}, aiosqlite {aiosqlite.__version__}, "
        f"{os.cpu_count()} cores."
    )
    text = report(samples, header, args.workers)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "runtime.md").write_text(text + "\n")
    (args.out / "runtime.json").write_text(json.dumps(samples, indent=1) + "\n")


if __name__ == "__main__":
    main()
