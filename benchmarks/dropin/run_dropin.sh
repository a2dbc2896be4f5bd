#!/usr/bin/env bash
# Drop pytest-memdb into PUBLIC projects' own test suites, unchanged test files.
#
# For each project: download its sdist from PyPI into a scratch folder (never into this
# repository), unpack it, run its suite as shipped ("original", on SQLite), then in a
# second copy append our override (*_conftest_memdb.py) to the project's tests/conftest.py
# so its database fixture hands out pytest-memdb's, and run the same suite with
# --memdb-metadata naming the project's own declarative base (the override's
# pytest_memdb_template hook adds its other bases' tables; no schema file is built) in
# each isolation mode the suite allows (copy and rollback; session too where the suite
# does not count on an empty database per test: sqlalchemy-crud-plus, whose own suite shares
# one database for the whole run, and fastapi-users-db-sqlalchemy, whose fixtures create and
# drop their tables around each test; not fastapi-sa-orm-filter, 23 of whose 37 tests then
# see the rows earlier tests left, on either backend), once per backend:
#
#   sqlite      the swapped runs as they are;
#   postgresql  the same swapped runs, same override and --memdb-* options, plus
#               --memdb-postgresql=start (the plugin starts a throwaway server itself).
#               First the project's original suite runs on PostgreSQL too, its own
#               fixtures pointed at an empty database of a throwaway server
#               (with_postgresql.py; a third copy of the tree, see "pointed" below): the
#               PostgreSQL rows are held to that run, not to the SQLite one, since some
#               tests fail on PostgreSQL for the database's reasons (sqlalchemy-crud-plus
#               asks for LIMIT -1 and OFFSET -1: PostgreSQL refuses a negative LIMIT or
#               OFFSET, SQLite reads it as "none"). The tests that fail there and pass on
#               SQLite are listed, and must be the ones written down below with their
#               reasons (else the run fails: a broken reference would excuse them).
#               Needs PostgreSQL's server programs (initdb, pg_ctl, postgres) and psycopg
#               (pytest-memdb's [postgresql] extra, installed into the projects' own venvs
#               here).
#
# Each suite runs RUNS times (PG_RUNS for the postgresql rows); the table shows the
# pass/fail counts and the median wall time (bash `time`; a PostgreSQL row's includes the
# server's start, about 1.5 s).
#
# Exits non-zero when a swapped run passes fewer tests than its reference (the original on
# SQLite for the sqlite rows, the original on PostgreSQL for the postgresql rows), when a
# test fails or errors in a swapped run but not in its reference, when an original passes
# none, or when a swapped run did not actually use pytest-memdb (no "memdb: metadata="
# report header; on PostgreSQL, no "memdb: on a throwaway PostgreSQL" header either).
#
# Projects (default: all), and how the original is pointed at PostgreSQL:
#   fastapi-users-db-sqlalchemy  fixtures build an engine + create_all/drop_all per test on
#                                a file database; pins sqlalchemy<2.1, so it runs in its own
#                                venv ($USERS_VENV, made here if missing, with this repo
#                                installed editable). Pointed: its own DATABASE_URL
#                                variable.
#   sqlalchemy-crud-plus         one session-wide in-memory engine, create_all once, `db`
#                                session fixture in conftest.py; runs with $MAIN_PYTHON.
#                                Pointed: the engine's URL in tests/conftest.py replaced by
#                                $DROPIN_PG_URL (one line, sed).
#   fastapi-sa-orm-filter        FastAPI + async SQLAlchemy: a session-wide aiosqlite engine
#                                on a temp file, drop_all + create_all around every test
#                                (autouse); runs in its own venv ($FILTER_VENV, made here if
#                                missing) with pytest-memdb installed from this repository
#                                as a wheel, not editable: an editable install puts this
#                                repository's own tests/ package on sys.path, and the
#                                project's tests/ (no __init__.py) would import it instead.
#                                Pointed: sa_orm_filter_conftest_postgresql.py appended to
#                                tests/conftest.py (its database_url fixture).
#
# pytest-randomly (a test extra of this repository) is turned off (-p no:randomly): every
# run, original and swapped, takes the suite's own order.
#
# Environment: BACKENDS ("sqlite postgresql", the default; either alone runs that backend's
# rows only, the SQLite original always runs), WORK (scratch folder, default a new
# /tmp/memdb-dropin.XXXXXX), RUNS (3), PG_RUNS ($RUNS), USERS_VENV (/tmp/dropin-venv),
# FILTER_VENV (/tmp/dropin-filter-venv), MAIN_PYTHON (/work/venv/bin/python if present,
# else python3).
#
# Usage: [BACKENDS="sqlite postgresql"] benchmarks/dropin/run_dropin.sh
#            [fastapi-users-db-sqlalchemy] [sqlalchemy-crud-plus] [fastapi-sa-orm-filter]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
runs=${RUNS:-3}
pg_runs=${PG_RUNS:-$runs}
backends=${BACKENDS:-sqlite postgresql}
work=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/memdb-dropin.XXXXXX")}
users_venv=${USERS_VENV:-/tmp/dropin-venv}
filter_venv=${FILTER_VENV:-/tmp/dropin-filter-venv}
if [ -z "${MAIN_PYTHON:-}" ]; then
  if [ -x /work/venv/bin/python ]; then MAIN_PYTHON=/work/venv/bin/python; else MAIN_PYTHON=python3; fi
