"""The plugin's own fixed cost per test, beside a hand-rolled engine with no isolation.

One generated suite of N tests, each a primary-key lookup, one insert and a commit on a
0.1 MB template (a ``user`` table of a few hundred rows), run as real pytest subprocesses
(``python -m pytest -q -p no:cacheprovider ...`` in a temporary project) for each way of
giving a test its session:

- ``hand-rolled``: a module-level engine in ``conftest.py`` on one in-memory shared-cache
  database, filled from the template once per session, a plain (async_)sessionmaker
  fixture, no isolation (``-p no:memdb``, so the plugin costs nothing here);
- ``session``, ``rollback``, ``copy``: pytest-memdb in that isolation mode;

for three kinds of suite: async tests (pytest-asyncio auto mode, function loop scope),
sync tests (``memdb_sync_session`` beside a hand-rolled sync engine), and async tests
with ``asyncio_default_test_loop_scope = session`` (fixture loop scope too, for the
hand-rolled async fixture).

Two measures per test. In the process: the median over the N tests of each test's whole
``pytest_runtest_protocol`` (set-up, call, teardown, reports), timed by the outermost hook
wrapper in the project's conftest; a median over hundreds of tests is robust to the shared
machine's noise (whole-run figures below moved by +-400 us between quiet rounds), and it
leaves out only what pytest does between tests. Per-test cost from the wall clock =
(wall time of the N-test run - wall time of a 1-test run of the same
project) / (N - 1): interpreter start-up, imports, collection of one module and the
template's set-up cancel out. Each figure is the median over interleaved rounds; every
round runs every (kind, way, tree) in a rotated order, so a slow moment of the shared
machine does not always hit the same column.

``--trees before=/work/before,after=/work/main`` runs each memdb way against several
source trees of the plugin in the same run, interleaved, by putting the tree first on
``PYTHONPATH`` of the subprocesses (the pytest11 entry point imports
``pytest_memdb.plugin`` by name, so it follows). Every run records which
``pytest_memdb.plugin`` it loaded and the benchmark stops if that is not the intended tree.

    python benchmarks/bench_fixed_cost.py                      # the installed plugin
    python benchmarks/bench_fixed_cost.py --trees before=/work/before,after=/work/main
    python benchmarks/bench_fixed_cost.py --quick               # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PYTEST = (sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider")
PYTEST_EXTRA = ("-p", "no:hypothesispytest", "-p", "no:randomly")  # not what is measured
TEMPLATE_ROWS = 400

MODELS_PY = """\
from sqlalchemy import Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "user"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    email: Mapped[str] = mapped_column(String(200))
    bio: Mapped[str] = mapped_column(Text)
"""

TEST_ASYNC_PY = """\
import pytest

from models import User

N_ROWS = {rows}


@pytest.mark.parametrize("i", range({tests}))
async def test_user(memdb_session, i):
    user = await memdb_session.get(User, 1 + (i * 7919) % N_ROWS)
    assert user is not None
    memdb_session.add(User(name=f"new {{i}}", email=f"new{{i}}@example.com", bio="x"))
    await memdb_session.commit()
"""

TEST_SYNC_PY = """\
import pytest

from models import User

N_ROWS = {rows}


@pytest.mark.parametrize("i", range({tests}))
def test_user(memdb_sync_session, i):
    user = memdb_sync_session.get(User, 1 + (i * 7919) % N_ROWS)
    assert user is not None
    memdb_sync_session.add(User(name=f"new {{i}}", email=f"new{{i}}@example.com", bio="x"))
    memdb_sync_session.commit()
"""

# Every conftest records which plugin tree the run loaded (the memdb ways) and how long
# each test's whole protocol took in the process (set-up, call, teardown, reports: the
# outermost wrapper of pytest_runtest_protocol); written at the end of the session.
CONFTEST_CHECK = """\
import json
import os
import sys
import time

import pytest

_durations = []


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    start = time.perf_counter_ns()
    yield
    _durations.append(time.perf_counter_ns() - start)


def pytest_sessionfinish(session, exitstatus):
    plugin = sys.modules.get("pytest_memdb.plugin")
    with open(os.environ["BENCH_CHECK"], "w") as out:
        json.dump({"plugin": plugin.__file__ if plugin is not None else "-",
                   "durations_ns": _durations}, out)
"""

CONFTEST_MEMDB = CONFTEST_CHECK  # the tests ask for memdb_session / memdb_sync_session

CONFTEST_HAND_ASYNC = (
    CONFTEST_CHECK
    + """
