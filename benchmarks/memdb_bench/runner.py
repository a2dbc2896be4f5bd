"""One benchmark run: the warm-up, then interleaved rounds of every measurement.

Each round runs, in order: the start-up and copy micro-benchmarks for every size (sizes
in rotated order), the installed-but-unused pairs, then the suite under every way for
every size (ways in rotated order). Rotating from round to round keeps a slow moment of
a shared machine from always hitting the same way; the report takes medians over rounds.
"""

from __future__ import annotations

import argparse
import time

from memdb_bench.common import log, rotate
from memdb_bench.data import fixture_for, load_models
from memdb_bench.micro import MicroBench, micro_reps
from memdb_bench.report import Report
from memdb_bench.suites import RunResult, SuiteRunner
from memdb_bench.unused import UnusedBench
from memdb_bench.ways import BASELINE, WAYS


def run_benchmark(args: argparse.Namespace) -> Report:
    """Everything ``args`` asks for, measured; the report is rendered by the caller."""
    started = time.perf_counter()
    workdir = args.workdir.resolve()
    runner = SuiteRunner(workdir, args.budget, args.min_tests)
    models = load_models(runner.common)
    data_dir = workdir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    fixtures = [fixture_for(mb, data_dir, models) for mb in args.sizes]
    for fixture in fixtures:
        fixture.path.read_bytes()  # warm the page cache
    ways = [w for w in WAYS if w.key in args.ways] + [BASELINE]
    micro = MicroBench(workdir / "scratch")
    unused = UnusedBench(workdir)

    log("warm-up: each way once, 2 tests, smallest file")
    for way in ways:
        runner.run(way, fixtures[0], 2, -1)
    runs: list[RunResult] = []
    for round_ in range(args.rounds):
        log(f"round {round_ + 1}/{args.rounds}")
        for fixture in rotate(fixtures, round_):
            start_reps, copy_reps = micro_reps(fixture)
            micro.startup_round(fixture, start_reps, round_)
            micro.copy_round(fixture, copy_reps, round_)
        unused.round(args.pairs, args.inprocess_pairs, round_)
        for fixture in fixtures:
            for way in rotate(ways, round_):
                result = runner.run(way, fixture, args.tests, round_)
                runs.append(result)
                log(
                    f"  {fixture.label:>7} {way.key:<9} {result.tests:>4} tests "
                    f"{result.total_ms:8.2f} ms/test  wall {result.wall_s:6.1f} s"
                )
    return Report(args, fixtures, runs, micro, unused, time.perf_counter() - started)
