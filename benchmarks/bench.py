"""Benchmark pytest-memdb side by side with what test suites do today, in one run.

    python benchmarks/bench.py            # default: 0.1, 10 and 100 MB, 3 rounds, 200 tests
    python benchmarks/bench.py --quick    # a smoke run (under a minute)

The entry point README and CONTRIBUTING document; the benchmark itself is the package
beside it, ``memdb_bench`` (what each module does: its ``__init__``). Running this file
puts ``benchmarks/`` on ``sys.path``, which is how the package is found.
"""

from __future__ import annotations

from memdb_bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