import asyncio
import sqlite3

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.pool import StaticPool

# Once per session: the template into one in-memory shared-cache database, kept alive by
# this connection; one module-level engine on it; no isolation (writes persist).
_URI = f"file:hand-{os.getpid()}?mode=memory&cache=shared"
_keeper = sqlite3.connect(_URI, uri=True, check_same_thread=False)
with sqlite3.connect(os.environ["BENCH_TEMPLATE"]) as _source:
    _source.backup(_keeper)
engine = create_async_engine(f"sqlite+aiosqlite:///{_URI}&uri=true", poolclass=StaticPool)
Session = async_sessionmaker(engine, expire_on_commit=False)


@pytest.fixture
async def memdb_session():
    async with Session() as session:
        yield session


def pytest_unconfigure(config):
    asyncio.run(engine.dispose())
    _keeper.close()
"""
)

CONFTEST_HAND_SYNC = (
    CONFTEST_CHECK
    + """
import sqlite3

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import StaticPool

_URI = f"file:hand-{os.getpid()}?mode=memory&cache=shared"
_keeper = sqlite3.connect(_URI, uri=True, check_same_thread=False)
with sqlite3.connect(os.environ["BENCH_TEMPLATE"]) as _source:
    _source.backup(_keeper)
engine = create_engine(f"sqlite:///{_URI}&uri=true", poolclass=StaticPool)
Session = sessionmaker(engine, expire_on_commit=False)


@pytest.fixture
def memdb_sync_session():
    with Session() as session:
        yield session


def pytest_unconfigure(config):
    engine.dispose()
    _keeper.close()
"""
)

WAYS = ("hand", "session", "rollback", "copy")
WAY_LABELS = {"hand": "hand-rolled", "session": "session", "rollback": "rollback", "copy": "copy"}


@dataclass(frozen=True)
class Kind:
    key: str
    label: str
    test_py: str
    hand_conftest: str
    loop_scope: str = "function"


KINDS = (
    Kind("async", "async tests (function loop)", TEST_ASYNC_PY, CONFTEST_HAND_ASYNC),
    Kind("sync", "sync tests", TEST_SYNC_PY, CONFTEST_HAND_SYNC),
    Kind(
        "async-sl",
        "async tests, loop scope session",
        TEST_ASYNC_PY,
        CONFTEST_HAND_ASYNC,
        loop_scope="session",
    ),
)


@dataclass(frozen=True)
class Job:
    kind: Kind
    way: str
    tree: str  # a label of --trees

    @property
    def name(self) -> str:
        return f"{self.kind.key}-{self.way}-{self.tree}"


def log(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


def make_template(path: Path) -> None:
    """About 0.1 MB: a ``user`` table of TEMPLATE_ROWS rows, VACUUMed."""
    path.unlink(missing_ok=True)
    db = sqlite3.connect(path)
    db.execute(
        'CREATE TABLE "user" (id INTEGER NOT NULL PRIMARY KEY, name VARCHAR(100) NOT NULL, '
        "email VARCHAR(200) NOT NULL, bio TEXT NOT NULL)"
    )
    db.executemany(
        'INSERT INTO "user" (id, name, email, bio) VALUES (?, ?, ?, ?)',
        (
            (i, f"user {i}", f"user{i}@example.com", f"bio of user {i} " + "lorem ipsum " * 17)
            for i in range(1, TEMPLATE_ROWS + 1)
        ),
    )
    db.commit()
    db.execute("VACUUM")
    db.close()


def write_project(root: Path, kind: Kind, way: str, tests: int) -> None:
    """One project folder: models, the N-test and 1-test files, conftest, pytest.ini."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "models.py").write_text(MODELS_PY)
    (root / "test_many.py").write_text(kind.test_py.format(rows=TEMPLATE_ROWS, tests=tests))
    (root / "test_one.py").write_text(kind.test_py.format(rows=TEMPLATE_ROWS, tests=1))
    (root / "conftest.py").write_text(kind.hand_conftest if way == "hand" else CONFTEST_MEMDB)
    ini = [
        "[pytest]",
        "asyncio_mode = auto",
        f"asyncio_default_fixture_loop_scope = {kind.loop_scope}",
        f"asyncio_default_test_loop_scope = {kind.loop_scope}",
    ]
    if way != "hand":
        ini += ["memdb_file = ../template.sqlite", f"memdb_isolation = {way}"]
    (root / "pytest.ini").write_text("\n".join(ini) + "\n")


