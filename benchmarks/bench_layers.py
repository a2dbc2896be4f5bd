"""Layers and Hypothesis resets: what issue 13's two features cost per test, side by side.

Both parts run real pytest subprocesses (``python -m pytest -q -p no:cacheprovider -p
no:randomly ...``) on generated projects in a temporary folder, all sharing one 0.1 MB
template: a ``user`` table of 400 rows and an empty ``post`` table (foreign key to
``user``, indexed ``user_id``), ``VACUUM``ed, given as ``memdb_file``. Each project's
``conftest.py`` times, in the process, every test's whole ``pytest_runtest_protocol``
(set-up, call, teardown, reports; the outermost hook wrapper) and its
``pytest_runtest_call``, and writes them to a JSON file at the end of the session, with the
``pytest_memdb.plugin`` the run loaded. Every run must pass all its tests.

**Part 1: a module of N tests (default 50) that all need the same extra data** (20 users,
100 posts of about 200 characters: five per user). Each test reads one of those users'
posts by the indexed foreign key and asserts there are exactly five (so a write leaking
from an earlier test fails the run), adds a post and commits. Ways, each in ``copy`` and
in ``rollback`` isolation:

- ``template only (floor)``: the same read and write on a template user, no extra data:
  what the test costs without any per-module data;
- ``per-test fixture``: a function-scoped async fixture inserts the data through
  ``memdb_session`` (ORM ``add_all``, a flush for the users' ids, the posts, a commit)
  before every test: what suites do today;
- ``module layer (sync)``: a module-scoped fixture writes the same data once through
  ``memdb_module.sync_session()``;
- ``module layer (async)``: the same through ``memdb_module.session()`` in a
  ``loop_scope="module"`` async fixture.

Reported per run: the median over the N tests of each test's protocol time (only the
first test builds a layer, so the median leaves the build out), the mean over the tests
but the first, the first test's protocol time (which also pays the session's start-up:
the template into memory, the plugin's SQLAlchemy side; and, for a layer, writing it and
freezing it into a template), the summed set-up time of the ``extra`` fixture over the run
(a ``pytest_fixture_setup`` wrapper: once for a layer, N times for the per-test fixture;
the layer's freeze happens later, in the first test's ``memdb`` set-up, and is not in it),
and the wall time of the whole subprocess; each the median over interleaved rounds.

**Part 2: a Hypothesis test of 100 examples with ``await memdb.areset()`` at the start of
each example, beside the same test without the reset**, async, in ``copy``, ``rollback``
and ``session`` isolation. Each example adds one ``user`` row (no unique column, no count
asserted: the test without the reset passes too) and commits, through ``memdb_session``.
Settings: ``max_examples=100, deadline=None, database=None, derandomize=True``, the
``function_scoped_fixture`` health check suppressed, ``@given(st.integers(...))``;
Hypothesis's pytest plugin stays loaded. One process per mode runs two untimed warm-up
tests (20 examples each; the one with the reset asserts every example starts from the
template's 400 rows), then ``--pairs`` pairs of the two timed tests in ABBA order. The
extra cost of the resets = the call phase of the test with the reset minus that of the
test without, per pair; the median over the pairs of a run, then over rounds. Start-up,
collection and the fixtures' set-up and teardown are outside the call phase, so they
cancel; the per-reset figure divides by the examples the test really ran (counted in the
test). The issue's target: at most 10 ms for 100 examples.

Before the first round every project runs once (bytecode caches, page cache); every
round then runs every project once, in a new shuffled order.

    python benchmarks/bench_layers.py                 # 5 rounds (about 2 minutes)
    python benchmarks/bench_layers.py --quick         # a smoke run: 1 round
    python benchmarks/bench_layers.py --rounds 9 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

PYTEST = (sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly")
NO_HYPOTHESIS = ("-p", "no:hypothesispytest")  # part 1: its start-up is not measured
TEMPLATE_ROWS = 400
EXTRA_USERS = 20
POSTS_PER_USER = 5
EXAMPLES = 100
TARGET_MS = 10.0  # issue 13: the resets of 100 examples

MODELS_PY = """\
from sqlalchemy import ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "user"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    email: Mapped[str] = mapped_column(String(200))
    bio: Mapped[str] = mapped_column(Text)


class Post(Base):
    __tablename__ = "post"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id"), index=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
