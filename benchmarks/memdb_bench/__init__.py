"""Benchmark pytest-memdb side by side with what test suites do today, in one run.

    python benchmarks/bench.py            # default: 0.1, 10 and 100 MB, 3 rounds, 200 tests
    python benchmarks/bench.py --quick    # a smoke run (under a minute)

What it does (see benchmarks/README.md for what every column means):

1. Generates SQLite fixture files of about the requested sizes (authors, books with a
   foreign key and indexes, reviews with text) into a scratch folder outside the
   repository, reused by later runs with the same parameters (:mod:`.data`).
2. Generates one pytest suite (async tests: reads by primary key and indexed columns,
   one write and a commit) that takes its database from a fixture named ``session``
   (:mod:`.suites`), and runs it under each "way" of providing that fixture
   (:mod:`.ways`: pytest-memdb's three isolation modes, the seed's shared-cache backup,
   a temp-file copy, create_all + re-inserting rows, one shared file, and a no-database
   baseline), each as its own ``python -m pytest`` subprocess. A small plugin inside each
   run times every test's set-up, call and teardown, so interpreter start-up does not
   blur the numbers.
3. Times the session start-up (file to memory) and the per-test copy in-process
   (:mod:`.micro`).
4. Times a one-test pytest run with and without ``-p no:memdb`` (the cost of the
   plugin being installed but unused: :mod:`.unused`).

Everything runs in interleaved turns over several rounds (the order rotates each
round: :mod:`.runner`) and the report shows medians (:mod:`.report`). The Markdown
report goes to stdout and to ``benchmarks/out/results.md``; the raw samples to
``benchmarks/out/results.json``. The command line is :mod:`.cli`; ``benchmarks/bench.py``
is its documented entry point.
"""