def run_once(
    job: Job, root: Path, test_file: str, expect: int, tree: Path | None, template: Path
) -> tuple[float, float, float]:
    """One pytest subprocess: its wall time and CPU time (user + sys), in seconds, and the
    median of its tests' protocol times, in microseconds. Checks that the tests passed and
    that the run loaded the intended tree of the plugin."""
    check = root / f"check-{test_file}.txt"
    check.unlink(missing_ok=True)
    env = {**os.environ, "BENCH_CHECK": str(check), "BENCH_TEMPLATE": str(template)}
    env.pop("PYTHONPATH", None)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    cmd = [*PYTEST, *PYTEST_EXTRA]
    if job.way == "hand":
        cmd += ["-p", "no:memdb"]
    cmd.append(test_file)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
    if proc.returncode != 0 or f"{expect} passed" not in proc.stdout:
        raise SystemExit(f"{job.name} {test_file} failed:\n{proc.stdout[-3000:]}{proc.stderr}")
    recorded = json.loads(check.read_text())
    loaded = recorded["plugin"]
    if job.way == "hand":
        if loaded != "-":
            raise SystemExit(f"{job.name}: pytest-memdb was loaded ({loaded})")
    else:
        expected = (tree or installed_tree()) / "pytest_memdb" / "plugin.py"
        if Path(loaded).resolve() != expected.resolve():
            raise SystemExit(f"{job.name}: loaded {loaded}, expected {expected}")
    return elapsed, cpu, statistics.median(recorded["durations_ns"]) / 1e3


def installed_tree() -> Path:
    import pytest_memdb

    return Path(pytest_memdb.__file__).resolve().parent.parent


def parse_trees(text: str | None) -> dict[str, Path | None]:
    if not text:
        return {"installed": None}
    trees: dict[str, Path | None] = {}
    for item in text.split(","):
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise SystemExit(f"--trees: expected label=path, got {item!r}")
        tree = Path(path).expanduser().resolve()
        if not (tree / "pytest_memdb" / "plugin.py").is_file():
            raise SystemExit(f"--trees: {tree} has no pytest_memdb/plugin.py")
        trees[label] = tree
    return trees


def fmt(value: float, signed: bool) -> str:
    if value != value:  # NaN
        return "n/a"
    return f"{value:+.0f}" if signed else f"{value:.0f}"


Samples = dict[tuple[str, str, str], list[float]]
"""(kind, way, tree) -> the per-test cost of each round, in microseconds."""


def table(samples: Samples, kinds: list[Kind], trees: list[str]) -> list[str]:
    """One Markdown table: hand-rolled's own cost per test, each memdb mode's difference to
    it (the same tree's hand-rolled run of the same round, then the median over rounds)."""
    header = ["tests"]
    for way in WAYS:
        for tree in trees:
            suffix = f" {tree}" if len(trees) > 1 else ""
            header.append(f"{WAY_LABELS[way]}{suffix}")
    lines = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |",
    ]
    for kind in kinds:
        row = [kind.label]
        for way in WAYS:
            for tree in trees:
                values = samples[(kind.key, way, tree)]
                if way == "hand":
                    row.append(fmt(statistics.median(values), signed=False))
                else:
                    hand = samples[(kind.key, "hand", tree)]
                    pairs = [v - h for v, h in zip(values, hand, strict=True)]
                    row.append(fmt(statistics.median(pairs), signed=True))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def spread(samples: Samples, kinds: list[Kind], trees: list[str]) -> list[str]:
    """min-max over rounds of each column's own per-test cost: how far to trust a cell."""
    lines = ["| tests | way | " + " | ".join(trees) + " |"]
    lines += ["| --- | --- | " + " | ".join(["---:"] * len(trees)) + " |"]
    for kind in kinds:
        for way in WAYS:
            cells = []
            for tree in trees:
                values = samples[(kind.key, way, tree)]
                cells.append(f"{min(values):.0f} to {max(values):.0f}")
            lines.append(f"| {kind.label} | {WAY_LABELS[way]} | " + " | ".join(cells) + " |")
    return lines


