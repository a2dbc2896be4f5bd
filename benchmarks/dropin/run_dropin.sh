#!/usr/bin/env bash
# Drop pytest-memdb into PUBLIC projects' own test suites, unchanged test files.
#
# For each project: download its sdist from PyPI into a scratch folder (never into this
# repository), unpack it twice, run its suite as shipped ("original"), then in the second
# copy append our override (*_conftest_memdb.py) to the project's tests/conftest.py so
# its database fixture hands out pytest-memdb's, and run the same suite with
# --memdb-metadata naming the project's own declarative base (the override's
# pytest_memdb_template hook adds its other bases' tables; no schema file is built) in
# copy and in rollback isolation. Each suite runs RUNS times
# (default 3); the table shows the pass/fail counts and the median wall time (bash `time`).
#
# Exits non-zero when a swapped run passes fewer tests than the original, when the
# original passes none, or when a swapped run did not actually use pytest-memdb.
#
# Projects (default: all):
#   fastapi-users-db-sqlalchemy  fixtures build an engine + create_all/drop_all per test on
#                                a file database; pins sqlalchemy<2.1, so it runs in its own
#                                venv ($USERS_VENV, made here if missing, with this repo
#                                installed editable).
#   sqlalchemy-crud-plus         one session-wide in-memory engine, create_all once, `db`
#                                session fixture in conftest.py; runs with $MAIN_PYTHON.
#   fastapi-sa-orm-filter        FastAPI + async SQLAlchemy: a session-wide aiosqlite engine
#                                on a temp file, drop_all + create_all around every test
#                                (autouse); runs in its own venv ($FILTER_VENV, made here if
#                                missing) with pytest-memdb installed from this repository
#                                as a wheel, not editable: an editable install puts this
#                                repository's own tests/ package on sys.path, and the
#                                project's tests/ (no __init__.py) would import it instead.
#
# pytest-randomly (a test extra of this repository) is turned off (-p no:randomly): every
# run, original and swapped, takes the suite's own order.
#
# Environment: WORK (scratch folder, default a new /tmp/memdb-dropin.XXXXXX), RUNS (3),
# USERS_VENV (/tmp/dropin-venv), FILTER_VENV (/tmp/dropin-filter-venv), MAIN_PYTHON
# (/work/venv/bin/python if present, else python3).
#
# Usage: benchmarks/dropin/run_dropin.sh [fastapi-users-db-sqlalchemy] [sqlalchemy-crud-plus]
#            [fastapi-sa-orm-filter]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
runs=${RUNS:-3}
work=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/memdb-dropin.XXXXXX")}
users_venv=${USERS_VENV:-/tmp/dropin-venv}
filter_venv=${FILTER_VENV:-/tmp/dropin-filter-venv}
if [ -z "${MAIN_PYTHON:-}" ]; then
  if [ -x /work/venv/bin/python ]; then MAIN_PYTHON=/work/venv/bin/python; else MAIN_PYTHON=python3; fi
fi
case "$work" in "$repo"|"$repo"/*) echo "WORK must be outside the repository" >&2; exit 2 ;; esac
mkdir -p "$work"

USERS_PKG=fastapi-users-db-sqlalchemy==7.0.0
CRUD_PKG=sqlalchemy-crud-plus==1.13.3
FILTER_PKG=fastapi-sa-orm-filter==0.2.5
PYTEST_PINS=(pytest==9.2.0 pytest-asyncio==1.5.0 aiosqlite==0.22.1)

projects=("$@")
[ ${#projects[@]} -gt 0 ] || projects=(fastapi-users-db-sqlalchemy sqlalchemy-crud-plus fastapi-sa-orm-filter)

status=0
table=()

log() { printf '== %s\n' "$*" >&2; }

# fetch PKG==VER PYTHON: download the sdist, unpack it as $orig and $swap, set $tarball
fetch() {
  local spec=$1 py=$2 dl="$work/sdist" name
  name=${spec%%==*}
  mkdir -p "$dl"
  # --no-binary for this package only (its build backend may come as a wheel).
  "$py" -m pip download --quiet --no-deps --no-binary "$name" -d "$dl" "$spec" >&2
  tarball="$dl/$(echo "$name" | tr - _)-${spec##*==}.tar.gz"
  [ -f "$tarball" ] || { log "no sdist $tarball"; exit 2; }
  orig="$work/orig/$name" swap="$work/swap/$name"
  rm -rf "$orig" "$swap"
  mkdir -p "$orig" "$swap"
  tar xzf "$tarball" -C "$orig" --strip-components=1
  tar xzf "$tarball" -C "$swap" --strip-components=1
}

# run_suite LABEL DIR PYTHON [pytest args...]: RUNS runs, appends a table row
run_suite() {
  local label=$1 dir=$2 py=$3
  shift 3
  local i times=() passed failed errors rlog tfile
  for ((i = 1; i <= runs; i++)); do
    rlog="$work/logs/${label// /_}.$i.log"
    tfile="$work/logs/${label// /_}.$i.time"
    mkdir -p "$work/logs"
    # Each run starts from a clean unpacked tree (no caches, no leftover database file).
    find "$dir" -name __pycache__ -prune -exec rm -rf {} + 2>/dev/null || true
    (
      cd "$dir"
      TIMEFORMAT=%R
      { time "$py" -m pytest -p no:cacheprovider -p no:randomly "$@" >"$rlog" 2>&1 || true; } 2>"$tfile"
    )
    times+=("$(tail -n 1 "$tfile")")
    passed=$(tail -n 1 "$rlog" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+' || echo 0)
    failed=$(tail -n 1 "$rlog" | grep -oE '[0-9]+ failed' | grep -oE '[0-9]+' || echo 0)
    errors=$(tail -n 1 "$rlog" | grep -oE '[0-9]+ errors?' | grep -oE '[0-9]+' || echo 0)
    log "$label run $i: $(tail -n 1 "$rlog" | tr -d '=' | sed 's/^ *//') (wall ${times[-1]} s)"
    if [ "$i" -gt 1 ] && [ "$passed" != "$first_passed" ]; then
      log "$label: pass count changed between runs ($first_passed -> $passed)"
      status=1
    fi
    [ "$i" -gt 1 ] || first_passed=$passed
  done
  local median
  median=$(printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  last_passed=$passed
  last_log=$rlog
  table+=("$(printf '%-28s %-15s %6s %6s %6s %9s' "$project" "$mode" "$passed" "$failed" "$errors" "$median")")
}

