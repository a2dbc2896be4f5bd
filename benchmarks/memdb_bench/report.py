"""The report: Markdown tables of medians, and the issue's targets with met / missed.

Every number is a median over rounds; the per-test columns subtract the baseline's (or
the way's floor's) figure of the same round before taking the median, so a slow round
moves both sides of a difference together.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memdb_bench.common import median
from memdb_bench.data import Fixture
from memdb_bench.micro import COPY_METHODS, STARTUP_METHODS, MicroBench, Samples
from memdb_bench.suites import RunResult
from memdb_bench.unused import UnusedBench
from memdb_bench.ways import ALL_WAYS, BASELINE, FLOORS


def tests_cell(results: Sequence[RunResult]) -> str:
    """``200``, or ``17-21 of 200 (capped)`` when the budget stopped a run."""
    low, high = min(r.tests for r in results), max(r.tests for r in results)
    counts = str(low) if low == high else f"{low}-{high}"
    if any(r.capped for r in results):
        return f"{counts} of {results[0].requested} (capped)"
    return counts


def fmt(value: float, digits: int = 2) -> str:
    if value != value:  # NaN
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.{digits}f}"


def ratio(value: float, base: float) -> str:
    if base <= 0 or value != value or base != base:
        return "n/a"
    return f"{value / base:.2g}x" if value / base < 10 else f"{value / base:,.0f}x"


def table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str = "") -> list[str]:
    align = align or "l" + "r" * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |")
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return lines


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_lines(args: argparse.Namespace, fixtures: list[Fixture]) -> list[str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    files = "; ".join(
        f"{f.label}: {f.size_mb:.2f} MB ({f.authors:,} authors, {f.books:,} books, "
        f"{f.reviews:,} reviews)"
        for f in fixtures
    )
    versions = ", ".join(
        f"{name} {package_version(name)}"
        for name in ("SQLAlchemy", "aiosqlite", "pytest", "pytest-asyncio", "pytest-memdb")
    )
    return [
        f"- command: `{args.command_line}`",
        f"- machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {cpu}, "
        f"{platform.system()} {platform.release()}; load average at start {load}",
        f"- Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, {versions}",
        f"- fixture files: {files}",
        f"- rounds: {args.rounds}; tests per suite run: {args.tests} (a run stops early once "
        f"its tests took {args.budget:g} s, after at least {args.min_tests} tests: 'capped'); "
        f"every number is the median over rounds",
    ]


@dataclass
class Report:
    """Everything one benchmark run measured, and the Markdown made of it."""

    args: argparse.Namespace
    fixtures: list[Fixture]
    runs: list[RunResult]
    micro: MicroBench
    unused: UnusedBench
    elapsed_s: float = 0.0
    lines: list[str] = field(default_factory=list)

    def results(self, size: str, way: str) -> list[RunResult]:
        return [r for r in self.runs if r.size == size and r.way == way]

    def paired(self, size: str, way: str, metric: Callable[[RunResult], float]) -> float:
        """Median over rounds of (this way's metric - the baseline's, same round)."""
        base = {r.round: metric(r) for r in self.results(size, BASELINE.key)}
        return median(metric(r) - base[r.round] for r in self.results(size, way))

    def added_ms(self, size: str, way: str) -> float:
        return self.paired(size, way, lambda r: r.total_ms)

    def overhead_ms(self, size: str, way: str) -> float:
        return self.paired(size, way, lambda r: r.fixture_ms)

    def isolation_ms(self, size: str, way: str) -> float:
        """What isolation adds per test: *added* minus its floor's, same round (median).

        The floor is the same way without isolation: pytest-memdb ``session`` for the
        pytest-memdb modes (same engines, same in-memory database), the one shared disk
        file for the others (same driver on a disk file).
        """
        floor = FLOORS.get(way)
        if floor is None:
            return float("nan")
        base = {r.round: r.total_ms for r in self.results(size, floor)}
        return median(
            r.total_ms - base[r.round] for r in self.results(size, way) if r.round in base
        )

    def peak_rss_mb(self, size: str, way: str) -> float:
        return median(r.maxrss_mb for r in self.results(size, way))

    def render(self) -> str:
        out = self.lines = ["# pytest-memdb benchmark", ""]
        out += machine_lines(self.args, self.fixtures)
        out += [f"- total time of this benchmark: {self.elapsed_s:.0f} s", ""]
        self.render_suite()
        self.render_startup()
        self.render_copy()
        self.render_unused()
        self.render_targets()
        return "\n".join(out) + "\n"

    def render_suite(self) -> None:
        out = self.lines
        out += [
            "## Per test: the same suite under each way",
            "",
            "Times inside the run, per test, first test excluded (its set-up also pays the "
            "session start-up, shown in its own column). **added** = set-up + body + "
            "teardown minus the no-database baseline's: what the database costs each test. "
            "**fixture** = set-up + teardown minus the baseline's. **isolation** = *added* "
            "minus the *added* of the same way without isolation (the floor: pytest-memdb "
            "session for pytest-memdb's modes, the one shared file for the others). "
            "Ratios are of *added*.",
            "",
        ]
        header = (
            "way",
            "tests",
            "added ms/test",
            "fixture ms/test",
            "isolation ms/test",
            "set-up ms",
            "body ms",
            "teardown ms",
            "x copy",
            "x rollback",
            "1st set-up ms",
            "wall s",
            "peak RSS MB",
        )
        for fixture in self.fixtures:
            size = fixture.label
            out += [f"### {size} ({fixture.size_mb:.2f} MB file)", ""]
            copy_added = self.added_ms(size, "copy")
            rollback_added = self.added_ms(size, "rollback")
            rows = []
            for way in ALL_WAYS:
                results = self.results(size, way.key)
                if not results:
                    continue
                tests_text = tests_cell(results)
                is_base = way is BASELINE
                added = float("nan") if is_base else self.added_ms(size, way.key)
                rows.append(
                    (
                        way.label,
                        tests_text,
                        "-" if is_base else fmt(added),
                        "-" if is_base else fmt(self.overhead_ms(size, way.key)),
                        fmt(self.isolation_ms(size, way.key)) if way.key in FLOORS else "-",
                        fmt(median(r.setup_ms for r in results)),
                        fmt(median(r.call_ms for r in results)),
                        fmt(median(r.teardown_ms for r in results)),
                        "-" if is_base else ratio(added, copy_added),
                        "-" if is_base else ratio(added, rollback_added),
                        fmt(median(r.first_setup_ms for r in results), 1),
                        fmt(median(r.wall_s for r in results), 1),
                        fmt(median(r.maxrss_mb for r in results), 0),
                    )
                )
            out += table(header, rows)
            out.append("")
        capped = sorted({(r.way, r.size) for r in self.runs if r.capped})
        if capped:
            out += [
                "Capped runs (stopped by the time budget, per-test numbers from the tests "
                "that ran): " + ", ".join(f"{w} at {s}" for w, s in capped) + ".",
                "",
            ]

    def render_startup(self) -> None:
        out = self.lines
        out += [
            "## Session start-up: the fixture file into memory (in-process, ms)",
            "",
            "`load_file` is what pytest-memdb does once per session (per xdist worker): "
            "read-only backup() into a memdb database, then `PRAGMA quick_check`; its two "
            "steps are timed on their own below it. Warm page cache.",
            "",
        ]
        self.micro_table(
            self.micro.startup,
            STARTUP_METHODS,
            (STARTUP_METHODS[3], STARTUP_METHODS[4]),
            label="load_file",
            digits=2,
        )

    def render_copy(self) -> None:
        out = self.lines
        out += [
            "## Per-test copy of the database (in-process, ms)",
            "",
            "Copy mode restores its one copy in place after a test that wrote (timed here "
            "after a one-row UPDATE by another connection, then after 1,000 rows): by "
            "copying back the pages the test wrote (`memdb_restore = auto`, the default), "
            "and by the backup of the whole template (`memdb_restore = backup`); "
            "a fresh `MemoryDatabase.copy` (copy and free) was the 0.1 mechanism. "
            "Then what the temp-file way does per test, and one plain memory copy of the "
            "file's bytes.",
            "",
        ]
        self.micro_table(
            self.micro.copy, COPY_METHODS, COPY_METHODS[2:], label="page restore", digits=3
        )

    def micro_table(
        self,
        store: Samples,
        methods: Sequence[str],
        against: Sequence[str],
        *,
        label: str,
        digits: int,
    ) -> None:
        """One micro-benchmark table: a row of medians per method and size, then the first
        method's ratio to each of ``against``, in rows named ``label / other``."""
        sizes = [f.label for f in self.fixtures]
        first = methods[0]
        rows = [
            (method, *(fmt(MicroBench.median_ms(store, s, method), digits) for s in sizes))
            for method in methods
        ]
        for other in against:
            cells = [
                ratio(MicroBench.median_ms(store, s, first), MicroBench.median_ms(store, s, other))
                for s in sizes
            ]
            rows.append((f"{label} / {other.strip()}", *cells))
        self.lines.extend(table(("method", *sizes), rows))
        self.lines.append("")

    def render_unused(self) -> None:
        out = self.lines
        unused = self.unused
        out += [
            "## Installed but unused: a one-test pytest run (ms)",
            "",
            f"{len(unused.wall_ms[True])} pairs of `python -m pytest` runs in alternating order, "
            "with pytest-memdb loaded and with `-p no:memdb` (CPU = the child's user + system "
            "time). On a shared machine single runs vary by hundreds of ms, so the plugin's "
            "cost is also measured in two precise parts: its import in a fresh interpreter "
            f"(after pytest), and {len(unused.inprocess_ms[True])} alternating pairs of "
            "`pytest.main()` calls in one interpreter (its hooks, with every module already "
            "imported). **estimate** = import + in-process difference.",
            "",
        ]

        def row(name: str, pick: Callable[[list[float]], float]) -> tuple[str, ...]:
            return (
                name,
                fmt(pick(unused.wall_ms[True]), 1),
                fmt(pick(unused.wall_ms[False]), 1),
                fmt(pick(unused.wall_ms[True]) - pick(unused.wall_ms[False]), 1),
                fmt(pick(unused.cpu_ms[True]) - pick(unused.cpu_ms[False]), 1),
            )

        paired = (
            "median of pairwise differences",
            "",
            "",
            fmt(median(unused.differences(unused.wall_ms)), 1),
            fmt(median(unused.differences(unused.cpu_ms)), 1),
        )
        inprocess = (
            "in-process `pytest.main()`, median",
            fmt(median(unused.inprocess_ms[True]), 1),
            fmt(median(unused.inprocess_ms[False]), 1),
            fmt(median(unused.differences(unused.inprocess_ms)), 2),
            "",
        )
        rows = [
            row("subprocess, median", median),
            row("subprocess, fastest", min),
            paired,
            inprocess,
            ("`import pytest_memdb.plugin`, median", "", "", fmt(median(unused.import_ms), 2), ""),
            ("**estimate**", "", "", f"**{fmt(unused.estimate_ms, 2)}**", ""),
        ]
        header = ("", "loaded", "`-p no:memdb`", "difference", "CPU difference")
        out += table(header, rows)
        out.append("")

    def render_targets(self) -> None:
        out = self.lines
        sizes = [f.label for f in self.fixtures]
        rows: list[tuple[str, str, str]] = []

        def check(name: str, measured: str, values: Sequence[float], ok: bool) -> None:
            if any(value != value for value in values):  # NaN: a way or size did not run
                verdict = "n/a (not run)"
            else:
                verdict = "met" if ok else "**missed**"
            rows.append((name, measured, verdict))

        def micro_copy(size: str, method: str) -> float:
            return MicroBench.median_ms(self.micro.copy, size, method)

        for size in sizes:
            copy_added, temp_added = self.added_ms(size, "copy"), self.added_ms(size, "tempfile")
            check(
                f"copy: per-test cost <= 1/2 of the temp-file copy's ({size})",
                f"added {fmt(copy_added)} vs {fmt(temp_added)} ms; isolation over its floor "
                f"{fmt(self.isolation_ms(size, 'copy'))} vs "
                f"{fmt(self.isolation_ms(size, 'tempfile'))} ms",
                (copy_added, temp_added),
                copy_added <= temp_added / 2,
            )
        if "0.1 MB" in sizes:
            value = self.isolation_ms("0.1 MB", "copy")
            check(
                "copy: isolation < 1 ms per test at 0.1 MB (added minus memdb session's)",
                f"{fmt(value)} ms (fixture cost over the no-db baseline: "
                f"{fmt(self.overhead_ms('0.1 MB', 'copy'))} ms)",
                (value,),
                value < 1,
            )
        for fixture in self.fixtures:
            if fixture.target_mb < 1:
                continue
            size = fixture.label
            value = self.isolation_ms(size, "copy")
            restore = micro_copy(size, COPY_METHODS[0])
            raw = micro_copy(size, COPY_METHODS[5])
            check(
                f"copy: within 2x of bytearray(data) ({size})",
                f"isolation in the suite {fmt(value)} ms, restore alone {fmt(restore)} ms, "
                f"vs bytearray {fmt(raw)} ms",
                (value, raw),
                value <= 2 * raw,
            )
        rollback = {s: self.isolation_ms(s, "rollback") for s in sizes}
        for size, value in rollback.items():
            check(
                f"rollback: isolation < 1 ms per test ({size})",
                f"{fmt(value)} ms over memdb session (fixture cost over the no-db baseline: "
                f"{fmt(self.overhead_ms(size, 'rollback'))} ms)",
                (value,),
                value < 1,
            )
        if len(rollback) > 1:
            values = list(rollback.values())
            check(
                "rollback: flat across sizes (spread < 0.5 ms)",
                f"{fmt(min(values))} .. {fmt(max(values))} ms",
                values,
                max(values) - min(values) < 0.5,
            )
        for fixture in self.fixtures:
            size = fixture.label
            # The interpreter's baseline: pytest-memdb's session-mode run (same plugin, same
            # libraries, same engines) minus its two databases, the template and the
            # session's copy. The shared-file run (no pytest-memdb modules) is shown too.
            peak = self.peak_rss_mb(size, "copy")
            file_mb = fixture.size_mb * 1e6 / 2**20
            base = self.peak_rss_mb(size, "session") - 2 * file_mb
            bound = base + 3 * file_mb
            check(
                f"copy: peak RSS <= baseline + template + 2 copies ({size})",
                f"{fmt(peak, 0)} MB vs {fmt(base, 0)} + 3 x {fmt(file_mb, 1)} = {fmt(bound, 0)} MB "
                f"(baseline: the session-mode run minus its 2 databases; the shared-file run "
                f"peaked at {fmt(self.peak_rss_mb(size, 'shared'), 0)} MB)",
                (peak, base),
                peak <= bound,
            )
        if self.fixtures:
            size = max(self.fixtures, key=lambda f: f.target_mb).label
            load = MicroBench.median_ms(self.micro.startup, size, STARTUP_METHODS[0])
            seed = MicroBench.median_ms(self.micro.startup, size, STARTUP_METHODS[3])
            raw = MicroBench.median_ms(self.micro.startup, size, STARTUP_METHODS[4])
            check(
                f"start-up ({size}) <= 1/3 of the seed's backup()",
                f"{fmt(load)} vs {fmt(seed)} ms",
                (load, seed),
                load <= seed / 3,
            )
            check(
                f"start-up ({size}) within 2x of read_bytes + bytearray",
                f"{fmt(load)} vs {fmt(raw)} ms",
                (load, raw),
                load <= 2 * raw,
            )
            later = MicroBench.median_ms(self.micro.startup, size, STARTUP_METHODS[5])
            bare = MicroBench.median_ms(self.micro.startup, size, STARTUP_METHODS[1])
            check(
                f"start-up ({size}), a later run (quick_check remembered) within 1.2x of a "
                "bare backup()",
                f"{fmt(later)} vs {fmt(bare)} ms",
                (later, bare),
                later <= 1.2 * bare,
            )
        unused = self.unused
        paired = median(unused.differences(unused.wall_ms))
        check(
            "installed but unused < 20 ms (estimate: import + in-process hooks)",
            f"{fmt(unused.estimate_ms, 1)} ms (subprocess median of pairs: {fmt(paired, 1)} ms)",
            (unused.estimate_ms,),
            unused.estimate_ms < 20,
        )
        out += ["## Targets (from the issue)", ""]
        out += table(("target", "measured (median)", "verdict"), rows, "lll")
        out.append("")

    def raw(self) -> dict[str, Any]:
        """Every sample behind the medians (``results.json``): to look again without a rerun."""
        micro, unused = self.micro, self.unused
        return {
            "command": self.args.command_line,
            "runs": [r.__dict__ for r in self.runs],
            "startup_ms": {f"{s} | {m}": v for (s, m), v in micro.startup.items()},
            "copy_ms": {f"{s} | {m}": v for (s, m), v in micro.copy.items()},
            "unused_wall_ms": {"loaded": unused.wall_ms[True], "no:memdb": unused.wall_ms[False]},
            "unused_cpu_ms": {"loaded": unused.cpu_ms[True], "no:memdb": unused.cpu_ms[False]},
            "import_ms": unused.import_ms,
            "inprocess_ms": {
                "loaded": unused.inprocess_ms[True],
                "no:memdb": unused.inprocess_ms[False],
            },
        }

    def write(self, out: Path) -> str:
        """Render, write ``results.md`` and ``results.json`` into ``out``; the Markdown."""
        text = self.render()
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.md").write_text(text)
        (out / "results.json").write_text(json.dumps(self.raw(), indent=1))
        return text
