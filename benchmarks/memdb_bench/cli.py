"""The command line: ``python benchmarks/bench.py [options]`` (or ``python -m memdb_bench``).

Options and their defaults are documented in benchmarks/README.md; ``--quick`` only
changes defaults, so a quick run measures the same things, fewer times.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from memdb_bench.common import OUT_DIR, log
from memdb_bench.runner import run_benchmark
from memdb_bench.ways import WAYS


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark pytest-memdb against the usual ways of giving tests a database.",
    )
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    parser.add_argument("--sizes", help="fixture file sizes in MB, comma-separated (0.1,10,100)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (3)")
    parser.add_argument("--tests", type=int, help="tests in the generated suite (200)")
    parser.add_argument(
        "--budget",
        type=float,
        help="seconds of tests after which one suite run stops (4; 0 = never)",
    )
    parser.add_argument(
        "--min-tests",
        type=int,
        default=2,
        help="tests a capped run still runs, the first included (2)",
    )
    parser.add_argument("--pairs", type=int, help="installed-but-unused run pairs per round (5)")
    parser.add_argument(
        "--ways",
        help="comma-separated subset of: " + ",".join(w.key for w in WAYS),
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "pytest-memdb-bench",
        help="scratch folder for fixture files and generated suites (kept, files reused)",
    )
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="where results.md goes")
    args = parser.parse_args(argv)
    quick = args.quick
    args.sizes = [float(s) for s in (args.sizes or ("0.1,1" if quick else "0.1,10,100")).split(",")]
    args.rounds = args.rounds or (1 if quick else 3)
    args.tests = args.tests or (20 if quick else 200)
    args.budget = args.budget if args.budget is not None else (3.0 if quick else 4.0)
    args.pairs = args.pairs or (3 if quick else 5)
    args.inprocess_pairs = 6 if quick else 16
    if args.min_tests < 2:
        parser.error("--min-tests must be at least 2 (the first test is not measured)")
    keys = [w.key for w in WAYS]
    args.ways = args.ways.split(",") if args.ways else keys
    unknown = set(args.ways) - set(keys)
    if unknown:
        parser.error(f"unknown ways: {', '.join(sorted(unknown))}; choose from {keys}")
    shown = [Path(sys.executable).name, "benchmarks/bench.py", *(argv or sys.argv[1:])]
    args.command_line = shlex.join(shown)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run, write ``results.md`` and ``results.json``, print the report."""
    args = parse_args(argv)
    report = run_benchmark(args)
    text = report.write(args.out)
    print(text)
    log(f"written {args.out / 'results.md'} and results.json")
    return 0