# swap_and_compare PROJECT DIR PYTHON ORIGINAL_PASSES METADATA: copy + rollback runs on the
# swapped tree, the template built from METADATA (module:Base)
swap_and_compare() {
  local dir=$2 py=$3 orig_passed=$4 metadata=$5 iso
  for iso in copy rollback; do
    mode="memdb-$iso"
    run_suite "$project $mode" "$dir" "$py" --memdb-metadata "$metadata" --memdb-isolation "$iso"
    if ! grep -q "^memdb: metadata=$metadata" "$last_log"; then
      log "$project $mode: pytest-memdb was not active (no 'memdb: metadata=' report header)"
      status=1
    fi
    if [ "$last_passed" -lt "$orig_passed" ]; then
      log "$project $mode: $last_passed passed < $orig_passed in the original"
      status=1
    fi
  done
}

for project in "${projects[@]}"; do
  case "$project" in
    fastapi-users-db-sqlalchemy)
      if [ ! -x "$users_venv/bin/python" ]; then
        log "making $users_venv (the project pins sqlalchemy<2.1)"
        python3 -m venv "$users_venv"
      fi
      upy="$users_venv/bin/python"
      fetch "$USERS_PKG" "$upy"
      log "installing $USERS_PKG, pytest-memdb (editable) and test tools into $users_venv"
      "$upy" -m pip install --quiet -e "$repo" "$tarball" "${PYTEST_PINS[@]}" >&2

      mode=original
      run_suite "$project $mode" "$orig" "$upy"
      orig_passed=$last_passed
      [ "$orig_passed" -gt 0 ] || { log "$project: the original suite passed nothing"; status=1; }

      { echo; cat "$here/fastapi_users_conftest_memdb.py"; } >>"$swap/tests/conftest.py"
      swap_and_compare "$project" "$swap" "$upy" "$orig_passed" tests.test_users:Base
      # The original writes ./test-sqlalchemy-user.db; the swapped suite must not touch disk.
      if [ -e "$swap/test-sqlalchemy-user.db" ]; then
        log "$project: the swapped suite still created test-sqlalchemy-user.db"
        status=1
      fi
      ;;
    sqlalchemy-crud-plus)
      mpy=$MAIN_PYTHON
      if ! "$mpy" -c 'import sqlalchemy, pydantic, aiosqlite, pytest_asyncio, pytest_memdb' 2>/dev/null; then
        log "$mpy lacks sqlalchemy/pydantic/aiosqlite/pytest-asyncio/pytest-memdb"
        log "install them first: $mpy -m pip install -e '$repo' pydantic"
        exit 2
      fi
      fetch "$CRUD_PKG" "$mpy"

      mode=original
      run_suite "$project $mode" "$orig" "$mpy"
      orig_passed=$last_passed
      [ "$orig_passed" -gt 0 ] || { log "$project: the original suite passed nothing"; status=1; }

      { echo; cat "$here/crud_plus_conftest_memdb.py"; } >>"$swap/tests/conftest.py"
      swap_and_compare "$project" "$swap" "$mpy" "$orig_passed" tests.models.basic:Base
      ;;
    fastapi-sa-orm-filter)
      if [ ! -x "$filter_venv/bin/python" ]; then
        log "making $filter_venv"
        python3 -m venv "$filter_venv"
      fi
      fpy="$filter_venv/bin/python"
      fetch "$FILTER_PKG" "$fpy"
      log "installing $FILTER_PKG, pytest-memdb (a wheel of $repo) and test tools into $filter_venv"
      # The first brings pytest-memdb's dependencies; the second this tree's code, always.
      "$fpy" -m pip install --quiet "$repo" "$tarball" "${PYTEST_PINS[@]}" >&2
      "$fpy" -m pip install --quiet --no-deps --force-reinstall "$repo" >&2

      mode=original
      run_suite "$project $mode" "$orig" "$fpy"
      orig_passed=$last_passed
      [ "$orig_passed" -gt 0 ] || { log "$project: the original suite passed nothing"; status=1; }

      { echo; cat "$here/sa_orm_filter_conftest_memdb.py"; } >>"$swap/tests/conftest.py"
      swap_and_compare "$project" "$swap" "$fpy" "$orig_passed" conftest:Base
      ;;
    *)
      echo "unknown project: $project" >&2
      exit 2
      ;;
  esac
done

echo
echo "pytest-memdb drop-in: $runs runs per row, median wall seconds (logs: $work/logs)"
printf '%-28s %-15s %6s %6s %6s %9s\n' project mode passed failed errors median_s
for row in "${table[@]}"; do echo "$row"; done
if [ "$status" -ne 0 ]; then
  echo "FAILED: see the messages above"
else
  echo "OK: every swapped run passed as many tests as the original"
fi
exit "$status"
