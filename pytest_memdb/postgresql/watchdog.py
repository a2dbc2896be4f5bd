"""Stop a throwaway PostgreSQL server and remove its folder when its owner process dies.

:mod:`pytest_memdb.postgresql.server` starts this file as a script (``python -I -S
watchdog.py FOLDER``, standard library only, so it starts in about 15 ms without
site-packages), in its own session, before ``initdb``. Its stdin is the read end of a pipe
whose only write end the owner holds (``os.pipe()`` descriptors are not inherited by the
children the owner starts). The kernel closes that end when the owner exits, however it
exits: a clean ``stop()``, an exception, Ctrl-C, or ``SIGKILL``. The watchdog then reads
EOF at once, with no polling interval and no pid-reuse race, and cleans up. A clean
``stop()`` writes ``done`` first: the owner has already stopped the server and removed the
folder, and the watchdog just exits.

Its own session keeps it out of the terminal's foreground process group, so the SIGINT a
Ctrl-C sends to pytest's group does not reach it (it ignores SIGINT anyway).

The stopping primitives live here so the server module and the watchdog share them: a
postmaster is stopped by the signals ``pg_ctl stop`` itself sends (SIGINT is its "fast"
mode, SIGQUIT its "immediate" mode), each wait bounded, and then SIGKILL to the
postmaster's whole process group (it leads its own session, so its backends are in it).
Signals need neither ``pg_ctl`` nor switching to the server's user when we run as root.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import time
from pathlib import Path

DONE = b"done"
"""What a clean ``stop()`` writes before closing the pipe: nothing left to do."""

DATA = "data"
"""The cluster's data directory inside a server folder."""


def alive(pid: int) -> bool:
    """Whether a process with this pid exists (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): kill(0) said it exists
    return stat.rpartition(")")[2].split()[0] != "Z"


def is_postgres(pid: int) -> bool:
    """Whether ``pid`` is a PostgreSQL server process (not a recycled pid of something else)."""
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except FileNotFoundError:
        if Path("/proc/self").exists():
            return False
        import subprocess  # macOS and the BSDs: no /proc

        result = subprocess.run(
            ["ps", "-o", "comm=", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        argv0 = result.stdout.strip()
    except OSError:
        return False
    name = os.path.basename(argv0.split()[0]) if argv0.split() else ""
    return name in {"postgres", "postmaster"} or argv0.startswith("postgres:")


def postmaster_pid(folder: Path) -> int | None:
    """The pid in the cluster's ``postmaster.pid``, if it names a live PostgreSQL process."""
    try:
        first = (folder / DATA / "postmaster.pid").read_text().split("\n", 1)[0]
        pid = int(first.strip())
    except (OSError, ValueError):
        return None
    return pid if pid > 0 and alive(pid) and is_postgres(pid) else None


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait (at most ``timeout`` seconds) for a process that is not our child to exit."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def children(pid: int) -> list[int]:
    """The pids of ``pid``'s child processes (PostgreSQL's backends each lead a session of
    their own, so the postmaster's process group does not hold them)."""
    proc = Path("/proc")
    if not (proc / "self").exists():
        import subprocess  # macOS and the BSDs: no /proc

        result = subprocess.run(
            ["pgrep", "-P", str(pid)], capture_output=True, text=True, timeout=10, check=False
        )
        return [int(line) for line in result.stdout.split()]
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def stop_postmaster(pid: int, *, fast: float = 5.0, immediate: float = 5.0) -> None:
    """Stop the postmaster ``pid``: fast shutdown, then immediate, then SIGKILL.

    Every wait is bounded by the given seconds. The SIGKILL goes to the backends first,
    then to the postmaster's process group (anything it started without a new session).
    """
    for sig, timeout in ((signal.SIGINT, fast), (signal.SIGQUIT, immediate)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if wait_gone(pid, timeout):
            return
    kill_tree(pid)
    wait_gone(pid, 5.0)


def kill_tree(pid: int) -> None:
    """SIGKILL the postmaster ``pid``'s children, then its process group and itself."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGSTOP)  # it starts no new backend meanwhile
    for child in children(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(child, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def clean_up(folder: Path, *, fast: float = 5.0) -> None:
    """Stop the server of ``folder`` if it runs, and remove the folder."""
    pid = postmaster_pid(folder)
    if pid is not None:
        stop_postmaster(pid, fast=fast)
    # A process still writing there (an initdb the owner started just before dying) can
    # add files while rmtree runs: try a few times.
    for _ in range(5):
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            return
        time.sleep(0.1)


def main(argv: list[str]) -> int:
    """Wait for EOF on stdin (the owner is gone), then clean up the folder in ``argv[1]``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    folder = Path(argv[1])
    received = b""
    while True:
        try:
            chunk = os.read(0, 64)
        except InterruptedError:  # pragma: no cover - PEP 475 retries these
            continue
        if not chunk:
            break
        received += chunk
    if received != DONE:
        clean_up(folder, fast=2.0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