"""

# The extra data of part 1, the same rows in every way.
DATA_PY = f"""\
from models import Post, User

EXTRA_USERS = {EXTRA_USERS}
POSTS_PER_USER = {POSTS_PER_USER}


def make_users():
    return [
        User(name=f"extra {{i}}", email=f"extra{{i}}@example.com", bio="a bio " * 20)
        for i in range(EXTRA_USERS)
    ]


def make_posts(users):
    return [
        Post(user_id=user.id, title=f"post {{j}} of {{user.name}}", body="lorem ipsum " * 16)
        for user in users
        for j in range(POSTS_PER_USER)
    ]
"""

FIXTURE_PER_TEST = """\
import pytest

from data import make_posts, make_users


@pytest.fixture
async def extra(memdb_session):
    users = make_users()
    memdb_session.add_all(users)
    await memdb_session.flush()
    memdb_session.add_all(make_posts(users))
    await memdb_session.commit()
    return [user.id for user in users]
"""

FIXTURE_LAYER_SYNC = """\
import pytest

from data import make_posts, make_users


@pytest.fixture(scope="module")
def extra(memdb_module):
    with memdb_module.sync_session() as session:
        users = make_users()
        session.add_all(users)
        session.flush()
        session.add_all(make_posts(users))
        session.commit()
        return [user.id for user in users]
"""

FIXTURE_LAYER_ASYNC = """\
import pytest_asyncio

from data import make_posts, make_users


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def extra(memdb_module):
    async with memdb_module.session() as session:
        users = make_users()
        session.add_all(users)
        await session.flush()
        session.add_all(make_posts(users))
        await session.commit()
        return [user.id for user in users]
"""

FIXTURE_FLOOR = """\
import pytest

N_ROWS = {rows}


@pytest.fixture
def extra():
    # no extra data: template users, who have no posts yet
    return [1 + (i * 7919) % N_ROWS for i in range({users})]
"""

TESTS_LAYERS = """\
import pytest
from sqlalchemy import select

from models import Post, User

EXPECTED = {expected}


@pytest.mark.parametrize("i", range({tests}))
async def test_posts(memdb_session, extra, i):
    user_id = extra[i % len(extra)]
    user = await memdb_session.get(User, user_id)
    posts = (await memdb_session.scalars(select(Post).where(Post.user_id == user_id))).all()
    assert user is not None
    assert len(posts) == EXPECTED
    memdb_session.add(Post(user_id=user_id, title=f"new {{i}}", body="a new post"))
    await memdb_session.commit()
"""

# Part 2. Examples counted per test (bench_counts), dumped by the conftest.
COUNTS_PY = """\
import collections

COUNTS = collections.Counter()
"""

TESTS_HYPOTHESIS_HEAD = f"""\
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from bench_counts import COUNTS
from models import User


def bench_settings(examples):
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
        derandomize=True,
    )


async def write(session, n):
    session.add(User(name=f"h{{n}}", email=f"h{{n}}@example.com", bio="x"))
    await session.commit()


@bench_settings(20)
@given(n=st.integers(0, 10**9))
async def test_0_warm_reset(memdb, memdb_session, n):
    await memdb.areset()
    COUNTS["test_0_warm_reset"] += 1
    count = await memdb_session.scalar(select(func.count()).select_from(User))
    assert count == {TEMPLATE_ROWS}, count
    await write(memdb_session, n)


@bench_settings(20)
@given(n=st.integers(0, 10**9))
async def test_0_warm_plain(memdb, memdb_session, n):
    COUNTS["test_0_warm_plain"] += 1
    await write(memdb_session, n)
"""

TEST_HYPOTHESIS_ONE = """

@bench_settings({examples})
@given(n=st.integers(0, 10**9))
async def {name}(memdb, memdb_session, n):
{reset}    COUNTS["{name}"] += 1
    await write(memdb_session, n)
"""

CONFTEST = """\
import json
import os
import sys
import time

import pytest

_protocol = {}
_call = {}
_extra = []


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_fixture_setup(fixturedef, request):
    start = time.perf_counter_ns()
    yield
    if fixturedef.argname == "extra":
        _extra.append(time.perf_counter_ns() - start)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    start = time.perf_counter_ns()
    yield
    _protocol[item.nodeid] = time.perf_counter_ns() - start


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_call(item):
    start = time.perf_counter_ns()
    yield
    _call[item.nodeid] = time.perf_counter_ns() - start