fi
case "$work" in "$repo"|"$repo"/*) echo "WORK must be outside the repository" >&2; exit 2 ;; esac
mkdir -p "$work"

use_sqlite=0 use_pg=0
for backend in $backends; do
  case "$backend" in
    sqlite) use_sqlite=1 ;;
    postgresql) use_pg=1 ;;
    *) echo "BACKENDS: unknown backend '$backend' (sqlite, postgresql)" >&2; exit 2 ;;
  esac
done
[ $((use_sqlite + use_pg)) -gt 0 ] || { echo "BACKENDS is empty (sqlite, postgresql)" >&2; exit 2; }
# The projects' venvs get psycopg (pytest-memdb's [postgresql] extra) when PostgreSQL runs.
extra=""
[ "$use_pg" -eq 0 ] || extra="[postgresql]"

USERS_PKG=fastapi-users-db-sqlalchemy==7.0.0
CRUD_PKG=sqlalchemy-crud-plus==1.13.3
FILTER_PKG=fastapi-sa-orm-filter==0.2.5
PYTEST_PINS=(pytest==9.2.0 pytest-asyncio==1.5.0 aiosqlite==0.22.1)

projects=("$@")
[ ${#projects[@]} -gt 0 ] || projects=(fastapi-users-db-sqlalchemy sqlalchemy-crud-plus fastapi-sa-orm-filter)

status=0
table=()
wrap=()  # a command run_suite puts in front of "$py -m pytest" (with_postgresql.py)

log() { printf '== %s\n' "$*" >&2; }

# fetch PKG==VER PYTHON: download the sdist, unpack it as $orig, $swap and $origpg (the
# original pointed at PostgreSQL), set $tarball
fetch() {
  local spec=$1 py=$2 dl="$work/sdist" name dir
  name=${spec%%==*}
  mkdir -p "$dl"
  # --no-binary for this package only (its build backend may come as a wheel).
  "$py" -m pip download --quiet --no-deps --no-binary "$name" -d "$dl" "$spec" >&2
  tarball="$dl/$(echo "$name" | tr - _)-${spec##*==}.tar.gz"
  [ -f "$tarball" ] || { log "no sdist $tarball"; exit 2; }
  orig="$work/orig/$name" swap="$work/swap/$name" origpg="$work/origpg/$name"
  for dir in "$orig" "$swap" "$origpg"; do
    rm -rf "$dir"
    mkdir -p "$dir"
    tar xzf "$tarball" -C "$dir" --strip-components=1
  done
}

# failing_ids LOG: the ids of the tests a run failed or errored (its short test summary)
failing_ids() {
  awk '$1 == "FAILED" || $1 == "ERROR" {print $2}' "$1" | sort -u
}

# run_suite LABEL DIR PYTHON N [pytest args...]: N runs, appends a table row (project,
# $backend, $mode)
run_suite() {
  local label=$1 dir=$2 py=$3 n=$4
  shift 4
  local i times=() passed failed errors rlog tfile
  for ((i = 1; i <= n; i++)); do
    rlog="$work/logs/${label// /_}.$i.log"
    tfile="$work/logs/${label// /_}.$i.time"
    mkdir -p "$work/logs"
    # Each run starts from a clean unpacked tree (no caches, no leftover database file).
    find "$dir" -name __pycache__ -prune -exec rm -rf {} + 2>/dev/null || true
    (
      cd "$dir"
      TIMEFORMAT=%R
      { time ${wrap[@]+"${wrap[@]}"} "$py" -m pytest -p no:cacheprovider -p no:randomly "$@" >"$rlog" 2>&1 || true; } 2>"$tfile"
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
  table+=("$(printf '%-28s %-10s %-15s %6s %6s %6s %9s' "$project" "$backend" "$mode" "$passed" "$failed" "$errors" "$median")")
}

# original PROJECT DIR PYTHON: the suite as shipped on SQLite; sets $ref_passed, $ref_log
original() {
  local dir=$2 py=$3
  backend=sqlite mode=original
  run_suite "$project $backend $mode" "$dir" "$py" "$runs"
  ref_passed=$last_passed ref_log=$last_log
  [ "$ref_passed" -gt 0 ] || { log "$project: the original suite passed nothing"; status=1; }
}

# original_pg PROJECT DIR PYTHON EXPECTED [--export NAME]...: the original suite, pointed at
# an empty database of a throwaway server; sets $pg_ref_passed, $pg_ref_log. The tests that
# fail there but not on SQLite must be EXPECTED (space-separated ids, each failure's reason
# read from its log and written down where the project is run below): a reference that
# fails other tests (the pointing broke, the server misbehaved) would excuse them in the
# swapped runs too.
original_pg() {
  local dir=$2 py=$3 expected only
  expected=$(for only in $4; do echo "$only"; done | sort -u | tr '\n' ' ')
  shift 4
  backend=postgresql mode=original
  wrap=("$py" "$here/with_postgresql.py" "$@")
  run_suite "$project $backend $mode" "$dir" "$py" "$pg_runs"
  wrap=()
  pg_ref_passed=$last_passed pg_ref_log=$last_log
  [ "$pg_ref_passed" -gt 0 ] || { log "$project: the original suite passed nothing on PostgreSQL"; status=1; }
  only=$(comm -13 <(failing_ids "$ref_log") <(failing_ids "$pg_ref_log") | tr '\n' ' ')
  [ -z "$only" ] || log "$project: fail on PostgreSQL in the project's own suite, not on SQLite: $only"
  if [ "$only" != "$expected" ]; then
    log "$project: on PostgreSQL the original was expected to fail only: ${expected:-(none)}"
    status=1
  fi
}

# compare LABEL REF_PASSED REF_LOG: the exit rules for the swapped run just made ($last_*)
compare() {
  local label=$1 ref=$2 reflog=$3 new
  if ! grep -q "^memdb: metadata=$metadata" "$last_log"; then
    log "$label: pytest-memdb was not active (no 'memdb: metadata=' report header)"
    status=1
  fi
  if [ "$backend" = postgresql ] && ! grep -q "^memdb: on a throwaway PostgreSQL" "$last_log"; then
    log "$label: not on PostgreSQL (no 'memdb: on a throwaway PostgreSQL' report header)"
    status=1
  fi
  if [ "$last_passed" -lt "$ref" ]; then
    log "$label: $last_passed passed < $ref in the original"
    status=1
  fi
  new=$(comm -13 <(failing_ids "$reflog") <(failing_ids "$last_log") | tr '\n' ' ')
  if [ -n "$new" ]; then
    log "$label: fail here, not in the original: $new"
    status=1
  fi
}

# swap_and_compare PROJECT DIR PYTHON METADATA ISOLATIONS...: the swapped runs on each
# backend, the template built from METADATA (module:Base)
swap_and_compare() {
  local dir=$2 py=$3 iso
  metadata=$4
  shift 4
  if [ "$use_sqlite" -eq 1 ]; then
    backend=sqlite
    for iso in "$@"; do
      mode="memdb-$iso"
      run_suite "$project $backend $mode" "$dir" "$py" "$runs" \
        --memdb-metadata "$metadata" --memdb-isolation "$iso"
      compare "$project $backend $mode" "$ref_passed" "$ref_log"
    done
  fi
  if [ "$use_pg" -eq 1 ]; then
    backend=postgresql
    for iso in "$@"; do
      mode="memdb-$iso"
      run_suite "$project $backend $mode" "$dir" "$py" "$pg_runs" \
        --memdb-metadata "$metadata" --memdb-isolation "$iso" --memdb-postgresql=start
      compare "$project $backend $mode" "$pg_ref_passed" "$pg_ref_log"
    done
  fi
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
      log "installing $USERS_PKG, pytest-memdb$extra (editable) and test tools into $users_venv"
      "$upy" -m pip install --quiet -e "$repo$extra" "$tarball" "${PYTEST_PINS[@]}" >&2

      original "$project" "$orig" "$upy"
      [ "$use_pg" -eq 0 ] || original_pg "$project" "$origpg" "$upy" "" --export DATABASE_URL

      { echo; cat "$here/fastapi_users_conftest_memdb.py"; } >>"$swap/tests/conftest.py"
      swap_and_compare "$project" "$swap" "$upy" tests.test_users:Base copy rollback session
      # The original writes ./test-sqlalchemy-user.db; the swapped suite must not touch disk.
      if [ -e "$swap/test-sqlalchemy-user.db" ]; then
        log "$project: the swapped suite still created test-sqlalchemy-user.db"
        status=1
      fi
      ;;
    sqlalchemy-crud-plus)
      mpy=$MAIN_PYTHON
      needs="sqlalchemy, pydantic, aiosqlite, pytest_asyncio, pytest_memdb"
      [ "$use_pg" -eq 0 ] || needs="$needs, psycopg"
      if ! "$mpy" -c "import $needs" 2>/dev/null; then
        log "$mpy lacks one of: $needs"
        log "install them first: $mpy -m pip install -e '$repo$extra' pydantic"
        exit 2
      fi
      fetch "$CRUD_PKG" "$mpy"

      original "$project" "$orig" "$mpy"
      if [ "$use_pg" -eq 1 ]; then
        sed -i "s|create_async_engine('sqlite+aiosqlite:///:memory:'|create_async_engine(__import__('os').environ['DROPIN_PG_URL']|" \
          "$origpg/tests/conftest.py"
        grep -q DROPIN_PG_URL "$origpg/tests/conftest.py" \
          || { log "$project: could not point tests/conftest.py's engine at PostgreSQL"; exit 2; }
        # LIMIT -1 / OFFSET -1: SQLite reads a negative one as "none", PostgreSQL refuses it
        # (InvalidRowCountInLimitClause, InvalidRowCountInResultOffsetClause).
        original_pg "$project" "$origpg" "$mpy" \
          "tests/test_pagination.py::TestPaginationNegativeValues::test_negative_limit
           tests/test_pagination.py::TestPaginationNegativeValues::test_negative_offset"
      fi

      { echo; cat "$here/crud_plus_conftest_memdb.py"; } >>"$swap/tests/conftest.py"
      swap_and_compare "$project" "$swap" "$mpy" tests.models.basic:Base copy rollback session
      ;;
    fastapi-sa-orm-filter)
      if [ ! -x "$filter_venv/bin/python" ]; then
        log "making $filter_venv"
        python3 -m venv "$filter_venv"
      fi
      fpy="$filter_venv/bin/python"
      fetch "$FILTER_PKG" "$fpy"
      log "installing $FILTER_PKG, pytest-memdb$extra (a wheel of $repo) and test tools into $filter_venv"
      # The first brings pytest-memdb's dependencies; the second this tree's code, always.
      "$fpy" -m pip install --quiet "$repo$extra" "$tarball" "${PYTEST_PINS[@]}" >&2
      "$fpy" -m pip install --quiet --no-deps --force-reinstall "$repo" >&2

      original "$project" "$orig" "$fpy"
      if [ "$use_pg" -eq 1 ]; then
        { echo; cat "$here/sa_orm_filter_conftest_postgresql.py"; } >>"$origpg/tests/conftest.py"
        # A selected column neither grouped nor aggregated: SQLite takes it, PostgreSQL
        # refuses it (GroupingError: column "vacancy.id" must appear in the GROUP BY clause).
        original_pg "$project" "$origpg" "$fpy" \
          "tests/test_filter.py::test_custom_complex_query tests/test_filter.py::test_custom_query"
      fi

      { echo; cat "$here/sa_orm_filter_conftest_memdb.py"; } >>"$swap/tests/conftest.py"
      swap_and_compare "$project" "$swap" "$fpy" conftest:Base copy rollback
      ;;
    *)
      echo "unknown project: $project" >&2
      exit 2
      ;;
  esac
done

echo
echo "pytest-memdb drop-in: $runs runs per sqlite row, $pg_runs per postgresql row, median wall seconds (logs: $work/logs)"
printf '%-28s %-10s %-15s %6s %6s %6s %9s\n' project backend mode passed failed errors median_s
for row in "${table[@]}"; do echo "$row"; done
if [ "$status" -ne 0 ]; then
  echo "FAILED: see the messages above"
else
  echo "OK: every swapped run passed as many tests as its original, and failed none it passed"
fi
exit "$status"
