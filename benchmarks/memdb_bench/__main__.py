"""``python -m memdb_bench`` (from ``benchmarks/``): the same as ``python benchmarks/bench.py``."""

from memdb_bench.cli import main

raise SystemExit(main())