def pytest_sessionfinish(session, exitstatus):
    plugin = sys.modules.get("pytest_memdb.plugin")
    counts = sys.modules.get("bench_counts")
    with open(os.environ["BENCH_OUT"], "w") as out:
        json.dump(
            {
                "plugin": plugin.__file__ if plugin is not None else "-",
                "protocol_ns": _protocol,
                "call_ns": _call,
                "extra_setup_ns": _extra,
                "examples": dict(counts.COUNTS) if counts is not None else {},
            },
            out,
        )
"""

LAYER_WAYS = {
    "floor": "template only (floor)",
    "per-test": "per-test fixture",
    "layer-sync": "module layer (sync fixture)",
    "layer-async": "module layer (async fixture)",
}
LAYER_MODES = ("copy", "rollback")
HYPOTHESIS_MODES = ("copy", "rollback", "session")


@dataclass(frozen=True)
class Job:
    part: str  # "layers" or "hypothesis"
    way: str  # a LAYER_WAYS key, or "" for hypothesis
    mode: str
    expect: int  # tests that must pass

    @property
    def name(self) -> str:
        return f"{self.part}-{self.way}-{self.mode}" if self.way else f"{self.part}-{self.mode}"


def log(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


def make_template(path: Path) -> None:
    """About 0.1 MB: TEMPLATE_ROWS users and an empty ``post`` table, VACUUMed."""
    path.unlink(missing_ok=True)
    db = sqlite3.connect(path)
    db.execute(
        'CREATE TABLE "user" (id INTEGER NOT NULL PRIMARY KEY, name VARCHAR(100) NOT NULL, '
        "email VARCHAR(200) NOT NULL, bio TEXT NOT NULL)"
    )
    db.execute(
        "CREATE TABLE post (id INTEGER NOT NULL PRIMARY KEY, user_id INTEGER NOT NULL "
        'REFERENCES "user" (id), title VARCHAR(200) NOT NULL, body TEXT NOT NULL)'
    )
    db.execute("CREATE INDEX ix_post_user_id ON post (user_id)")
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


def hypothesis_tests(pairs: int) -> tuple[str, list[tuple[str, str]]]:
    """The test module of part 2 and its timed (reset, plain) test names, pair by pair;
    the pairs in ABBA order (pytest runs a module's tests in the order of the file)."""
    text = TESTS_HYPOTHESIS_HEAD
    names = []
    for p in range(1, pairs + 1):
        reset, plain = f"test_{p}_reset", f"test_{p}_plain"
        for name in [reset, plain] if p % 2 else [plain, reset]:
            body = "    await memdb.areset()\n" if name == reset else ""
            text += TEST_HYPOTHESIS_ONE.format(examples=EXAMPLES, name=name, reset=body)
        names.append((reset, plain))
    return text, names


def write_project(root: Path, job: Job, tests: int, pairs: int) -> list[tuple[str, str]]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "models.py").write_text(MODELS_PY)
    (root / "conftest.py").write_text(CONFTEST)
    ini = [
        "[pytest]",
        "asyncio_mode = auto",
        "asyncio_default_fixture_loop_scope = function",
        "asyncio_default_test_loop_scope = function",
        "memdb_file = ../template.sqlite",
        f"memdb_isolation = {job.mode}",
    ]
    (root / "pytest.ini").write_text("\n".join(ini) + "\n")
    names: list[tuple[str, str]] = []
    if job.part == "layers":
        (root / "data.py").write_text(DATA_PY)
        fixture = {
            "floor": FIXTURE_FLOOR.format(rows=TEMPLATE_ROWS, users=EXTRA_USERS),
            "per-test": FIXTURE_PER_TEST,
            "layer-sync": FIXTURE_LAYER_SYNC,
            "layer-async": FIXTURE_LAYER_ASYNC,
        }[job.way]
        expected = 0 if job.way == "floor" else POSTS_PER_USER
        test = TESTS_LAYERS.format(expected=expected, tests=tests)
        # the fixture in the test module itself: where a module layer's fixture lives
        (root / "test_module.py").write_text(fixture + "\n\n" + test)
    else:
        (root / "bench_counts.py").write_text(COUNTS_PY)
        text, names = hypothesis_tests(pairs)
        (root / "test_hypothesis.py").write_text(text)
    return names