def report(
    metrics: dict[str, Samples],
    kinds: list[Kind],
    trees: list[str],
    args: argparse.Namespace,
    template_kb: float,
) -> str:
    intro = (
        f"N = {args.tests} tests, {args.rounds} interleaved rounds, medians; template "
        f"{template_kb:.0f} KB ({TEMPLATE_ROWS} rows); trees: "
        + ", ".join(f"{t} = {args.tree_paths[t]}" for t in trees)
        + ". The hand-rolled column is its own cost per test; each memdb column is the "
        "difference to hand-rolled (the same tree, the same round), in us per test."
    )
    lines = [
        intro,
        "",
        "In the process: the median over the N tests of each test's whole protocol "
        "(set-up, call, teardown, reports), then the median over rounds",
        "",
    ]
    lines += table(metrics["protocol"], kinds, trees)
    lines += ["", "Wall time: (N-test run - 1-test run) / (N - 1)", ""]
    lines += table(metrics["wall"], kinds, trees)
    lines += ["", "CPU time (user + sys of the pytest process), the same formula", ""]
    lines += table(metrics["cpu"], kinds, trees)
    lines += ["", "Spread over rounds of each column's own wall per-test cost, us", ""]
    lines += spread(metrics["wall"], kinds, trees)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tests", type=int, default=None, help="tests in the suite (400)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (5)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 40 tests, 1 round")
    parser.add_argument(
        "--trees",
        default=None,
        help="label=path,... of plugin source trees to compare (default: the installed one)",
    )
    parser.add_argument("--kinds", default=",".join(k.key for k in KINDS), help="async,sync,...")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args(argv)
    args.tests = args.tests or (40 if args.quick else 400)
    args.rounds = args.rounds or (1 if args.quick else 5)
    if args.tests < 2:
        parser.error("--tests must be at least 2")
    trees = parse_trees(args.trees)
    kinds = [k for k in KINDS if k.key in args.kinds.split(",")]

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="memdb-fixed-cost-"))
    workdir.mkdir(parents=True, exist_ok=True)
    template = workdir / "template.sqlite"
    make_template(template)
    template_kb = template.stat().st_size / 1024
    jobs = [Job(k, way, tree) for k in kinds for way in WAYS for tree in trees]
    for job in jobs:
        write_project(workdir / job.name, job.kind, job.way, args.tests)
    log(f"workdir {workdir}, template {template_kb:.0f} KB, {len(jobs)} projects")
    for label, tree in trees.items():
        log(f"tree {label}: {tree or installed_tree()}")

    # warm-up: bytecode caches of every project and tree, and the check of what loaded
    for job in jobs:
        root = workdir / job.name
        run_once(job, root, "test_one.py", 1, trees[job.tree], template)
        run_once(job, root, "test_many.py", args.tests, trees[job.tree], template)
    log("warm-up done; every run loaded its intended tree")

    # every round: the (kind, way) groups in a new random order, each group's trees
    # back to back (their order alternating), so drift hits before and after alike
    groups = [(k, way) for k in kinds for way in WAYS]
    metrics: dict[str, Samples] = {"protocol": {}, "wall": {}, "cpu": {}}
    raw = []
    for rnd in range(args.rounds):
        order = groups[:]
        random.Random(rnd).shuffle(order)
        started = time.perf_counter()
        for n, (kind, way) in enumerate(order):
            labels = list(trees) if (rnd + n) % 2 == 0 else list(trees)[::-1]
            for t, label in enumerate(labels):
                job = Job(kind, way, label)
                root = workdir / job.name
                files = [("test_one.py", 1), ("test_many.py", args.tests)]
                if (rnd + n + t) % 2:
                    files.reverse()
                times = {f: run_once(job, root, f, e, trees[label], template) for f, e in files}
                for i, metric in enumerate(("wall", "cpu")):
                    many, one = times["test_many.py"][i], times["test_one.py"][i]
                    cost = (many - one) / (args.tests - 1) * 1e6
                    metrics[metric].setdefault((kind.key, way, label), []).append(cost)
                median_us = times["test_many.py"][2]
                metrics["protocol"].setdefault((kind.key, way, label), []).append(median_us)
                raw.append({"round": rnd, "job": job.name, **times})
        log(f"round {rnd + 1}/{args.rounds}: {time.perf_counter() - started:.0f} s")

    args.tree_paths = {label: tree or installed_tree() for label, tree in trees.items()}
    text = report(metrics, kinds, list(trees), args, template_kb)
    (workdir / "raw.json").write_text(json.dumps(raw, indent=1))
    print(text)
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        log(f"raw samples: {workdir / 'raw.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
