"""Installed but unused: what pytest-memdb costs a run that never asks for a database.

A one-test ``python -m pytest`` run with the plugin loaded (as it is whenever it is
installed) and with ``-p no:memdb``, in alternating pairs. Single subprocess runs on a
shared machine vary by far more than the plugin costs, so its two parts are also timed
precisely: the import in a fresh interpreter, and alternating ``pytest.main()`` calls in
one interpreter (the hooks, every module already imported).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from memdb_bench.common import PYTEST_FLAGS, median, write_if_changed
from memdb_bench.suites import PYTEST_INI

UNUSED_TEST_PY = """\
def test_nothing():
    assert True
"""


INPROCESS_PY = """\
import contextlib, io, json, sys, time
import pytest

folder, reps, flags = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
samples = {"loaded": [], "unloaded": []}
for rep in range(reps + 1):  # the first pair warms up (imports every plugin once)
    for key in ("loaded", "unloaded") if rep % 2 else ("unloaded", "loaded"):
        extra = [] if key == "loaded" else ["-p", "no:memdb"]
        with contextlib.redirect_stdout(io.StringIO()):
            started = time.perf_counter()
            code = pytest.main([*flags, *extra, folder])
            elapsed = time.perf_counter() - started
        if code != 0:
            raise SystemExit(f"pytest.main exited {code}")
        if rep:
            samples[key].append(1000 * elapsed)
print(json.dumps(samples))
"""


class UnusedBench:
    """A one-test pytest run with pytest-memdb loaded (installed, unused) and without it."""

    def __init__(self, workdir: Path) -> None:
        self.folder = workdir / "unused"
        self.folder.mkdir(parents=True, exist_ok=True)
        write_if_changed(self.folder / "pytest.ini", PYTEST_INI)
        write_if_changed(self.folder / "test_one.py", UNUSED_TEST_PY)
        self.wall_ms: dict[bool, list[float]] = {True: [], False: []}
        self.cpu_ms: dict[bool, list[float]] = {True: [], False: []}
        self.import_ms: list[float] = []
        self.inprocess_ms: dict[bool, list[float]] = {True: [], False: []}

    def _run(self, loaded: bool) -> None:
        """One subprocess run; ``wait4`` gives the child's own CPU time beside the wall time."""
        extra = () if loaded else ("-p", "no:memdb")
        command = [sys.executable, "-m", "pytest", *PYTEST_FLAGS, *extra]
        started = time.perf_counter()
        proc = subprocess.Popen(
            command, cwd=self.folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _, status, usage = os.wait4(proc.pid, 0)
        self.wall_ms[loaded].append(1000 * (time.perf_counter() - started))
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"bench: {shlex.join(command)} failed (exit {proc.returncode})")
        self.cpu_ms[loaded].append(1000 * (usage.ru_utime + usage.ru_stime))

    def _import_ms(self) -> float:
        """``import pytest_memdb.plugin`` after pytest, in a fresh interpreter: its own cost."""
        code = (
            "import time, pytest; t = time.perf_counter(); import pytest_memdb.plugin; "
            "print(1000 * (time.perf_counter() - t))"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        return float(proc.stdout)

    def _inprocess(self, reps: int) -> None:
        """Repeated ``pytest.main()`` in one interpreter: the hooks' cost, without imports."""
        command = [sys.executable, "-c", INPROCESS_PY, str(self.folder), str(reps), *PYTEST_FLAGS]
        proc = subprocess.run(command, capture_output=True, text=True, cwd=self.folder)
        if proc.returncode != 0:
            raise SystemExit(f"bench: in-process pytest runs failed:\n{proc.stderr[-3000:]}")
        samples = json.loads(proc.stdout.strip().splitlines()[-1])
        self.inprocess_ms[True] += samples["loaded"]
        self.inprocess_ms[False] += samples["unloaded"]

    def round(self, pairs: int, inprocess_pairs: int, turn: int) -> None:
        """``pairs`` subprocess pairs (which goes first alternates), then the in-process ones."""
        for pair in range(pairs):
            first = bool((turn + pair) % 2)
            self._run(first)
            self._run(not first)
            self.import_ms.append(self._import_ms())
        self._inprocess(inprocess_pairs)

    @property
    def estimate_ms(self) -> float:
        """Import time plus the in-process difference: the plugin's cost, without the noise."""
        return median(self.import_ms) + median(self.differences(self.inprocess_ms))

    def differences(self, samples: dict[bool, list[float]]) -> list[float]:
        """Loaded minus unloaded, pair by pair: the two runs of a pair share a moment of load."""
        return [a - b for a, b in zip(samples[True], samples[False], strict=True)]