def run_once(job: Job, root: Path) -> tuple[float, dict]:
    """One pytest subprocess: its wall time (s) and what its conftest recorded. Stops the
    benchmark if a test failed or the run did not load the installed plugin."""
    out = root / "bench-out.json"
    out.unlink(missing_ok=True)
    env = {**os.environ, "BENCH_OUT": str(out)}
    env.pop("PYTHONPATH", None)
    cmd = [*PYTEST]
    if job.part == "layers":
        cmd += NO_HYPOTHESIS
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0 or f"{job.expect} passed" not in proc.stdout:
        raise SystemExit(
            f"{job.name} failed (exit {proc.returncode}) in {root}:\n"
            f"{proc.stdout[-4000:]}{proc.stderr[-2000:]}"
        )
    recorded = json.loads(out.read_text())
    expected = installed_tree() / "pytest_memdb" / "plugin.py"
    if Path(recorded["plugin"]).resolve() != expected.resolve():
        raise SystemExit(f"{job.name}: loaded {recorded['plugin']}, expected {expected}")
    return elapsed, recorded


def installed_tree() -> Path:
    import pytest_memdb

    return Path(pytest_memdb.__file__).resolve().parent.parent


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt(value: float, digits: int = 2, signed: bool = False) -> str:
    if value != value:  # NaN
        return "n/a"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def layers_table(samples: dict[str, dict[str, list[float]]]) -> list[str]:
    """Part 1, one row per (mode, way)."""
    lines = [
        "| isolation | way | median ms/test | vs per-test fixture | mean ms/test (but the "
        "1st) | 1st test ms | `extra` set-up ms, all tests | wall s | wall vs per-test s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode in LAYER_MODES:
        base = samples[f"layers-per-test-{mode}"]
        for way, label in LAYER_WAYS.items():
            got = samples[f"layers-{way}-{mode}"]
            diff_median = med([a - b for a, b in zip(got["median"], base["median"], strict=True)])
            diff_wall = med([a - b for a, b in zip(got["wall"], base["wall"], strict=True)])
            same = way == "per-test"
            lines.append(
                f"| {mode} | {label} | {fmt(med(got['median']))} | "
                f"{'' if same else fmt(diff_median, signed=True)} | {fmt(med(got['mean']))} | "
                f"{fmt(med(got['first']))} | {fmt(med(got['extra']))} | {fmt(med(got['wall']))} | "
                f"{'' if same else fmt(diff_wall, signed=True)} |"
            )
    return lines


def hypothesis_table(samples: dict[str, dict[str, list[float]]]) -> list[str]:
    """Part 2, one row per mode."""
    lines = [
        f"| isolation | call ms, with reset | call ms, without | extra ms per {EXAMPLES} "
        "examples | spread over rounds | us per reset | examples | target (<= "
        f"{TARGET_MS:g} ms) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for mode in HYPOTHESIS_MODES:
        got = samples[f"hypothesis-{mode}"]
        extra = med(got["extra"])
        per = med(got["per_reset_us"])
        examples = sorted({int(e) for e in got["examples"]})
        verdict = "met" if extra <= TARGET_MS else "**missed**"
        lines.append(
            f"| {mode} | {fmt(med(got['reset']))} | {fmt(med(got['plain']))} | "
            f"{fmt(extra, signed=True)} | {fmt(min(got['extra']))} to {fmt(max(got['extra']))} | "
            f"{fmt(per, 1)} | {', '.join(map(str, examples))} | {verdict} |"
        )
    return lines


def record_layers(samples: dict, job: Job, wall: float, recorded: dict) -> None:
    durations = [ns / 1e6 for ns in recorded["protocol_ns"].values()]
    got = samples.setdefault(
        job.name, {"median": [], "mean": [], "first": [], "extra": [], "wall": []}
    )
    got["median"].append(statistics.median(durations))
    got["mean"].append(statistics.fmean(durations[1:]))
    got["extra"].append(sum(recorded["extra_setup_ns"]) / 1e6)
    got["first"].append(durations[0])
    got["wall"].append(wall)


def record_hypothesis(samples: dict, job: Job, names: list, recorded: dict) -> None:
    calls = {nodeid.rsplit("::", 1)[1]: ns / 1e6 for nodeid, ns in recorded["call_ns"].items()}
    examples = recorded["examples"]
    extras, per_reset, resets, plains, counts = [], [], [], [], []
    for reset, plain in names:
        extras.append(calls[reset] - calls[plain])
        per_reset.append((calls[reset] - calls[plain]) / examples[reset] * 1e3)
        resets.append(calls[reset])
        plains.append(calls[plain])
        counts += [examples[reset], examples[plain]]
    got = samples.setdefault(
        job.name, {"extra": [], "per_reset_us": [], "reset": [], "plain": [], "examples": []}
    )
    got["extra"].append(statistics.median(extras))
    got["per_reset_us"].append(statistics.median(per_reset))
    got["reset"].append(statistics.median(resets))
    got["plain"].append(statistics.median(plains))
    got["examples"] += counts


def header(args: argparse.Namespace, template_kb: float, load: str) -> str:
    return (
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"os.cpu_count() = {os.cpu_count()}, {platform.system()} {platform.release()}; "
        f"pytest-memdb {version('pytest-memdb')} ({installed_tree()}), SQLAlchemy "
        f"{version('SQLAlchemy')}, aiosqlite {version('aiosqlite')}, pytest "
        f"{version('pytest')}, pytest-asyncio {version('pytest-asyncio')}, hypothesis "
        f"{version('hypothesis')}; {args.rounds} interleaved round(s), medians; template "
        f"{template_kb:.0f} KB ({TEMPLATE_ROWS} users); load average at start {load}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (5)")
    parser.add_argument("--tests", type=int, default=50, help="tests in part 1's module (50)")
    parser.add_argument(
        "--pairs", type=int, default=4, help="timed pairs per part 2 run, ABBA order (4)"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 round")
    parser.add_argument("--json", default=None, help="also write the samples to this file")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 5)
    if args.tests < 2 or args.pairs < 1:
        parser.error("--tests must be at least 2 and --pairs at least 1")

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="memdb-layers-"))
    workdir.mkdir(parents=True, exist_ok=True)
    template = workdir / "template.sqlite"
    make_template(template)
    template_kb = template.stat().st_size / 1024
    jobs = [Job("layers", way, mode, args.tests) for mode in LAYER_MODES for way in LAYER_WAYS]
    jobs += [Job("hypothesis", "", mode, 2 + 2 * args.pairs) for mode in HYPOTHESIS_MODES]
    names = {}
    for job in jobs:
        names[job.name] = write_project(workdir / job.name, job, args.tests, args.pairs)
    log(f"workdir {workdir}, template {template_kb:.0f} KB, {len(jobs)} projects")

    started = time.perf_counter()
    for job in jobs:  # warm-up: bytecode caches, the page cache; checks every run passes
        run_once(job, workdir / job.name)
    log(f"warm-up done in {time.perf_counter() - started:.0f} s; every run passed")

    samples: dict[str, dict[str, list[float]]] = {}
    raw = []
    for rnd in range(args.rounds):
        order = jobs[:]
        random.Random(rnd).shuffle(order)
        started = time.perf_counter()
        for job in order:
            wall, recorded = run_once(job, workdir / job.name)
            if job.part == "layers":
                record_layers(samples, job, wall, recorded)
            else:
                record_hypothesis(samples, job, names[job.name], recorded)
            raw.append({"round": rnd, "job": job.name, "wall_s": wall, **recorded})
        log(f"round {rnd + 1}/{args.rounds}: {time.perf_counter() - started:.0f} s")

    lines = [
        header(args, template_kb, load),
        "",
        f"Part 1: a module of {args.tests} async tests that each need {EXTRA_USERS} users and "
        f"{EXTRA_USERS * POSTS_PER_USER} posts (one read by key, one by indexed foreign key, "
        "one insert + commit per test). Per-test times are each test's whole protocol "
        "(set-up, call, teardown), in ms; differences are to the per-test fixture of the "
        "same mode and round, median over rounds",
        "",
        *layers_table(samples),
        "",
        f"Part 2: an async Hypothesis test of {EXAMPLES} examples (one insert + commit each) "
        "with `await memdb.areset()` per example vs the same test without it; call phase "
        f"in ms, the extra = with - without, median over {args.pairs} ABBA pairs per run, "
        "then over rounds",
        "",
        *hypothesis_table(samples),
    ]
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"header": lines[0], "summary": samples, "raw": raw}, indent=1)
        )
        log(f"samples: {args.json}")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
